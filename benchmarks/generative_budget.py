"""Generative retrieval: how test quality grows with training time, on finished model folders.

    python benchmarks/generative_budget.py --data beauty/ --name beauty \
        --models 1500s=gen_1500/,4000s=gen_4000/ [--config beauty-generative] [--split test]

Each model is a finished `ptum pretrain` folder (model.architecture generative) on the same
tokenized dataset; this script trains nothing. Per model: what its config changed from the
preset it names (--config: the training-time cap, validation cadence, ... read from the
folder's config.json, so the table says how each was really trained), the epochs it ran and
the one it kept, what its codes were learned from, training seconds, its test Recall/NDCG@5/@10
by `ptum evaluate`'s protocol (leave-one-out, full catalog, history left out inside the beam),
and its validation curve (plotted against wall time, with the published TIGER/RPG test figures
as reference lines).
Writes benchmarks/results/generative_budget_<name>.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402
from benchmarks.generative_benchmark import PUBLISHED  # noqa: E402

# keys filled from the data (or paths) rather than chosen
_NOT_SETTINGS = {"model.num_items", "model.num_words", "model.num_behaviors", "model.use_time", "model.use_text",
                 "generative.semantic_ids"}


def _flat(config: dict) -> dict:
    """{section: {key: value}} -> {"section.key": value}."""
    return {f"{section}.{k}": v for section, keys in config.items() for k, v in keys.items()}


def changed_settings(model_dir: str, preset: str) -> dict:
    """The keys of a model folder's config.json that differ from the preset's (its overrides)."""
    from ptum.config import PTUMConfig

    with open(os.path.join(model_dir, "config.json")) as f:
        used = _flat(json.load(f))
    # a path satisfies the preset's checks (codes: semantic needs one); paths are not compared
    base = _flat(PTUMConfig.load(preset, ["generative.semantic_ids=artifact"]).to_dict())
    return {k: v for k, v in sorted(used.items()) if k not in _NOT_SETTINGS and base.get(k, v) != v}


def codes_source(meta: dict) -> str:
    """What a model's codes were learned from: the Semantic IDs' inputs and, when an id model's
    item embeddings were joined, how long that model trained."""
    codes = meta.get("item_codes", {})
    par = codes.get("semantic_ids_parameters")
    if not par:
        return codes.get("codes", "")
    parts = [n for n in ("attributes", "vectors") if par.get(n)]
    if par.get("model"):
        try:
            with open(os.path.join(par["model"], "metadata.json")) as f:
                idm = json.load(f)
            parts.append(f"id model ({idm['epochs_run']} epochs, valid ndcg@10 {idm['valid']['ndcg@10']:.4f})")
        except (OSError, KeyError, ValueError):
            parts.append(f"id model {par['model']}")
    return f"{par.get('quantizer', '')}: " + " + ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, help="label=folder,label=folder,... (finished generative models)")
    ap.add_argument("--data", required=True, help="the tokenized dataset they were trained on")
    ap.add_argument("--name", default="beauty")
    ap.add_argument("--config", default="beauty-generative", help="the preset their overrides are read against")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    from ptum.evaluation.ranking import evaluate_model

    runs, rows = {}, []
    for item in args.models.split(","):
        label, _, folder = item.partition("=")
        if not folder:
            ap.error(f"--models: {item!r} is not label=folder")
        with open(os.path.join(folder, "metadata.json")) as f:
            meta = json.load(f)
        test = {k: v for k, v in evaluate_model(folder, args.data, args.split).items() if "@" in k}
        runs[label] = {"folder": folder, "settings": changed_settings(folder, args.config), args.split: test,
                       "codes": codes_source(meta),
                       "valid": meta["valid"], "epochs": meta["epochs_run"], "best_epoch": meta["best_epoch"],
                       "train_seconds": meta["train_seconds"], "curve": common.ptum_curve(folder)}
        r = runs[label]
        rows.append({"run": label, "settings": " ".join(f"{k}={v}" for k, v in r["settings"].items()),
                     "codes": r["codes"],
                     "epochs (kept)": f"{r['epochs']} ({r['best_epoch']})",
                     "wall s": round(r["curve"][-1]["seconds"]) if r["curve"] else "",
                     "valid ndcg@10": f"{r['valid']['ndcg@10']:.4f}",
                     **{m: f"{test[m]:.4f}" for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")}})
        print(label, {m: round(v, 4) for m, v in test.items()}, flush=True)
    rows += [{"run": f"{k} (published)", "recall@10": f"{v['recall@10']:.4f}", "ndcg@10": f"{v['ndcg@10']:.4f}"}
             for k, v in PUBLISHED.items()]
    result = common.envelope(" ".join(["python"] + sys.argv))
    result.update({"data": args.data, "split": args.split, "preset": args.config, "runs": runs,
                   "published": PUBLISHED,
                   "notes": f"models trained elsewhere ({args.config} with the settings shown), evaluated here on "
                            f"{args.split}: leave-one-out, full catalog, the history left out inside the beam; "
                            "'wall s' is training plus every validation (train.max_train_seconds "
                            "caps the same clock)"})
    name = f"generative_budget_{args.name}"
    common.write_result(name, result, ["run", "settings", "codes", "epochs (kept)", "wall s", "valid ndcg@10",
                                       "recall@5", "ndcg@5", "recall@10", "ndcg@10"], rows)
    common.plot_curves(name, {label: r["curve"] for label, r in runs.items()}, "seconds",
                       "wall time of training + validation (s), this machine",
                       "Generative retrieval: validation NDCG@10 against training time",
                       target=PUBLISHED["TIGER (Rajput et al. 2023)"]["ndcg@10"])


if __name__ == "__main__":
    main()
