"""`make setup` on a machine without the stack's Python stops with one line saying what to
install and what the alternative is (issue 12: stock Debian 12 has no python3.10)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(os.path.exists("/usr/bin/python3.10") or shutil.which("make") is None,
                    reason="this system has python3.10 in /usr/bin (or no make)")
def test_setup_without_python310_says_what_to_do(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(["make", "-s", "-C", ROOT, "setup", "STACK=legacy", f"VENV={tmp_path / 'venv'}"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0
    first = [ln for ln in r.stderr.splitlines() if ln.startswith("make setup:")]
    assert len(first) == 1, r.stderr
    assert "Python 3.10" in first[0] and "STACK=modern" in first[0]
    assert not (tmp_path / "venv").exists()


DEBIAN13 = os.path.join(ROOT, "tools", "debian13")


def test_the_debian13_tool_ships_with_the_repository_and_says_how_to_use_it():
    assert os.access(DEBIAN13, os.X_OK)
    r = subprocess.run([DEBIAN13], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage: tools/debian13 build | run" in r.stderr
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "tools/debian13 run --" in ci and "../shared" not in ci    # CI needs nothing beside the clone


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(
    os.path.join(os.environ.get("PTUM_DEBIAN13_ROOT", "/var/lib/ptum/debian13"), ".ptum-ready")),
    reason="needs root and a built Debian 13 root (tools/debian13 build)")
def test_the_debian13_root_runs_commands_here_with_a_new_enough_c_library(tmp_path):
    (tmp_path / "marker.txt").write_text("seen from inside")
    code = "import os, platform; print(platform.libc_ver()[1], open('marker.txt').read(), os.getcwd())"
    r = subprocess.run([DEBIAN13, "run", "--", "python3", "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    libc, text, cwd = r.stdout.split(" ", 1)[0], r.stdout.split(" ", 1)[1].rsplit(" ", 1)[0], r.stdout.split()[-1]
    assert tuple(int(p) for p in libc.split(".")) >= (2, 39)
    assert text == "seen from inside" and cwd == str(tmp_path.resolve())
