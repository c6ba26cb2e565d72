"""Nothing lost: every accepted user is in the splits its manifest category says, whatever the
scheme, with users too short for the targets or windows; and readers check the manifest."""
import json
import os

import pytest

from ptum.data import contracts
from ptum.data.ingest import plan, reference, job

# user -> number of events (timestamps 100, 101, ...); u_late's events all come after the
# time cut (200), u_early's all before it.
LENGTHS = {"u1": 1, "u2": 2, "u3": 3, "u4": 4, "u5": 5, "u6": 6, "u7": 7, "u9": 9, "u13": 13}


def _logs(tmp_path):
    lines = ["user_id,item_id,timestamp"]
    for u, n in LENGTHS.items():
        lines += [f"{u},i{(k * 3 + len(u)) % 11},{100 + k}" for k in range(n)]
    lines += [f"u_late,i{k},{300 + k}" for k in range(4)]
    lines += [f"u_early,i{k},{150 + k}" for k in range(2)]
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _users(ds, split):
    return ds.read_split(split, ["user_id"]).column("user_id").to_pylist()


@pytest.mark.parametrize("scheme,kw", [("leave-one-out", {}), ("window", {"window": 3}),
                                       ("time", {"time_cut": "200"}), ("user-hash", {})])
@pytest.mark.parametrize("runner", ["reference", "beam"])
def test_every_user_is_in_the_splits_the_manifest_says(tmp_path, scheme, kw, runner):
    out = str(tmp_path / "ds")
    opts = plan.TokenizeOptions(inputs=[_logs(tmp_path)], format="csv", output=out, split=scheme, **kw)
    manifest = (reference.run if runner == "reference" else job.run)(opts)
    ds = contracts.open_dataset(out)
    c = manifest["counts"]
    everyone = set(LENGTHS) | {"u_late", "u_early"}
    assert c["users"] == len(everyone)
    seen = set()
    for split in ds.splits:
        users = _users(ds, split)
        assert len(users) == len(set(users)) == manifest["splits"][split]["rows"]
        left_out = contracts.USERS_LEFT_OUT[scheme].get(split, ())
        if scheme != "user-hash":
            assert len(users) == c["users"] - sum(c[k] for k in left_out), split
        seen |= set(users)
    assert seen == everyone                                   # nobody is lost
    assert contracts.check_invariants(manifest) == []
    lens = {**LENGTHS, "u_late": 4, "u_early": 2}
    if scheme == "window":
        train = dict(zip(_users(ds, "train"), ds.read_split("train", ["length"]).column("length").to_pylist()))
        # <= W behaviors: the whole history in train, never evaluated
        short = {u for u, n in lens.items() if n <= 3}
        assert c["users_train_only"] == len(short) and short <= set(train)
        assert all(train[u] == lens[u] for u in short) and not short & set(_users(ds, "test"))
        # W+1..2W: valid and test only
        middle = {u for u, n in lens.items() if 3 < n <= 6}
        assert c["users_eval_only"] == len(middle) and not middle & set(train)
        assert middle <= set(_users(ds, "valid")) and train["u13"] == 13 - 6
    if scheme == "time":
        assert c["users_test_only"] == 1 and "u_late" in _users(ds, "test") and "u_late" not in _users(ds, "train")
        assert c["users_train_only"] == len(LENGTHS) + 1     # every event before the cut
        test = ds.read_split("test").to_pylist()
        late = next(r for r in test if r["user_id"] == "u_late")
        assert late["length"] == 1 and late["timestamps"] == [300]
    if scheme == "leave-one-out":
        assert c["users_train_only"] == 3 and {"u1", "u2", "u_early"} <= set(_users(ds, "train"))


def _rewrite(path, edit):
    m = json.load(open(path))
    edit(m)
    with open(path, "w") as f:
        json.dump(m, f)


def test_readers_refuse_an_edited_or_damaged_dataset(tmp_path):
    out = str(tmp_path / "ds")
    reference.run(plan.TokenizeOptions(inputs=[_logs(tmp_path)], format="csv", output=out))
    mpath = os.path.join(out, contracts.MANIFEST)
    pristine = open(mpath).read()
    ds = contracts.open_dataset(out)
    assert ds.read_split("train").num_rows == 11

    # An edited count (digest no longer matches), even when the edit keeps the JSON valid.
    _rewrite(mpath, lambda m: m["counts"].update(users=3))
    with pytest.raises(contracts.DatasetError, match="digest does not match"):
        contracts.open_dataset(out)
    # Resealed by hand with inconsistent counts: the user invariant catches it.
    def reseal(m):
        m["splits"]["test"]["rows"] += 1
        m[contracts.MANIFEST_DIGEST] = contracts.manifest_digest(m)
    open(mpath, "w").write(pristine)
    _rewrite(mpath, reseal)
    with pytest.raises(contracts.DatasetError, match=r"rows\(test\)"):
        contracts.open_dataset(out)
    # A truncated manifest: one line, no traceback from json.
    open(mpath, "w").write(pristine[: len(pristine) // 2])
    with pytest.raises(contracts.DatasetError, match="unreadable manifest"):
        contracts.open_dataset(out)
    open(mpath, "w").write(pristine)

    # A deleted shard, a corrupt shard, a shard replaced by one with fewer rows.
    shard = ds.split_files("train")[0]
    data = open(shard, "rb").read()
    os.remove(shard)
    with pytest.raises(contracts.DatasetError, match="missing"):
        contracts.open_dataset(out).read_split("train")
    open(shard, "wb").write(data[: len(data) // 2])
    with pytest.raises(contracts.DatasetError, match="unreadable Parquet"):
        contracts.open_dataset(out).read_split("train")
    import pyarrow.parquet as pq
    pq.write_table(pq.read_table(pa_bytes(data)).slice(1), shard)
    with pytest.raises(contracts.DatasetError, match="rows, the manifest records"):
        contracts.open_dataset(out).read_split("train")
    open(shard, "wb").write(data)

    # A vocabulary replaced after tokenize (e.g. another tokenize's): refused where it is read.
    vocab = os.path.join(out, contracts.VOCAB_DIR, contracts.ITEMS_VOCAB)
    v = pq.read_table(vocab)
    pq.write_table(v.slice(1), vocab)
    with pytest.raises(contracts.DatasetError, match="does not match the digest"):
        contracts.open_dataset(out).read_items_vocab()


def pa_bytes(data):
    import pyarrow as pa
    return pa.BufferReader(data)
