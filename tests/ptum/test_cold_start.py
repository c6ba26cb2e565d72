"""`ptum cold-start`: new items are held out of every training row, coded from content, and the
report's lists obey the cap on new items (TIGER's epsilon)."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

from ptum.data import contracts
from ptum.data.batches import Rows
from ptum.training.cold_start import capped_metrics, pick_new_items


def _rows(seqs):
    lens = [len(s) for s in seqs]
    flat = np.array([x for s in seqs for x in s], np.int32)
    return Rows(np.array([f"u{i}" for i in range(len(seqs))], object), np.concatenate([[0], np.cumsum(lens)]),
                flat, np.ones(len(flat), np.int32), np.arange(len(flat), dtype=np.int64))


def test_rows_without_items_drop_every_behavior_on_them_and_empty_rows():
    rows = _rows([[3, 4, 5, 4], [4], [6, 7]])
    out = rows.without_items([4])
    assert out.user_ids.tolist() == ["u0", "u2"] and out.lengths.tolist() == [2, 2]
    assert out.items.tolist() == [3, 5, 6, 7] and out.timestamps.tolist() == [0, 2, 5, 6]
    taken = rows.take(np.array([2, 0]))
    assert taken.user_ids.tolist() == ["u2", "u0"] and taken.items.tolist() == [6, 7, 3, 4, 5, 4]


def test_the_cap_keeps_at_most_that_many_new_items_and_moves_the_rest_up():
    items = np.array([[10, 11, 12, 13, 14]])
    kept = np.ones_like(items, bool)
    new = np.isin(items, [10, 11, 12])
    # Uncapped, the target (13) is 4th; with one new item allowed, 11 and 12 leave: it is 2nd.
    free = capped_metrics(items, kept, np.array([13]), new, None, ks=(1, 2, 4))
    capped = capped_metrics(items, kept, np.array([13]), new, 1, ks=(1, 2, 4))
    assert free["recall@2"][0] == 0 and free["recall@4"][0] == 1
    assert capped["recall@1"][0] == 0 and capped["recall@2"][0] == 1
    assert np.isclose(capped["ndcg@2"][0], 1 / np.log2(3))
    # A new target past the cap is not shown at all.
    assert capped_metrics(items, kept, np.array([12]), new, 1, ks=(4,))["recall@4"][0] == 0
    assert capped_metrics(items, kept, np.array([12]), new, 3, ks=(4,))["recall@4"][0] == 1


def test_new_items_matching_a_generated_items_codes_follow_it():
    from ptum.training.cold_start import with_prefix_matches

    codes = np.full((9, 3), -1)
    codes[3:8] = [[1, 2, 0], [1, 2, 1], [1, 3, 0], [1, 3, 5], [2, 0, 0]]   # 4 and 6 are new
    items, scores = np.array([[3, 5, -1]]), np.array([[-1.0, -2.0, -1e9]])
    got, sc = with_prefix_matches(items, scores, codes, np.array([4, 6]), 2)
    assert got.tolist() == [[3, 4, 5, 6]] and sc[0, 1] < sc[0, 0] and sc[0, 1] > sc[0, 2]
    got, _ = with_prefix_matches(items, scores, codes, np.array([4, 6]), 1)   # coarser: both follow item 3
    assert got.tolist() == [[3, 4, 6, 5]]
    got, _ = with_prefix_matches(np.array([[7, -1]]), np.array([[0.0, -1e9]]), codes, np.array([4, 6]), 2)
    assert got.tolist() == [[7]]                                              # nothing shares item 7's codes


def test_new_items_are_a_seeded_share_of_the_test_targets():
    test = _rows([[3, 4], [5, 6], [7, 8], [9, 6], [3, 2]])
    a, b = pick_new_items(test, 0.5, 1), pick_new_items(test, 0.5, 1)
    assert np.array_equal(a, b) and len(a) == 2 and set(a) <= {4, 6, 8, 2}
    assert len(pick_new_items(test, 0.01, 1)) == 1


def _ptum(*args):
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
    return subprocess.run([sys.executable, "-m", "ptum.cli", *args], capture_output=True, text=True, env=env)


SMALL = ["--set", "model.embedding_dim=16", "--set", "model.num_blocks=1", "--set", "model.num_heads=1",
         "--set", "model.max_len=12", "--set", "model.ff_dim=32", "--set", "generative.decoder_blocks=1",
         "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.length_buckets=[12]"]
SMALL_ID = ["--id-config", "demo", "--id-set", "model.embedding_dim=16", "--id-set", "model.num_blocks=1",
            "--id-set", "model.num_heads=1", "--id-set", "model.max_len=12", "--id-set", "train.epochs=2",
            "--id-set", "train.length_buckets=[12]"]


def test_cold_start_holds_new_items_out_of_training_and_reports_every_ranker(clean_dataset, tmp_path):
    data, _ = clean_dataset
    out = str(tmp_path / "cold")
    r = _ptum("cold-start", "--data", data, "--output", out, "--share", "0.2", "--levels", "2", "--codes", "8",
              "--dim", "16", "--seed", "4", *SMALL, *SMALL_ID)
    assert r.returncode == 0, r.stderr
    report = json.load(open(os.path.join(out, "report.json")))
    ds = contracts.open_dataset(data)
    test = Rows.from_split(ds, "test")
    new = pick_new_items(test, 0.2, 4)
    cold = np.isin(test.items[test.offsets[1:] - 1], new)
    assert report["new_items"] == len(new) and report["users"] == {"cold": int(cold.sum()),
                                                                    "warm": int((~cold).sum())}
    assert report["new_items_cap"] == 1 and cold.sum() > 0
    for group in ("cold", "warm"):
        assert set(report[group]) == {"generative", "generative_capped", "generative_prefix_capped",
                                      "generative_prefix_coarse_capped", "content_knn", "content_knn_capped",
                                      "id_model"}
        assert all(0.0 <= v <= 1.0 for m in report[group].values() for v in m.values())
    # The new items were coded from content and the generative model can decode them ...
    codes = pq.read_table(os.path.join(out, "semantic_ids", "codes.parquet"))
    src = dict(zip(codes.column("token_id").to_pylist(), codes.column("source").to_pylist()))
    assert {src[int(t)] for t in new} == {"content_new_item"}
    meta = json.load(open(os.path.join(out, "generative", "metadata.json")))
    assert meta["item_codes"]["items_coded"] == ds.num_item_tokens - contracts.FIRST_ITEM_ID
    # ... but neither model trained on a behavior of theirs: one that saw them would have
    # counted them in its training data.
    full = Rows.from_split(ds, "train")
    for name in ("generative", "id_model"):
        rows = json.load(open(os.path.join(out, name, "metadata.json")))["training_data"]["rows"]
        assert rows["train_behaviors"] == len(full.without_items(new).items) < len(full.items)
    md = open(os.path.join(out, "report.md")).read()
    assert "## cold users" in md and "content KNN" in md
    # Its models would resume in the folder: another choice of new items is refused there.
    r = _ptum("cold-start", "--data", data, "--output", out, "--share", "0.2", "--seed", "5", *SMALL, *SMALL_ID)
    assert r.returncode == 2 and "other held-out items" in r.stderr and "Traceback" not in r.stderr
    assert "seed" in r.stderr
