"""Serving cost of generative retrieval as it is served now (history left out inside the beam
search), against the id model's top_k, on trained models.

    python benchmarks/generative_serving.py --generative gen/ --id-model idmodel/ --data beauty/ \
        [--name beauty] [--beams 5,10,20,40] [--work /tmp/gs]

1. The exported SavedModels' `top_k` signature (k=10) in this process, batch 1 and 256, p50/p99:
   the id model's full-catalog scoring against the generative model's constrained beam search
   (generative.beam_size beams, the user's history excluded inside the search).
2. Beam search alone (the Keras model, one compiled graph) against beam size, on 256 test rows:
   plain and with the history excluded inside the search, so the cost of the exclusion shows.
Writes benchmarks/results/generative_serving_<name>.{json,md}. Absolute times depend on what
else the machine runs; compare the rows of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402


def _requests(data, n):
    """Raw item-id histories of the first n test rows (the newest 20 behaviors), right-padded."""
    from ptum.data import contracts

    ds = contracts.open_dataset(data)
    rows = ds.read_split("test").slice(0, n).column("item_ids").to_pylist()
    vocab = ds.read_vocab_table(contracts.ITEMS_VOCAB)
    name = dict(zip(vocab.column("token_id").to_pylist(), vocab.column("item_id").to_pylist()))
    hist = [[name.get(t, "") for t in r[:-1][-20:]] for r in rows]
    width = max(len(h) for h in hist)
    return [h + [""] * (width - len(h)) for h in hist]


def _latency(signature, requests, batch, calls):
    import tensorflow as tf

    ids = tf.constant(requests[:batch])
    beh = tf.fill(tf.shape(ids), "")
    ts = tf.zeros(tf.shape(ids), tf.int64)
    signature(item_ids=ids, behaviors=beh, timestamps=ts, k=tf.constant(10))     # warm
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        signature(item_ids=ids, behaviors=beh, timestamps=ts, k=tf.constant(10))
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)), "calls": calls}


def _median_ms(fn, *args, repeats: int = 5) -> float:
    fn(*args)    # compile / warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def beam_scaling(generative: str, data: str, beams) -> dict:
    from ptum.data import contracts
    from ptum.data.batches import Rows, eval_batches
    from ptum.evaluation.generative import beam_function, history_exclusion
    from ptum.model.saving import load_model_dir

    model, meta, _ = load_model_dir(generative, generative=True)
    rows = Rows.from_split(contracts.open_dataset(data), "test")
    idx, batch = next(eval_batches(rows, 256, meta["max_len"], [meta["max_len"]], 0))
    exclude = history_exclusion(rows, idx)
    return {str(beam): {"plain_ms": _median_ms(beam_function(model, beam), batch["item_ids"]),
                        "history_excluded_ms": _median_ms(beam_function(model, beam, excluding=True),
                                                          batch["item_ids"], exclude),
                        "users": int(len(idx))} for beam in beams}


def serving(generative: str, id_model: str, data: str, work: str) -> dict:
    import tensorflow as tf

    from ptum.serving.saved_model import export_saved_model

    requests = _requests(data, 256)
    out = {}
    for name, model in (("id model top_k", id_model), ("generative top_k", generative)):
        saved = export_saved_model(model, os.path.join(work, "serving", os.path.basename(os.path.normpath(model))))
        sig = tf.saved_model.load(saved).signatures["top_k"]
        out[name] = {f"batch {b}": _latency(sig, requests, b, c) for b, c in ((1, 50), (256, 10))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generative", required=True, help="a generative model folder (ptum pretrain)")
    ap.add_argument("--id-model", required=True, help="an id model folder of the same dataset")
    ap.add_argument("--data", required=True, help="their tokenized dataset")
    ap.add_argument("--name", default="beauty")
    ap.add_argument("--beams", default="5,10,20,40")
    ap.add_argument("--work", default="benchmarks/work/generative_serving")
    ap.add_argument("--note", action="append", default=[], help="a line for the notes (e.g. what else ran)")
    args = ap.parse_args()
    meta = json.load(open(os.path.join(args.generative, "metadata.json")))
    result = common.envelope(" ".join(["python"] + sys.argv))
    result["serving"] = serving(args.generative, args.id_model, args.data, args.work)
    result["beam_size_scaling"] = beam_scaling(args.generative, args.data, [int(b) for b in args.beams.split(",")])
    rows = [{"what": f"{name}, {batch}", "p50 ms": f"{v['p50_ms']:.1f}", "p99 ms": f"{v['p99_ms']:.1f}"}
            for name, per in result["serving"].items() for batch, v in per.items()]
    rows += [{"what": f"beam search, beam {b}, 256 users", "plain ms (median)": f"{v['plain_ms']:.0f}",
              "history excluded ms (median)": f"{v['history_excluded_ms']:.0f}",
              "exclusion cost": f"{v['history_excluded_ms'] / v['plain_ms']:.2f}x"}
             for b, v in result["beam_size_scaling"].items()]
    result["notes"] = [f"served generative top_k decodes with generative.beam_size = {meta['beam_size']} beams and "
                       "leaves the request's history out inside the search; the id model's top_k scores every "
                       "item and masks the history", "times are in-process (tf.saved_model.load), k=10"] + args.note
    common.write_result(f"generative_serving_{args.name}", result,
                        ["what", "p50 ms", "p99 ms", "plain ms (median)", "history excluded ms (median)",
                         "exclusion cost"], rows)


if __name__ == "__main__":
    main()
