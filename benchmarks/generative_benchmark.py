"""Generative retrieval on Amazon Beauty (S3-Rec preprocessing): Semantic IDs vs item ids vs
random codes, the same decoder (configs/beauty-generative.yaml), the same training-time cap,
evaluated by ptum evaluate's protocol (leave-one-out, full catalog, history-filtered and not).

    python benchmarks/generative_benchmark.py --beauty ../shared/data/beauty-s3rec/Beauty.txt \
        --attributes ../shared/data/beauty-s3rec/Beauty_item2attributes.json --seconds 1500 \
        [--runs semantic,item_id,random] [--work benchmarks/work/generative]

Steps (each skipped when its output is already finished in --work): tokenize; the id model
(configs/beauty.yaml to early stopping, or --id-epochs: the collaborative half of the item
vectors, and the id model whose top_k latency is measured); `ptum semantic-ids` (attributes +
that model); one generative model per code source with train.max_train_seconds = --seconds;
evaluate; serving latency of the two SavedModels' top_k (batch 1 and 256, p50/p99) and of beam
search against beam size.
Writes benchmarks/results/generative.{json,md} and generative_codebook_usage.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402
from benchmarks.generative_serving import beam_scaling, serving  # noqa: E402

PUBLISHED = {"TIGER (Rajput et al. 2023)": {"recall@10": 0.0648, "ndcg@10": 0.0384},
             "RPG (KDD 2025)": {"recall@10": 0.0809, "ndcg@10": 0.0464}}


def _prepare(args):
    from ptum.config import PTUMConfig
    from ptum.data.ingest import job, plan
    from ptum.training.pretrain import pretrain
    from ptum.training.semantic_ids import learn_semantic_ids

    data, idmodel, sid = (os.path.join(args.work, n) for n in ("data", "idmodel", "sid"))
    if not os.path.exists(os.path.join(data, "manifest.json")):
        job.run(plan.TokenizeOptions(inputs=[args.beauty], format="sequence-lines", output=data))
    if not os.path.exists(os.path.join(idmodel, "metadata.json")):
        cut = [f"train.epochs={args.id_epochs}"] if args.id_epochs else []
        pretrain(data, idmodel, PTUMConfig.load("beauty", cut), log=lambda s: print("[id]", s))
    if not os.path.exists(os.path.join(sid, "manifest.json")):
        learn_semantic_ids(data, sid, attributes=args.attributes, model=idmodel)
    if "semantic_rqvae" in args.runs and not os.path.exists(os.path.join(sid + "_rqvae", "manifest.json")):
        learn_semantic_ids(data, sid + "_rqvae", attributes=args.attributes, model=idmodel, quantizer="rqvae")
    return data, idmodel, sid


def _train_and_evaluate(args, data, sid, name):
    from ptum.config import PTUMConfig
    from ptum.evaluation.ranking import evaluate_model
    from ptum.training.pretrain import pretrain

    out = os.path.join(args.work, "models", name)
    sets = [f"generative.codes={name.split('_rqvae')[0]}", f"train.max_train_seconds={args.seconds}"]
    if name.startswith("semantic"):
        sets.append(f"generative.semantic_ids={sid}{name[len('semantic'):]}")
    if not os.path.exists(os.path.join(out, "metadata.json")):
        pretrain(data, out, PTUMConfig.load("beauty-generative", sets), log=lambda s: print(f"[{name}]", s))
    meta = json.load(open(os.path.join(out, "metadata.json")))
    test = evaluate_model(out, data, "test")
    return out, {"settings": sets, "test": {k: v for k, v in test.items() if "@" in k},
                 "valid": meta["valid"], "epochs": meta["epochs_run"], "best_epoch": meta["best_epoch"],
                 "train_seconds": meta["train_seconds"], "item_codes": meta["item_codes"],
                 "curve": common.ptum_curve(out)}


def _quantizer_line(name: str, report: dict) -> str:
    levels = report["levels"]
    return (f"quantizer {name}: collision rate {report['collision_rate']:.4f} (largest group "
            f"{report['largest_collision_group']}), perplexity per level "
            f"{'/'.join(str(round(lv['perplexity'])) for lv in levels)}, utilisation "
            f"{'/'.join(str(round(lv['utilisation'], 2)) for lv in levels)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beauty", default="../shared/data/beauty-s3rec/Beauty.txt")
    ap.add_argument("--attributes", default="../shared/data/beauty-s3rec/Beauty_item2attributes.json")
    ap.add_argument("--work", default="benchmarks/work/generative")
    ap.add_argument("--seconds", type=float, default=1500, help="training-time cap of each generative run")
    ap.add_argument("--id-epochs", type=int, default=0,
                    help="epochs of the id model whose item embeddings join the attributes (0: configs/beauty.yaml "
                         "as it is, to early stopping: its codes decode better than a 3-epoch model's)")
    ap.add_argument("--runs", default="semantic,item_id",
                    help="code sources: semantic (residual k-means), semantic_rqvae (the RQ-VAE quantizer), item_id, "
                         "random")
    args = ap.parse_args()
    data, idmodel, sid = _prepare(args)
    runs, folders = {}, {}
    for name in args.runs.split(","):
        folders[name], runs[name] = _train_and_evaluate(args, data, sid, name)
        print(name, runs[name]["test"]["ndcg@10"], flush=True)
    id_result = os.path.join(common.RESULTS, "beauty.json")
    id_model = json.load(open(id_result)) if os.path.exists(id_result) else None
    sid_report = {q: json.load(open(os.path.join(path, "report.json")))
                  for q, path in (("kmeans", sid), ("rqvae", sid + "_rqvae")) if os.path.exists(path)}
    shutil.copy(os.path.join(sid, "codebook_usage.png"), os.path.join(common.RESULTS, "generative_codebook_usage.png"))
    gen = folders.get("semantic") or next(iter(folders.values()))
    from ptum.model.saving import load_model_dir
    model, _, _ = load_model_dir(gen, generative=True)
    d = model.settings.embedding_dim
    result = common.envelope(" ".join(["python"] + sys.argv))
    result.update({
        "runs": runs, "published": PUBLISHED,
        "id_model": ({"source": "benchmarks/results/beauty.json", "test": id_model["test"],
                      "train_seconds": id_model["train_seconds"]} if id_model else None),
        "semantic_ids": {"reports": sid_report, "parameters": json.load(open(os.path.join(sid, "manifest.json")))
                         ["parameters"]},
        "item_table_parameters": {f"code embeddings ({os.path.basename(gen)} codes)": (sum(model.level_sizes) + 1) * d,
                                  "one vector per item (id model, item_id decoder)": int(model.num_items) * d},
        "serving": serving(gen, idmodel, data, args.work),
        "beam_size_scaling": beam_scaling(gen, data, (5, 10, 20, 40)),
    })
    rows = [{"model": f"generative, {n} codes", "test recall@10": f"{r['test']['recall@10']:.4f}",
             "test ndcg@10": f"{r['test']['ndcg@10']:.4f}", "recall@5": f"{r['test']['recall@5']:.4f}",
             "ndcg@5": f"{r['test']['ndcg@5']:.4f}", "ndcg@10 unfiltered": f"{r['test']['ndcg@10_unfiltered']:.4f}",
             "epochs": r["epochs"], "train s": r["train_seconds"]} for n, r in runs.items()]
    if id_model:
        t = id_model["test"]
        rows.append({"model": "id model (configs/beauty.yaml, benchmarks/results/beauty.md)",
                     "test recall@10": f"{t['recall@10']:.4f}", "test ndcg@10": f"{t['ndcg@10']:.4f}",
                     "ndcg@10 unfiltered": f"{t['ndcg@10_unfiltered']:.4f}", "train s": id_model["train_seconds"]})
    rows += [{"model": f"{k} (published)", "test recall@10": f"{v['recall@10']:.4f}",
              "test ndcg@10": f"{v['ndcg@10']:.4f}"} for k, v in PUBLISHED.items()]
    result["notes"] = [
        f"each generative run stops after {args.seconds:.0f} s of training (train.max_train_seconds) on this machine; "
        "TIGER trains ~200k steps on accelerators, so these runs are not converged: see the curves",
        "Semantic IDs: Beauty_item2attributes.json (TF-IDF + SVD) joined with a 3-epoch id model's item embeddings "
        "(ptum semantic-ids --model), 3 x 256 residual k-means + the collision token",
        "serving: the SavedModels' top_k signature in this process, k=10; the generative one decodes with "
        "generative.beam_size beams"] + [_quantizer_line(q, r) for q, r in sid_report.items()]
    common.write_result("generative", result, ["model", "test recall@10", "test ndcg@10", "recall@5", "ndcg@5",
                                               "ndcg@10 unfiltered", "epochs", "train s"], rows)
    common.plot_curves("generative", {n: r["curve"] for n, r in runs.items()}, "seconds",
                       "wall time of training + validation (s), this machine",
                       "Amazon Beauty: generative retrieval, validation NDCG@10")


if __name__ == "__main__":
    main()
