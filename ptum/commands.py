"""Subcommands beyond generate/tokenize: each imports its stack lazily."""
from __future__ import annotations

import json
import os
import sys


def add_subcommands(sub) -> None:
    d = sub.add_parser("demo", help="run the main job end to end on generated sample logs")
    d.add_argument("--workdir", default="demo-output")
    d.add_argument("--users", type=int, default=2000)
    d.add_argument("--items", type=int, default=800)
    d.add_argument("--seed", type=int, default=0)


def dispatch(args, extra) -> int:
    if args.command == "demo":
        return _demo(args, extra)
    raise SystemExit(f"unknown command {args.command}")


def _demo(a, extra) -> int:
    from ptum.cli import format_tokenize_summary
    from ptum.generate import generate
    from pipelines.tokenize import core, job

    logs = os.path.join(a.workdir, "logs")
    stats = generate(logs, users=a.users, items=a.items, seed=a.seed, malformed_rate=0.002)
    print(f"[1/2] generated {stats.events:,} events for {stats.users:,} users in {logs}")
    data = os.path.join(a.workdir, "sequences")
    manifest = job.run(core.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv",
                                            output=data, items_catalog=os.path.join(logs, "items.csv")),
                       extra)
    print("[2/2] tokenized with Beam")
    print(format_tokenize_summary(data, manifest))
    print(json.dumps({"dataset": data, "manifest": os.path.join(data, "manifest.json")}))
    return 0
