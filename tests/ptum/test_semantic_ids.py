"""Semantic IDs: residual k-means codes (deterministic, collisions broken, codebooks used) and the
`ptum semantic-ids` artifact (content sources, dead letters, bad inputs refused in one line, a
refused run leaving the previous artifact, a tampered artifact refused)."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptum.model.semantic_ids import dedup_tokens, kmeans, quantizer_report, residual_kmeans
from ptum.training.semantic_ids import SemanticIdError, learn_semantic_ids, read_semantic_ids


def _clusters(n=300, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, d)) * 3
    return centers[rng.integers(12, size=n)] + 0.3 * rng.normal(size=(n, d))


def test_residual_kmeans_is_deterministic_and_each_level_explains_more():
    x = _clusters()
    a, b = residual_kmeans(x, levels=3, codes=16, seed=1), residual_kmeans(x, levels=3, codes=16, seed=1)
    assert np.array_equal(a.codes, b.codes) and all(np.array_equal(p, q) for p, q in zip(a.codebooks, b.codebooks))
    report = quantizer_report(x, a)
    errors = [lv["relative_reconstruction_error"] for lv in report["levels"]]
    assert errors[0] < 0.2 and errors[2] < errors[1] < errors[0]     # 12 clusters found, residuals refined
    assert all(lv["used"] == 16 for lv in report["levels"])
    full = np.concatenate([a.codes, a.dedup[:, None]], axis=1)
    assert len(np.unique(full, axis=0)) == len(x)                     # the last token breaks every collision


def test_kmeans_caps_codes_at_distinct_points_and_dedup_ranks_in_order():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    c, assign, _ = kmeans(x, 8, np.random.default_rng(0))
    assert len(c) == 2 and assign[0] == assign[1] != assign[2]
    codes = np.array([[1, 2], [0, 5], [1, 2], [1, 2], [0, 5], [3, 3]])
    assert dedup_tokens(codes).tolist() == [0, 0, 1, 2, 1, 0]


def test_artifact_codes_every_item_uniquely_and_reruns_to_the_same_bytes(clean_dataset, tmp_path):
    data, _ = clean_dataset
    out = str(tmp_path / "sid")
    manifest = learn_semantic_ids(data, out, codes=8, dim=16, seed=3, log=lambda line: None)
    table, read_back = read_semantic_ids(out)
    assert read_back == manifest and manifest["counts"]["items_dead_lettered"] == 0
    from ptum.data import contracts
    vocab = contracts.open_dataset(data).read_vocab_table(contracts.ITEMS_VOCAB)
    items = {i for i, t in zip(vocab.column("item_id").to_pylist(), vocab.column("token_id").to_pylist())
             if t >= contracts.FIRST_ITEM_ID}
    assert set(table.column("item_id").to_pylist()) == items
    tuples = [tuple(c) for c in table.column("codes").to_pylist()]
    assert len(set(tuples)) == len(tuples) and all(len(t) == 4 and max(t[:3]) < 8 for t in tuples)
    report = json.load(open(os.path.join(out, "report.json")))
    assert [lv["level"] for lv in report["levels"]] == [1, 2, 3] and os.path.getsize(os.path.join(out,
                                                                                              "codebook_usage.png"))
    first = open(os.path.join(out, "codes.parquet"), "rb").read()
    learn_semantic_ids(data, out, codes=8, dim=16, seed=3, log=lambda line: None)
    assert open(os.path.join(out, "codes.parquet"), "rb").read() == first
    # An edited artifact is refused by its reader.
    pq.write_table(table.slice(1), os.path.join(out, "codes.parquet"))
    with pytest.raises(SemanticIdError, match="changed after it was written"):
        read_semantic_ids(out)


@pytest.fixture(scope="module")
def bare_dataset(tmp_path_factory):
    """A dataset without a catalog (no content of its own)."""
    from ptum.data.generate import generate
    from ptum.data.ingest import plan, reference

    logs = str(tmp_path_factory.mktemp("bare_logs"))
    generate(logs, users=120, items=40, seed=2, mean_events=10)
    out = str(tmp_path_factory.mktemp("bare_ds"))
    reference.run(plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv", output=out))
    return out


def _items(data):
    from ptum.data import contracts
    vocab = contracts.open_dataset(data).read_vocab_table(contracts.ITEMS_VOCAB)
    return sorted(i for i, t in zip(vocab.column("item_id").to_pylist(), vocab.column("token_id").to_pylist())
                  if t >= contracts.FIRST_ITEM_ID)


def test_attributes_cover_some_items_the_rest_are_dead_letters_and_bad_inputs_fail_clearly(bare_dataset, tmp_path):
    items = _items(bare_dataset)
    with pytest.raises(SemanticIdError, match="no item has content"):
        learn_semantic_ids(bare_dataset, str(tmp_path / "none"), codes=4, log=lambda line: None)
    attrs = {item: [n % 5, 10 + n % 3] for n, item in enumerate(items[: len(items) // 2])}
    attrs.update({"not_an_item": [1], items[-1]: []})
    path = tmp_path / "attrs.json"
    path.write_text(json.dumps(attrs))
    out = str(tmp_path / "sid")
    manifest = learn_semantic_ids(bare_dataset, out, attributes=str(path), codes=4, dim=8, log=lambda line: None)
    coded = len(items) // 2
    assert manifest["counts"] == {"items": len(items), "items_coded": coded, "items_dead_lettered": len(items) - coded,
                                  "by_source": {"content": coded}}
    dead = pq.read_table(os.path.join(out, "deadletter.parquet"))
    assert set(dead.column("reason").to_pylist()) == {"no_content"} and dead.num_rows == len(items) - coded
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["counts"]["attribute_items_unknown"] == 1 and report["counts"]["attribute_items_empty"] == 1
    before = {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))}
    # Bad inputs: one clear error each, and the previous artifact stays as it was.
    bad = tmp_path / "bad.json"
    for text, message in (("{not json", "unreadable attribute file"), ('["a"]', "JSON object"),
                          (json.dumps({items[0]: "x"}), "must be a list")):
        bad.write_text(text)
        with pytest.raises(SemanticIdError, match=message):
            learn_semantic_ids(bare_dataset, out, attributes=str(bad), codes=4, log=lambda line: None)
    vec = tmp_path / "vectors.parquet"
    for rows, message in (([[0.1, float("nan")], [0.2, 0.3]], r"row 0, column 'vector'.*NaN"),
                          ([[0.1, 0.2], [0.3]], "row 1.*1 values where row 0 has 2")):
        pq.write_table(pa.table({"item_id": items[:2], "vector": rows}), vec)
        with pytest.raises(SemanticIdError, match=message):
            learn_semantic_ids(bare_dataset, out, vectors=str(vec), codes=4, log=lambda line: None)
    assert {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))} == before
    # Another kind of output is refused; the CLI says so in one line.
    r = subprocess.run([sys.executable, "-m", "ptum.cli", "semantic-ids", "--data", bare_dataset, "--output",
                        bare_dataset, "--attributes", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "holds a sequence dataset" in r.stderr


def test_precomputed_vectors_are_a_content_source(bare_dataset, tmp_path):
    items = _items(bare_dataset)
    rng = np.random.default_rng(0)
    vec = tmp_path / "vectors.parquet"
    pq.write_table(pa.table({"item_id": items, "emb": rng.normal(size=(len(items), 6)).tolist()}), vec)
    out = str(tmp_path / "sid")
    manifest = learn_semantic_ids(bare_dataset, out, vectors=str(vec), vector_column="emb", codes=4,
                                  log=lambda line: None)
    assert manifest["counts"]["items_coded"] == len(items) and manifest["tuple_length"] == 4


def test_a_pretrained_model_codes_items_without_content_and_splits_equal_content(bare_dataset, tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from ptum.config import PTUMConfig
    from ptum.training.pretrain import pretrain

    model = str(tmp_path / "model")
    pretrain(bare_dataset, model, PTUMConfig.load("demo", ["train.epochs=1", "model.embedding_dim=16"]),
             log=lambda line: None)
    items = _items(bare_dataset)
    half = len(items) // 2
    path = tmp_path / "attrs.json"
    path.write_text(json.dumps({item: [1, 2] for item in items[:half]}))   # one attribute set for all
    joined = learn_semantic_ids(bare_dataset, str(tmp_path / "joined"), attributes=str(path), model=model, codes=4,
                                log=lambda line: None)
    assert joined["counts"]["by_source"] == {"content+collaborative": half, "collaborative": len(items) - half}
    table, _ = read_semantic_ids(str(tmp_path / "joined"))
    first = [tuple(c[:3]) for c, i in zip(table.column("codes").to_pylist(), table.column("item_id").to_pylist())
             if i in set(items[:half])]
    assert len(set(first)) > 1     # identical content, told apart by behaviour
    filled = learn_semantic_ids(bare_dataset, str(tmp_path / "filled"), attributes=str(path), model=model, codes=4,
                                collaborative_weight=0.0, log=lambda line: None)
    assert filled["counts"]["by_source"] == {"content": half, "collaborative": len(items) - half}


def test_rqvae_learns_is_deterministic_and_writes_the_same_artifact(clean_dataset, tmp_path):
    from ptum.model.rqvae import train_rqvae

    x = _clusters(n=300, d=12)
    short, _, short_info = train_rqvae(x, levels=2, codes=8, latent_dim=6, epochs=1, seed=1)
    long, z, long_info = train_rqvae(x, levels=2, codes=8, latent_dim=6, epochs=30, seed=1)
    again, _, _ = train_rqvae(x, levels=2, codes=8, latent_dim=6, epochs=30, seed=1)
    assert np.array_equal(long.codes, again.codes)                                 # seeded
    assert long_info["decoder_relative_error"] < short_info["decoder_relative_error"]   # it learns
    report = quantizer_report(z, long)
    assert [lv["used"] for lv in report["levels"]] == [8, 8]                       # restarts keep codes in use
    data, _ = clean_dataset
    out = str(tmp_path / "sid")
    manifest = learn_semantic_ids(data, out, codes=8, dim=16, seed=3, quantizer="rqvae", rqvae_epochs=3,
                                  log=lambda line: None)
    table, _ = read_semantic_ids(out)
    tuples = [tuple(c) for c in table.column("codes").to_pylist()]
    assert len(set(tuples)) == len(tuples) and manifest["parameters"]["quantizer"] == "rqvae"
    assert json.load(open(os.path.join(out, "report.json")))["space"] == "RQ-VAE latent"
    first = open(os.path.join(out, "codes.parquet"), "rb").read()
    learn_semantic_ids(data, out, codes=8, dim=16, seed=3, quantizer="rqvae", rqvae_epochs=3, log=lambda line: None)
    assert open(os.path.join(out, "codes.parquet"), "rb").read() == first


def test_new_items_take_the_nearest_codes_of_codebooks_learned_without_them(clean_dataset, tmp_path):
    """Items with no events yet (held out of a cold-start run) play no part in the codebooks;
    each gets its nearest codes from its content and a collision token after the fitted items'."""
    from ptum.data.item_content import item_content
    from ptum.model.semantic_ids import assign_codes

    data, _ = clean_dataset
    from ptum.data import contracts
    ds = contracts.open_dataset(data)
    content = item_content(ds, dim=16, seed=3)
    new = content.token_ids[::10][:12]
    out = str(tmp_path / "sid")
    manifest = learn_semantic_ids(data, out, codes=8, dim=16, seed=3, new_items=new.tolist(), log=lambda line: None)
    assert manifest["parameters"]["new_items"] == 12 and manifest["counts"]["by_source"]["content_new_item"] == 12
    is_new = np.isin(content.token_ids, new)
    fitted = residual_kmeans(content.vectors[~is_new].astype(np.float64), levels=3, codes=8, seed=3)
    books = pq.read_table(os.path.join(out, "codebooks.parquet"))
    for level, book in enumerate(fitted.codebooks):
        got = np.array([v for lv, v in zip(books.column("level").to_pylist(), books.column("vector").to_pylist())
                        if lv == level + 1])
        assert np.allclose(got, book, atol=1e-6)      # learned on the other items only
    table, _ = read_semantic_ids(out)
    by_token = dict(zip(table.column("token_id").to_pylist(), table.column("codes").to_pylist()))
    src = dict(zip(table.column("token_id").to_pylist(), table.column("source").to_pylist()))
    expected = assign_codes(fitted.codebooks, content.vectors[is_new])
    for token, codes in zip(content.token_ids[is_new], expected):
        assert by_token[int(token)][:3] == codes.tolist() and src[int(token)] == "content_new_item"
    # The fitted items keep the tuples the codebooks gave them; every tuple is still unique.
    for token, codes, dedup in zip(content.token_ids[~is_new], fitted.codes, fitted.dedup):
        assert by_token[int(token)] == [*codes.tolist(), int(dedup)]
    assert len({tuple(c) for c in by_token.values()}) == len(by_token)
    # The RQ-VAE too: trained on the other items only (the same codebooks as a run on them alone),
    # the new items coded by its encoder and codebooks, every tuple still unique.
    from ptum.model.rqvae import train_rqvae
    learn_semantic_ids(data, str(tmp_path / "rq"), quantizer="rqvae", rqvae_epochs=3, codes=8, dim=16, seed=3,
                       new_items=new.tolist(), log=lambda s: None)
    alone, _, _ = train_rqvae(content.vectors[~is_new], levels=3, codes=8, epochs=3, seed=3)
    books = pq.read_table(os.path.join(tmp_path / "rq", "codebooks.parquet"))
    got = np.array(books.column("vector").to_pylist()).reshape(3, 8, -1)
    assert np.allclose(got, np.stack(alone.codebooks), atol=1e-5)
    table, _ = read_semantic_ids(str(tmp_path / "rq"))
    src = dict(zip(table.column("token_id").to_pylist(), table.column("source").to_pylist()))
    assert {src[int(t)] for t in new} == {"content_new_item"}
    assert len({tuple(c) for c in table.column("codes").to_pylist()}) == table.num_rows
