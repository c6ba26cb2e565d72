"""The Beam jobs on more than one process give the output of the in-process runner: Beam's
DaskRunner against a dask.distributed cluster (a scheduler and two worker processes started
here), and the FnApiRunner's multi_processing mode. Same vocabulary hash, same rows (order-free),
same manifest counts, same dead letters; embeddings equal to 1e-6."""
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptum.data import contracts
from ptum.data.ingest import plan, job

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_cluster():
    """tcp://HOST:PORT of a scheduler with two single-threaded worker processes (separate OS
    processes, as on a real cluster), stopped after the module's tests."""
    pytest.importorskip("distributed")
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tempfile.mkdtemp(prefix="dask-")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"],
                              stdout=open(os.path.join(logs, "scheduler.log"), "w"), stderr=subprocess.STDOUT)]
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                 "--no-dashboard", "--name", f"w{i}", "--memory-limit", "4GiB"],
                stdout=open(os.path.join(logs, f"worker{i}.log"), "w"), stderr=subprocess.STDOUT))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            assert len(client.scheduler_info()["workers"]) == 2
        yield address
    finally:
        _close_clients()
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _close_clients():
    """The DaskRunner leaves its client open; close it before the cluster goes away (else it
    logs reconnection attempts until the interpreter exits)."""
    from distributed import default_client

    for _ in range(10):
        try:
            default_client().close()
        except ValueError:
            return


def _executed(address):
    """{worker: tasks it has executed} on the cluster."""
    from distributed import Client

    with Client(address, timeout=30, set_as_default=False) as client:
        return client.run(lambda dask_worker: dask_worker.state.executed_count)


def _runner_args(kind, address=None):
    if kind == "dask":
        return ["--runner", "DaskRunner", "--dask_client_address", address]
    return MULTI_PROCESSING if kind == "multi_processing" else []


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Generated logs with dead letters, split over two files (two units of work)."""
    from ptum.data.generate import generate

    root = tmp_path_factory.mktemp("dist_logs")
    generate(str(root), users=240, items=90, seed=11, malformed_rate=0.02, mean_events=14)
    with open(root / "events.csv", "rb") as f:
        header, *lines = f.read().split(b"\n")
    half = len(lines) // 2
    for name, part in (("a.csv", lines[:half]), ("b.csv", lines[half:])):
        with open(root / name, "wb") as f:
            f.write(b"\n".join([header] + part))
    return root


def _tokenize(logs, out, beam_args, **kw):
    opts = plan.TokenizeOptions(inputs=[str(logs / "a.csv"), str(logs / "b.csv")], format="csv", output=str(out),
                                items_catalog=str(logs / "items.csv"), num_shards=3, **kw)
    return job.run(opts, beam_args)


def _rows(root, split):
    return sorted(contracts.open_dataset(str(root)).read_split(split).to_pylist(), key=lambda r: r["user_id"])


def _dead_letters(root, manifest):
    t = pa.concat_tables([pq.read_table(os.path.join(root, f)) for f in manifest["deadletter_files"]])
    return sorted(zip(t.column("file").to_pylist(), t.column("row").to_pylist(), t.column("reason").to_pylist()))


@pytest.fixture(scope="module")
def in_process(logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("fnapi") / "ds"
    return out, _tokenize(logs, out, [])


def _assert_same_dataset(a_root, a, b_root, b):
    assert b["vocab_hash"] == a["vocab_hash"]
    assert b["counts"] == a["counts"]
    assert {k: v["rows"] for k, v in b["splits"].items()} == {k: v["rows"] for k, v in a["splits"].items()}
    for split in a["splits"]:
        assert _rows(b_root, split) == _rows(a_root, split), split
    assert _dead_letters(b_root, b) == _dead_letters(a_root, a)
    assert a["counts"]["events_dead_lettered"]["total"] > 0


@pytest.mark.timeout(600)
def test_tokenize_on_a_dask_cluster_equals_in_process(logs, in_process, dask_cluster, tmp_path):
    out = tmp_path / "ds"
    # Each file read as ~8 byte ranges spread over the workers (in-process: two whole files).
    split_bytes = os.path.getsize(logs / "a.csv") // 8
    m = _tokenize(logs, out, _runner_args("dask", dask_cluster), split_bytes=split_bytes)
    assert m["runner"] == "DaskRunner" and m["parameters"]["split_bytes"] == split_bytes
    executed = _executed(dask_cluster)
    assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed   # both workers worked
    _assert_same_dataset(*in_process, out, m)


@pytest.mark.timeout(600)
def test_tokenize_multi_processing_equals_in_memory(logs, in_process, tmp_path):
    out = tmp_path / "ds"
    m = _tokenize(logs, out, MULTI_PROCESSING)
    assert m["runner"] == "FnApiRunner(multi_processing)"
    _assert_same_dataset(*in_process, out, m)


@pytest.fixture(scope="module")
def saved_model(in_process, tmp_path_factory):
    from ptum.config import PTUMConfig
    from ptum.serving.saved_model import export_saved_model
    from ptum.training.pretrain import pretrain

    data, _ = in_process
    root = tmp_path_factory.mktemp("dist_model")
    cfg = PTUMConfig.load(None, ["model.embedding_dim=16", "model.num_blocks=1", "model.num_heads=1",
                                 "model.max_len=12", "train.epochs=1", "objective.num_negatives=16"])
    pretrain(str(data), str(root / "model"), cfg, log=lambda s: None)
    return export_saved_model(str(root / "model"), str(root / "serving"), version=3)


def _embeddings(out):
    from ptum.serving.export_embeddings import read_embeddings

    t = read_embeddings(str(out))
    order = np.argsort(np.array(t.column("user_id").to_pylist(), dtype=object))
    users = np.array(t.column("user_id").to_pylist(), dtype=object)[order]
    return users, np.stack(t.column("embedding").to_pylist())[order]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["dask", "multi_processing"])
def test_embedding_export_distributed_equals_in_process(kind, in_process, saved_model, request, tmp_path):
    from ptum.serving.export_embeddings import run

    data, _ = in_process
    address = request.getfixturevalue("dask_cluster") if kind == "dask" else None
    base = run(saved_model, str(data), str(tmp_path / "base"), batch_rows=50)
    other = run(saved_model, str(data), str(tmp_path / kind), batch_rows=50, beam_args=_runner_args(kind, address))
    assert other["counts"] == base["counts"] and base["counts"]["users"] == 240
    u0, e0 = _embeddings(tmp_path / "base")
    u1, e1 = _embeddings(tmp_path / kind)
    assert list(u0) == list(u1) and len(set(u0)) == 240
    assert np.abs(e0 - e1).max() <= 1e-6
