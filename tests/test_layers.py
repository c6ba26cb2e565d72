"""The code base is a layered library: every module imports only from its own layer or the
layers below it, and no group of modules imports itself in a circle. Function-level imports
count (they are how circles hid before). The CLI is the top of the house and may import
anything; nothing may import it.

The layers, bottom to top (README, "Architecture"):
  0 base       dataset contract, atomic writes and locks, configs, time buckets, features
  1 data       log formats, histories, vocabularies, splits (ptum.ingest), model-input rows
  2 models     Keras layers and models, saving and loading model folders
  3 evaluation next-item ranking, embedding probes
  4 training   pre-training, fine-tuning
  5 serving    SavedModel export
  6 api        the public notebook API (ptum.tokenize, ptum.pretrain, ...)
  7 beam       Beam jobs built from the library's PTransforms
  8 components TFX components and module files
  9 pipeline   the TFX pipeline definition and its runners
 10 cli        `ptum`
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("ptum", "pipelines", "components", "schemas")

LAYERS = [
    ("io", ["ptum.fs"]),
    ("base", ["ptum.contracts", "ptum.config", "ptum.transforms", "ptum.features"]),
    ("data", ["ptum.ingest", "ptum.ingest.formats", "ptum.ingest.core", "ptum.ingest.reference",
              "ptum.ingest.spans", "ptum.ingest.checks", "ptum.data",
              "ptum.generate"]),
    ("models", ["ptum.layers", "ptum.model", "ptum.finetune_model", "ptum.saving"]),
    ("evaluation", ["ptum.ranking", "ptum.embedding_eval"]),
    ("training", ["ptum.callbacks", "ptum.train", "ptum.tf_input", "ptum.finetuning"]),
    ("serving", ["ptum.export"]),
    ("api", ["ptum", "ptum.api"]),
    ("beam", ["pipelines", "pipelines.tokenize", "pipelines.tokenize.job", "pipelines.export_embeddings"]),
    ("components", ["components", "components.dataset_trainer", "components.ptum_components", "components.resolvers",
                    "components.trainer_module", "components.finetune_module"]),
    ("pipeline", ["pipelines.tfx_pipeline", "pipelines.runners", "pipelines.runners.airflow_dag",
                  "pipelines.runners.kubeflow_v2"]),
    ("cli", ["ptum.cli", "ptum.commands"]),
]
RANK = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
CLI = {"ptum.cli", "ptum.commands"}


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
    """The longest known module a dotted name starts with (ptum.train.pretrain -> ptum.train)."""
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
    missing = sorted(m for m in MODULES if m not in RANK and m != "schemas")
    assert not missing, f"modules without a layer (add them to LAYERS and to README, Architecture): {missing}"


def test_imports_only_go_down():
    upward = []
    for mod in MODULES:
        if mod in CLI or mod not in RANK:
            continue
        for target, line in imports_of(mod):
            if target in RANK and RANK[target] > RANK[mod]:
                upward.append(f"{MODULES[mod]}:{line} ({LAYERS[RANK[mod]][0]}) imports {target} "
                              f"({LAYERS[RANK[target]][0]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_nothing_imports_the_cli():
    offenders = [f"{MODULES[m]}:{line}" for m in MODULES if m not in CLI
                 for target, line in imports_of(m) if target in CLI]
    assert not offenders, f"the CLI is the top of the house; imported by {offenders}"


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


def test_no_import_circles():
    graph = {m: {t for t, _ in imports_of(m) if t not in CLI} for m in MODULES if m not in CLI}
    # A module importing its own parent package (`import ptum.x` loads `ptum`) is not a circle.
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    assert find_cycles(graph) == []


def test_the_checker_sees_function_level_and_relative_imports_and_circles(tmp_path):
    src = tmp_path / "fake.py"
    src.write_text("import os\n\ndef f():\n    from ptum.commands import evaluate_model\n"
                   "    from . import train\n    import ptum.model as m\n")
    modules = {**MODULES, "ptum.fake": str(src)}
    assert sorted(imports_of("ptum.fake", modules)) == [("ptum.commands", 4), ("ptum.model", 6),
                                                        ("ptum.train", 5)]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", ["ptum.train", "components.ptum_components"])
def test_function_level_imports_are_collected(module):
    # Both modules import the library inside functions; the checker must see those lines.
    assert any(t.startswith("ptum.") for t, _ in imports_of(module))
