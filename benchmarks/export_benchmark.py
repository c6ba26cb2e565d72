"""Batch export throughput and serving latency of the user-embedding SavedModel.

    python benchmarks/export_benchmark.py [--users 200000]

1. Generated logs for N users -> tokenized -> a small model (1 epoch) -> SavedModel.
2. Beam export (`ptum export-embeddings`, FnApiRunner in-process, start-up included) vs a
   plain in-process batched predict loop over the same users with the same signature
   (the local upper bound): time_ratio = export time / predict time.
3. Serving latency of `serving_default` (serialized tf.Examples) and `embed_sequences`
   in-process: p50/p99 for batch 1 and 256.
Writes benchmarks/results/export.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--work", default="benchmarks/work/export")
    ap.add_argument("--batch-rows", type=int, default=4096)
    args = ap.parse_args()
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import tensorflow as tf

    from ptum.config import PTUMConfig
    from ptum.data.contracts import open_dataset
    from ptum.data.features import row_to_example
    from ptum.data.generate import generate
    from ptum.data.ingest import plan, reference
    from ptum.serving import export_embeddings
    from ptum.serving.saved_model import export_saved_model
    from ptum.training.pretrain import pretrain

    logs, data, model = (os.path.join(args.work, x) for x in ("logs", "data", "model"))
    if not os.path.exists(os.path.join(logs, "events.csv")):
        generate(logs, users=args.users, items=5000, seed=5, mean_events=8)
    if not os.path.exists(os.path.join(data, "manifest.json")):
        reference.run(plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv", output=data,
                                           num_shards=4))
    if not os.path.exists(os.path.join(model, "metadata.json")):
        pretrain(data, model, PTUMConfig.load("configs/demo.yaml", ["train.epochs=1"]), log=print)
    base = os.path.join(args.work, "serving")
    shutil.rmtree(base, ignore_errors=True)
    saved = export_saved_model(model, base, version=1)
    ds = open_dataset(data)
    n_users = ds.manifest["counts"]["users"]

    # Beam export (start-up included).
    out = os.path.join(args.work, "embeddings")
    t0 = time.perf_counter()
    m = export_embeddings.run(saved, data, out, batch_rows=args.batch_rows)
    beam_s = time.perf_counter() - t0
    assert m["counts"]["users"] == n_users

    # Plain in-process loop: same files, same signature, same batch size.
    t0 = time.perf_counter()
    loaded = tf.saved_model.load(saved)
    fn = loaded.signatures["embed_tokens"]
    load_s = time.perf_counter() - t0
    width = json.load(open(os.path.join(saved, "assets.extra", "ptum_metadata.json")))["max_len"]
    done = 0
    files = ds.split_files("test") + ds.split_files("train")
    test_users = set(ds.read_split("test", columns=["user_id"]).column("user_id").to_pylist())
    for i, f in enumerate(files):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=args.batch_rows):
            if i >= len(ds.split_files("test")):
                batch = batch.filter(pc.invert(pc.is_in(batch.column("user_id"),
                                                        value_set=pa.array(list(test_users), pa.string()))))
                if batch.num_rows == 0:
                    continue
            toks, n, _ = export_embeddings.padded_tokens(batch, width)
            e = fn(item_ids=tf.constant(toks["item_ids"]), behavior_ids=tf.constant(toks["behavior_ids"]),
                   timestamps=tf.constant(toks["timestamps"]), lengths=tf.constant(n))["user_embedding"].numpy()
            done += len(e)
    predict_s = time.perf_counter() - t0
    assert done == n_users

    # Serving latency in-process.
    rows = ds.read_split("test").slice(0, 256).to_pylist()
    examples = [row_to_example(r) for r in rows]
    serve = loaded.signatures["serving_default"]
    latency = {}
    for bs, reps in ((1, 300), (256, 40)):
        batch = tf.constant(examples[:bs])
        serve(examples=batch)  # warm-up (tracing)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            serve(examples=batch)["user_embedding"].numpy()
            ts.append((time.perf_counter() - t) * 1000)
        latency[f"serving_default_batch{bs}"] = {"p50_ms": round(float(np.percentile(ts, 50)), 3),
                                                 "p99_ms": round(float(np.percentile(ts, 99)), 3), "calls": reps}
    result = common.envelope(" ".join(["python"] + sys.argv))
    result.update({
        "users": n_users, "batch_rows": args.batch_rows,
        "beam_export_seconds": round(beam_s, 2), "predict_loop_seconds": round(predict_s, 2),
        "predict_loop_model_load_seconds": round(load_s, 2),
        "time_ratio": round(beam_s / predict_s, 3),
        "beam_users_per_s": round(n_users / beam_s), "predict_users_per_s": round(n_users / predict_s),
        "runner_mode": m["runner"], "serving_latency": latency, "config_files": ["configs/demo.yaml"],
        "goal": "time_ratio <= 1.5 (start-up included)",
        "notes": "Beam time includes pipeline construction, runner start-up, SavedModel load per worker and "
                 "Parquet writes; the loop only computes embeddings (no writes).",
    })
    rows_md = [{"users": n_users, "beam_export_s": result["beam_export_seconds"],
                "predict_loop_s": result["predict_loop_seconds"], "time_ratio": result["time_ratio"]}]
    rows_md += [{"users": k, "beam_export_s": f"p50 {v['p50_ms']} ms", "predict_loop_s": f"p99 {v['p99_ms']} ms"}
                for k, v in latency.items()]
    common.write_result("export", result, ["users", "beam_export_s", "predict_loop_s", "time_ratio"], rows_md)


if __name__ == "__main__":
    main()
