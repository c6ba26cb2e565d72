"""Generative retrieval: the history left out after the beam search vs inside it, on one model.

    python benchmarks/history_in_beam.py --model gen/ --data beauty/ --name beauty \
        [--split test] [--beams 5,10,20]

The same trained generative model (ptum pretrain, model.architecture generative) and the same
rows, two ways to leave a user's history items (the target excepted) out of the list:
`after`: a plain beam search, then history items dropped (what ptum did before), so a list can
end up shorter than its cut-off; `inside`: ptum.model.generative's beam search with the history
excluded (what `ptum evaluate` and the served top_k do now). Per beam size: Recall/NDCG@5/@10
(leave-one-out, full catalog) and the share of rows whose top-10 (top-5 for a beam of 5) holds
fewer items than that. Writes benchmarks/results/history_in_beam_<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a generative model folder (ptum pretrain)")
    ap.add_argument("--data", required=True, help="its tokenized dataset")
    ap.add_argument("--name", default="beauty")
    ap.add_argument("--split", default="test")
    ap.add_argument("--beams", default="5,10,20")
    args = ap.parse_args()
    from ptum.data import contracts
    from ptum.data.batches import Rows, eval_batches
    from ptum.evaluation.generative import beam_function, history_exclusion, in_history, list_metrics
    from ptum.model.saving import load_model_dir

    model, meta, _ = load_model_dir(args.model, generative=True)
    rows = Rows.from_split(contracts.open_dataset(args.data), args.split)
    out, table = {}, []
    for beam in (int(b) for b in args.beams.split(",")):
        ks = [k for k in (5, 10) if k <= beam]
        plain, inside = beam_function(model, beam), beam_function(model, beam, excluding=True)
        sums = {}
        for idx, batch in eval_batches(rows, 512, meta["max_len"], meta["length_buckets"], 0):
            targets = rows.items[rows.offsets[idx + 1] - 1].astype(np.int64)
            after = plain(batch["item_ids"])[0]
            lists = {"after": (after, (after >= contracts.FIRST_ITEM_ID)
                               & (~in_history(rows, idx, after) | (after == targets[:, None]))),
                     "inside": (inside(batch["item_ids"], history_exclusion(rows, idx))[0], None)}
            for way, (items, kept) in lists.items():
                kept = items >= contracts.FIRST_ITEM_ID if kept is None else kept
                for name, per_row in list_metrics(items, kept, targets, ks).items():
                    sums[way, name] = sums.get((way, name), 0.0) + float(per_row.sum())
                short = kept.sum(axis=1) < max(ks)
                sums[way, "short"] = sums.get((way, "short"), 0.0) + float(short.sum())
        n = len(rows.offsets) - 1
        out[beam] = {way: {m: v / n for (w, m), v in sums.items() if w == way} for way in ("after", "inside")}
        for way in ("after", "inside"):
            r = out[beam][way]
            table.append({"beam": beam, "history left out": way,
                          **{m: f"{r[m]:.4f}" for m in (f"{x}@{k}" for k in ks for x in ("recall", "ndcg"))},
                          f"rows short of top-{max(ks)}": f"{r['short']:.2%}"})
        print(beam, {w: {m: round(v, 4) for m, v in r.items()} for w, r in out[beam].items()}, flush=True)
    result = common.envelope(" ".join(["python"] + sys.argv))
    result.update({"model": args.model, "split": args.split, "users": len(rows.offsets) - 1,
                   "beams": {str(b): v for b, v in out.items()},
                   "notes": "same model and rows; 'after': plain beam, history dropped from its list; "
                            "'inside': the history excluded inside the search (ptum evaluate, top_k)"})
    columns = ["beam", "history left out", "recall@5", "ndcg@5", "recall@10", "ndcg@10", "rows short of top-5",
               "rows short of top-10"]
    common.write_result(f"history_in_beam_{args.name}", result, columns, table)


if __name__ == "__main__":
    main()
