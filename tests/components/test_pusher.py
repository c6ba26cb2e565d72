"""The pusher takes the serving folder's lock: a second pusher waits, then gets its own
version; a re-push of the same model returns the version already there."""
import json
import os
import threading
import time

import pytest

pytest.importorskip("tfx")


def _fake_saved_model(path):
    from ptum.serving.saved_model import METADATA_ASSET

    os.makedirs(os.path.join(path, "assets.extra"))
    with open(os.path.join(path, "assets.extra", METADATA_ASSET), "w") as f:
        json.dump({}, f)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"\0" * 1000)
    return str(path)


def test_pushers_take_turns_and_never_share_a_version(tmp_path):
    from components.ptum_components import _push_version
    from ptum.data import contracts

    base = str(tmp_path / "serving")
    srcs = [_fake_saved_model(tmp_path / f"m{i}") for i in range(3)]
    results = {}

    def push(i):
        with contracts.output_lock(base, f"pusher {i}", RuntimeError, wait=True):
            results[i] = _push_version(f"uri-{i}", srcs[i], base)

    with contracts.output_lock(base, "holder", RuntimeError):
        threads = [threading.Thread(target=push, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert results == {} and not [v for v in os.listdir(base) if v.isdigit()]   # all waiting
    for t in threads:
        t.join(60)
    versions = sorted(v for v, already in results.values())
    assert len(set(versions)) == 3 and not any(a for _, a in results.values())
    assert sorted(v for v in os.listdir(base) if not v.startswith(".")) == [str(v) for v in versions]
    for i, (v, _) in results.items():
        with open(os.path.join(base, str(v), "assets.extra", "ptum_pushed_from.txt")) as f:
            assert f.read() == f"uri-{i}"
    assert _push_version("uri-1", srcs[1], base) == (results[1][0], True)
