"""Cold start in production: catalog items without events get Semantic IDs from their content,
and a generative model trained with generative.catalog_items returns them from the SavedModel
(at most epsilon of a top-k), accepts them in a history, and never returns them twice."""
import csv
import json
import os
import subprocess
import sys

import pytest

from ptum.data import contracts

from tests.ptum.test_generative import SMALL, _ptum

SERVE = """
import json, sys
import tensorflow as tf
sig = tf.saved_model.load(sys.argv[1]).signatures["top_k"]
out = {}
for name, (history, k) in json.loads(sys.argv[2]).items():
    r = sig(item_ids=tf.constant([history]), behaviors=tf.constant([["click"] * len(history)]),
            timestamps=tf.constant([[1700000000 + 60 * i for i in range(len(history))]], tf.int64), k=tf.constant(k))
    out[name] = [i for i, ok in zip(r["item_ids"].numpy()[0].astype(str).tolist(), r["ok"].numpy()[0]) if ok]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def catalog_dataset(tmp_path_factory):
    """Generated logs whose catalog also lists items nobody has touched yet: each a copy of a
    known item's title and categories under a new id."""
    from ptum.data.generate import generate
    from ptum.data.ingest import plan, reference

    logs = str(tmp_path_factory.mktemp("catalog_logs"))
    generate(logs, users=200, items=50, seed=4, mean_events=12)
    with open(os.path.join(logs, "items.csv"), newline="") as f:
        rows = list(csv.reader(f))
    new = [[f"new_{j:03d}", rows[1 + 7 * j][1], rows[1 + 7 * j][2]] for j in range(5)]
    with open(os.path.join(logs, "items.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows + new)
    out = str(tmp_path_factory.mktemp("catalog_ds"))
    reference.run(plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv", output=out,
                                       items_catalog=os.path.join(logs, "items.csv")))
    return out, [r[0] for r in new]


def test_catalog_items_without_events_get_codes_after_the_vocabulary(catalog_dataset, tmp_path):
    from ptum.training.semantic_ids import learn_semantic_ids, read_semantic_ids

    data, new = catalog_dataset
    ds = contracts.open_dataset(data)
    extra = contracts.catalog_only_items(ds.read_vocab_table(contracts.CATALOG))
    assert set(new) <= set(extra)
    manifest = learn_semantic_ids(data, str(tmp_path / "sid"), codes=8, dim=16, seed=3, log=lambda s: None)
    assert manifest["parameters"]["catalog_only_items"] == len(extra)
    assert manifest["counts"]["by_source"]["content_catalog_only"] == len(extra)
    table, _ = read_semantic_ids(str(tmp_path / "sid"))
    token = dict(zip(table.column("item_id").to_pylist(), table.column("token_id").to_pylist()))
    codes = dict(zip(table.column("item_id").to_pylist(), table.column("codes").to_pylist()))
    assert [token[i] for i in extra] == list(range(ds.num_item_tokens, ds.num_item_tokens + len(extra)))
    assert len({tuple(c) for c in codes.values()}) == len(codes)      # still one tuple per item
    # A new item with a known item's content lands on that item's codes (all but the collision token).
    catalog = ds.read_vocab_table(contracts.CATALOG)
    title = dict(zip(catalog.column("item_id").to_pylist(), catalog.column("title").to_pylist()))
    twins = [(n, k) for n in new for k, t in title.items() if k != n and k in token and token[k] < ds.num_item_tokens
             and t == title[n]]
    assert twins and all(codes[n][:3] == codes[k][:3] for n, k in twins)


def test_a_generative_model_serves_catalog_items_capped_by_epsilon(catalog_dataset, tmp_path):
    data, new = catalog_dataset
    ds = contracts.open_dataset(data)
    extra = contracts.catalog_only_items(ds.read_vocab_table(contracts.CATALOG))
    sid, gen = str(tmp_path / "sid"), str(tmp_path / "gen")
    r = _ptum("semantic-ids", "--data", data, "--output", sid, "--codes", "8", "--dim", "16")
    assert r.returncode == 0, r.stderr
    beam = 128        # wider than the catalog: the beam enumerates every coded item
    r = _ptum("pretrain", "--data", data, "--output", gen, "--epochs", "2", *SMALL, "--semantic-ids", sid,
              "--set", "generative.catalog_items=true", "--set", f"generative.beam_size={beam}")
    assert r.returncode == 0, r.stderr
    meta = json.load(open(os.path.join(gen, "metadata.json")))
    assert meta["item_codes"]["catalog_items"] == meta["item_codes"]["catalog_items_coded"] == len(extra)
    r = _ptum("evaluate", "--model", gen, "--data", data, "--split", "test")
    assert r.returncode == 0, r.stderr
    r = _ptum("export-model", "--model", gen, "--output", str(tmp_path / "serving"))
    assert r.returncode == 0, r.stderr
    version = os.path.join(tmp_path / "serving", os.listdir(tmp_path / "serving")[0])
    vocab = ds.read_vocab_table(contracts.ITEMS_VOCAB)
    known = [i for i, t in zip(vocab.column("item_id").to_pylist(), vocab.column("token_id").to_pylist())
             if t >= contracts.FIRST_ITEM_ID]
    asks = {"all": [known[:4], beam], "ten": [known[:4], 10], "with_new": [known[:3] + [new[0]], beam]}
    served = subprocess.run([sys.executable, "-c", SERVE, version, json.dumps(asks)], capture_output=True, text=True)
    assert served.returncode == 0, served.stderr
    got = json.loads(served.stdout.strip().splitlines()[-1])
    cap = max(1, int(0.1 * beam))
    assert sum(i in extra for i in got["all"]) == min(cap, len(extra))   # every coded item reachable, capped
    assert set(got["all"]) <= set(known + extra) and not set(got["all"]) & set(known[:4])
    assert sum(i in extra for i in got["ten"]) <= 1 and len(got["ten"]) == 10
    # A catalog item in the history is a known token (its codes), so it is not offered again.
    assert new[0] not in got["with_new"] and sum(i in extra for i in got["with_new"]) == min(cap, len(extra) - 1)


def test_catalog_items_need_semantic_codes():
    from ptum.config import ConfigError, PTUMConfig

    with pytest.raises(ConfigError, match="catalog_items needs"):
        PTUMConfig.load(None, ["model.architecture=generative", "generative.codes=random",
                               "generative.catalog_items=true"]).validate()
