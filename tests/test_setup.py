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
