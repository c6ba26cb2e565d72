"""The core import stays light, and the sample generator is deterministic."""
import filecmp
import os
import subprocess
import sys


def test_import_ptum_does_not_import_heavy_stacks():
    # The public API (ptum.pretrain, ...) is loaded on first use, and loading it imports no
    # Keras or backend either.
    code = ("import sys, ptum, ptum.data.contracts, ptum.data.generate, ptum.cli; "
            "assert 'ptum.api' not in sys.modules; f = ptum.pretrain; "
            "heavy = [m for m in ('tensorflow', 'keras', 'apache_beam', 'tfx', 'jax') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_help_is_fast_and_lists_commands():
    r = subprocess.run([sys.executable, "-m", "ptum.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("generate", "tokenize", "demo"):
        assert cmd in r.stdout


def test_generate_is_deterministic(tmp_path):
    from ptum.data.generate import generate

    a = generate(str(tmp_path / "a"), users=50, items=40, seed=5, malformed_rate=0.05)
    b = generate(str(tmp_path / "b"), users=50, items=40, seed=5, malformed_rate=0.05)
    generate(str(tmp_path / "c"), users=50, items=40, seed=6)
    assert a == b
    for f in ("events.csv", "items.csv", "users.csv", "impressions.csv"):
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False)
    assert not filecmp.cmp(tmp_path / "a" / "events.csv", tmp_path / "c" / "events.csv", shallow=False)
    header = open(tmp_path / "a" / "users.csv").readline().strip()
    assert header == "user_id,gender,age_group,churn"
    assert os.path.getsize(tmp_path / "a" / "impressions.csv") > 0


def test_every_cli_option_says_what_it_does_and_its_default():
    import argparse

    from ptum.cli import build_parser

    missing, parsers = [], {}

    def walk(parser, name):
        parsers[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, sub_parser in action.choices.items():
                    walk(sub_parser, f"{name} {sub}")
            elif action.option_strings and action.dest != "help" and not action.help:
                missing.append(f"{name} {action.option_strings[-1]}")

    walk(build_parser(), "ptum")
    assert missing == []
    tokenize = parsers["ptum tokenize"].format_help()
    for default in ("--user-column USER_COLUMN", "(default: user_id)", "(default: item_id)", "(default: timestamp)",
                    "(default: utf-8)"):
        assert default in " ".join(tokenize.split()), default
    assert "(default: None)" not in parsers["ptum pretrain"].format_help()
    for command in ("tokenize", "pretrain", "export-embeddings"):      # the common cases, as examples
        assert f"examples:\n  ptum {command} --" in parsers[f"ptum {command}"].format_help()
