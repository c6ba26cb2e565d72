"""The code base is a layered library: every module imports only from its own layer or the
layers below it, and no group of modules imports itself in a circle. Function-level imports
count (they are how circles hid before). Nothing is exempt: the CLI is the top of the house,
so it may import every layer, and nothing imports it.

A layer is a package (or a module): every module under it belongs to it. The layers, bottom
to top (docs/ARCHITECTURE.md draws them):
  0 io          ptum.fs: one filesystem layer, atomic writes, folders replaced in one step
  1 data        ptum.data: the dataset contract, log formats, the tokenize job, span checks,
                model-input rows and batches
  2 config      ptum.config: typed model / objective / training configs and presets
  3 model       ptum.model: Keras layers, the encoder, the PTUM objectives, task heads,
                model folders
  4 evaluation  ptum.evaluation: next-item ranking, embedding reports
  5 training    ptum.training: pre-training and fine-tuning
  6 serving     ptum.serving: the SavedModel and the batch embedding export
  7 api         ptum, ptum.api: the public notebook API
  8 components  components: TFX components and module files
  9 pipelines   pipelines: the TFX pipeline definition and its runners
 10 cli         ptum.cli: `ptum`
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("ptum", "pipelines", "components", "schemas")

LAYERS = [
    ("io", ["ptum.fs"]),
    ("data", ["ptum.data"]),
    ("config", ["ptum.config"]),
    ("model", ["ptum.model"]),
    ("evaluation", ["ptum.evaluation"]),
    ("training", ["ptum.training"]),
    ("serving", ["ptum.serving"]),
    ("api", ["ptum", "ptum.api"]),
    ("components", ["components"]),
    ("pipelines", ["pipelines"]),
    ("cli", ["ptum.cli"]),
]
_PREFIX = {p: i for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes}


def layer_of(module: str):
    """The rank of the longest layer prefix `module` falls under (None: no layer)."""
    name = module
    while name:
        if name in _PREFIX and (name != "ptum" or module == "ptum"):
            return _PREFIX[name]
        name = name.rpartition(".")[0]
    return None


def _modules():
    out = {}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[mod[:-len(".__init__")] if mod.endswith(".__init__") else mod] = path
    return out


MODULES = _modules()


def _resolve(name: str, modules) -> str:
    """The longest known module a dotted name starts with (ptum.training.pretrain.pretrain -> ptum.training.pretrain)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str, modules=MODULES):
    """Every project module `module` imports, anywhere in the file: [(imported, line)]."""
    path = modules[module]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] in PACKAGES:
                target = _resolve(n, modules)
                if target and target != module:
                    found.append((target, node.lineno))
    return found


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None and m != "schemas")
    assert not missing, f"modules without a layer (add them to LAYERS and to docs/ARCHITECTURE.md): {missing}"


def upward_imports(modules=MODULES):
    out = []
    for mod in modules:
        rank = layer_of(mod)
        for target, line in imports_of(mod, modules):
            if rank is not None and layer_of(target) is not None and layer_of(target) > rank:
                out.append(f"{modules[mod]}:{line} ({LAYERS[rank][0]}) imports {target} "
                           f"({LAYERS[layer_of(target)][0]})")
    return out


def test_imports_only_go_down():
    upward = upward_imports()
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph(modules=MODULES):
    graph = {m: {t for t, _ in imports_of(m, modules)} for m in modules}
    # A module importing its own parent package (`import ptum.x` loads `ptum`) is not a circle.
    return {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}


def test_no_import_circles():
    assert find_cycles(import_graph()) == []


def test_the_checker_sees_function_level_and_relative_imports_and_circles(tmp_path):
    src = tmp_path / "fake.py"
    src.write_text("import os\n\ndef f():\n    from ptum.cli.commands import dispatch\n"
                   "    from . import pretrain\n    import ptum.model.encoder as m\n")
    modules = {**MODULES, "ptum.training.fake": str(src)}
    assert sorted(imports_of("ptum.training.fake", modules)) == [
        ("ptum.cli.commands", 4), ("ptum.model.encoder", 6), ("ptum.training.pretrain", 5)]
    # training -> cli runs upward; training -> model and training -> training do not.
    assert [u for u in upward_imports(modules) if u.startswith(str(src))] == [
        f"{src}:4 (training) imports ptum.cli.commands (cli)"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_a_new_circle_is_found(tmp_path):
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text("from ptum.data import two\n")
    two.write_text("def f():\n    from ptum.data.one import x\n")
    modules = {**MODULES, "ptum.data.one": str(one), "ptum.data.two": str(two)}
    assert ["ptum.data.one", "ptum.data.two"] in find_cycles(import_graph(modules))


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 80
LONG_ON_PURPOSE = "# Long on purpose:"


def oversized(modules=MODULES):
    """Modules over MAX_MODULE_LINES; functions over MAX_FUNCTION_LINES whose definition is not
    preceded by a comment starting with LONG_ON_PURPOSE (the reason, written beside it)."""
    out = []
    for mod, path in sorted(modules.items()):
        with open(path) as f:
            text = f.read()
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            out.append(f"{path}: {len(lines)} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                above, i = [], first - 2
                while i >= 0 and lines[i].lstrip().startswith("#"):     # the comment block above it
                    above.append(lines[i].lstrip())
                    i -= 1
                if size > MAX_FUNCTION_LINES and not any(c.startswith(LONG_ON_PURPOSE) for c in above):
                    out.append(f"{path}:{node.lineno} {node.name}: {size} lines (max {MAX_FUNCTION_LINES}, "
                               f"or a '{LONG_ON_PURPOSE} ...' comment above it)")
    return out


def test_modules_and_functions_stay_small(tmp_path):
    assert oversized() == []
    big = tmp_path / "big.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(90))
    big.write_text(f"def f():\n{body}\n\n{LONG_ON_PURPOSE} one table\ndef g():\n{body}")
    assert [line.split(": ")[0] for line in oversized({"fake": str(big)})] == [f"{big}:1 f"]


@pytest.mark.parametrize("module", ["ptum.training.pretrain", "components.ptum_components"])
def test_function_level_imports_are_collected(module):
    # Both modules import the library inside functions; the checker must see those lines.
    assert any(t.startswith("ptum.") for t, _ in imports_of(module))
