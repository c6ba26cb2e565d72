"""The documentation's Python examples run as written: the README's "Python API" blocks and the
examples in the docstrings of `ptum` and `ptum.api`, in that order, in one folder that holds
generated logs (`logs/events.csv`, `items.csv`, `users.csv`), as a reader would run them after
`ptum generate --output logs`. The public API's promises are checked on what they leave."""
import ast
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def markdown_python_blocks(path: str):
    with open(path, encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), re.M | re.S)


def docstring_examples(path: str):
    """The indented code blocks of a module's docstring that start with `import ptum`."""
    with open(path, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    blocks, current = [], None
    for line in doc.splitlines() + [""]:
        if line.startswith("    import ptum"):
            current = []
        if current is not None:
            if line.strip() and not line.startswith("    "):
                blocks.append("\n".join(current))
                current = None
            else:
                current.append(line[4:])
    if current:
        blocks.append("\n".join(current))
    return [b.strip() + "\n" for b in blocks]


def test_the_extractors_find_the_examples():
    assert len(markdown_python_blocks(os.path.join(ROOT, "README.md"))) >= 1
    for module in ("ptum/__init__.py", "ptum/api.py"):
        blocks = docstring_examples(os.path.join(ROOT, module))
        assert blocks and all(b.startswith("import ptum\n") for b in blocks), module
        for b in blocks:
            compile(b, module, "exec")


def test_documented_examples_run_as_written(tmp_path, monkeypatch):
    from ptum.data.generate import generate

    generate(str(tmp_path / "logs"), users=300, items=120, seed=0, mean_events=15)
    monkeypatch.chdir(tmp_path)
    import keras  # noqa: F401  (importing the backend draws from Python's generator: not the API's doing)
    import pandas  # noqa: F401
    py_state, np_state = random.getstate(), np.random.get_state()

    readme = {}
    for block in markdown_python_blocks(os.path.join(ROOT, "README.md")):
        exec(compile(block, "README.md", "exec"), readme)
    import ptum

    users = readme["labels_df"].user_id.nunique()
    data, model = readme["data"], readme["model"]
    assert isinstance(model, ptum.Model) and model.metadata["epochs_run"] == 3
    assert data.manifest["counts"]["users"] == users
    assert readme["metrics"]["users"] > 0 and 0.0 < readme["metrics"]["recall@10"] <= 1.0
    assert readme["vectors"].shape[0] == len(readme["users"]) == users and np.isfinite(readme["vectors"]).all()
    assert readme["tuned"]["labels"]["users_labelled"] == users and readme["tuned"]["valid"]["auc"] > 0.6
    assert os.path.exists(os.path.join(readme["version"], "saved_model.pb"))
    # Training seeded Python's and NumPy's generators; the caller's states are back.
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:2], np_state[1:2]))
    # The same numbers as the CLI's `ptum evaluate` on the same folders.
    r = subprocess.run([sys.executable, "-m", "ptum.cli", "-q", "evaluate", "--model", "model",
                        "--data", "data", "--split", "test"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["ndcg@10"] == pytest.approx(readme["metrics"]["ndcg@10"], abs=1e-9)

    api = {}
    for block in docstring_examples(os.path.join(ROOT, "ptum", "api.py")):
        exec(compile(block, "ptum/api.py", "exec"), api)
    assert api["metrics"] == readme["metrics"]
    np.testing.assert_array_equal(api["vectors"], readme["vectors"])
    assert api["config"].model.max_len == model.config.model.max_len

    package = {}
    for block in docstring_examples(os.path.join(ROOT, "ptum", "__init__.py")):
        exec(compile(block, "ptum/__init__.py", "exec"), package)
    assert package["model"].metadata["epochs_run"] == 1 and "ndcg@10" in package["metrics"]


def documented_commands(paths):
    """Every `ptum ...` command in the ```bash blocks of these files (continuation lines
    joined, comments dropped): [(file, command line)]."""
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            blocks = re.findall(r"^```bash\n(.*?)^```", f.read(), re.M | re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("ptum "):
                    out.append((os.path.relpath(path, ROOT), line))
    return out


def test_documented_commands_are_valid_invocations():
    """The README's and docs' `ptum` command lines parse with the real CLI (options that exist,
    required ones given, choices allowed), and the repository files they name exist: a renamed
    option or a moved config breaks this test, not a reader's first hour."""
    import argparse
    import shlex

    from ptum.cli import build_parser

    paths = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", n)
                                                  for n in sorted(os.listdir(os.path.join(ROOT, "docs")))]
    commands = documented_commands(paths)
    assert len(commands) >= 12
    parser = build_parser()

    def exact(p):      # the documented spelling must be the option's whole name, not a prefix of it
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    exact(sub)
    exact(parser)
    for where, line in commands:
        # `[--opt X]` marks an optional part: checked as if given; `...` means "and so on".
        words = [w for w in shlex.split(line.replace("[", " ").replace("]", " ")) if w != "..."]
        args = words[1:words.index("--")] if "--" in words else words[1:]
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: `{line}` does not parse with the CLI")
        for w in args:
            if w.startswith(("configs/", "schemas/", "tools/")):
                assert os.path.exists(os.path.join(ROOT, w)), f"{where}: `{line}` names {w}, which does not exist"
