"""`ptum` command line. Heavy imports (Beam, TensorFlow, TFX) happen inside the
subcommand that needs them, so `ptum --help` and `import ptum` stay fast."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ptum.cli import console


def _cmd_generate(a) -> int:
    from ptum.data.generate import generate

    stats = generate(a.output, users=a.users, items=a.items, seed=a.seed,
                     malformed_rate=a.malformed_rate, mean_events=a.mean_events)
    print(json.dumps({"output": a.output, **stats.__dict__}, indent=2))
    return 0


def tokenize_options(a):
    from ptum.data.ingest.formats import Columns
    from ptum.data.ingest.plan import TokenizeOptions

    return TokenizeOptions(
        inputs=a.input, format=a.format, output=a.output,
        columns=Columns(user=a.user_column, item=a.item_column, time=a.time_column,
                        behavior=a.behavior_column or None, value=a.value_column or None),
        delimiter=a.delimiter, header=not a.no_header,
        names=tuple(a.names.split(",")) if a.names else (), encoding=a.encoding,
        items_catalog=a.items, split=a.split, time_cut=a.time_cut,
        finetune_fraction=a.finetune_fraction, window=a.window, min_item_count=a.min_item_count,
        max_history=a.max_history, max_line_bytes=a.max_line_bytes, num_shards=a.num_shards,
        min_word_count=a.min_word_count, vocab_from=a.vocab_from, time_unit=a.time_unit,
        allow_truncated=a.allow_truncated, allow_empty=a.allow_empty, strip_ids=a.strip_ids,
        catalog_item_column=a.catalog_item_column,
        catalog_title_column=a.catalog_title_column, catalog_categories_column=a.catalog_categories_column,
        **({} if a.split_bytes is None else {"split_bytes": a.split_bytes}))


def _cmd_tokenize(a, beam_args: List[str]) -> int:
    from ptum.data import contracts
    from ptum.data.ingest import plan
    from ptum.data.ingest.formats import InputError

    try:
        opts = tokenize_options(a)
        planned = plan.plan_inputs(opts)   # inputs, columns, options and output checked before Beam is imported
        problem = contracts.output_folder_problem(opts.output)
        if problem:
            raise InputError(problem)
        from ptum.data.ingest import job
        manifest = job.run(opts, beam_args, planned=planned)
    except InputError as e:
        print(f"ptum tokenize: error: {e}", file=sys.stderr)
        return 2
    print(format_tokenize_summary(a.output, manifest))
    return 0


def format_tokenize_summary(output: str, manifest: dict) -> str:
    c = manifest["counts"]
    dl = c["events_dead_lettered"]
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(dl["by_reason"].items()) if v) or "none"
    lines = [
        f"sequence dataset: {output}  (runner {manifest['runner']}, vocab {manifest['vocab_hash'][:12]})",
        f"  events read {c['events_read']:,}  accepted {c['events_accepted']:,}  "
        f"dead-lettered {dl['total']:,} ({reasons})  duplicates {c['duplicates_dropped']:,}  "
        f"truncated {c['events_truncated']:,}",
        f"  users {c['users']:,}  items {c['items']:,}  behaviors {c['behaviors']}  "
        f"OOV events {c['oov_events']:,}",
    ]
    short = "  ".join(f"{k.removeprefix('users_')} {c[k]:,}" for k in ("users_train_only", "users_eval_only",
                                                                       "users_test_only") if c.get(k))
    if short:
        lines.append(f"  users in some splits only: {short}")
    if c.get("ids_with_surrounding_space"):
        lines.append(f"  events whose ids had surrounding whitespace: {c['ids_with_surrounding_space']:,} "
                     f"({'trimmed' if manifest['parameters'].get('strip_ids') else 'kept as written; --strip-ids trims'})")
    for name, s in manifest["splits"].items():
        lines.append(f"  split {name:<8} rows {s['rows']:,}  events {s['events']:,}  files {len(s['files'])}")
    return "\n".join(lines)


def _add_tokenize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, help="files, folders or globs (any Beam filesystem)")
    p.add_argument("--format", required=True,
                   help="csv | tsv | jsonl | parquet | movielens | sequence-lines")
    p.add_argument("--output", required=True, help="dataset folder (local or gs://, s3://, ...)")
    p.add_argument("--user-column", default="user_id", help="column with the user id")
    p.add_argument("--item-column", default="item_id", help="column with the item id")
    p.add_argument("--time-column", default="timestamp", help="column with the event time (epoch number or ISO-8601)")
    p.add_argument("--behavior-column", default="behavior", help="empty string: none")
    p.add_argument("--value-column", default="value", help="empty string: none")
    p.add_argument("--delimiter", default=None, help="csv/tsv field separator override")
    p.add_argument("--no-header", action="store_true", help="csv/tsv files have no header line")
    p.add_argument("--names", default=None, help="comma-separated column names (with --no-header)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of csv/tsv/jsonl inputs")
    p.add_argument("--time-unit", default="s", choices=["s", "ms", "us", "ns"],
                   help="unit of numeric timestamps (stored as epoch seconds; out-of-range values are "
                        "dead letters)")
    p.add_argument("--strip-ids", action="store_true",
                   help="trim whitespace around user and item ids (default: ids exactly as written, so "
                        "'u1' and ' u1' are two users; either way the manifest counts "
                        "ids_with_surrounding_space)")
    p.add_argument("--allow-empty", action="store_true",
                   help="commit a dataset in which no event was accepted (default: such a run fails and "
                        "the previous output stays)")
    p.add_argument("--allow-truncated", action="store_true",
                   help="a truncated compressed input keeps the lines before the damage (one dead letter) "
                        "instead of failing the run")
    p.add_argument("--items", default=None,
                   help="item catalog CSV with a header: item id (item_id or the --item-column name), title, "
                        "optional categories / genres")
    p.add_argument("--catalog-item-column", default=None, help="the catalog's item id column")
    p.add_argument("--catalog-title-column", default="title", help="the catalog's title column")
    p.add_argument("--catalog-categories-column", default=None, help="default: categories or genres if present")
    p.add_argument("--split", default="leave-one-out", help="leave-one-out | time | user-hash | window")
    p.add_argument("--window", type=int, default=10,
                   help="for --split window: the last W behaviors are the test window, the W before "
                        "them the validation window")
    p.add_argument("--time-cut", default=None, help="for --split time: an epoch number (in --time-unit) or ISO-8601")
    p.add_argument("--finetune-fraction", type=float, default=0.2, help="for --split user-hash")
    p.add_argument("--min-item-count", type=int, default=1, help="rarer items map to OOV")
    p.add_argument("--max-history", type=int, default=0, help="keep the newest N events per user (0: all)")
    p.add_argument("--max-line-bytes", type=int, default=1 << 20, help="longer records are dead letters (line_too_long)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--split-bytes", type=int, default=None,
                       help="read uncompressed text files larger than this as line-aligned byte ranges of "
                            "this size, Parquet as runs of row groups, so one big file spreads over workers "
                            "(default 64 MiB; compressed files are read whole)")
    split.add_argument("--no-split", dest="split_bytes", action="store_const", const=0,
                       help="read every file whole (a CSV whose quoted fields hold newlines beyond its first "
                            "MiB; those in the first MiB are detected)")
    p.add_argument("--num-shards", type=int, default=0, help="0: from input size")
    p.add_argument("--min-word-count", type=int, default=1, help="rarer title words are left out of the word vocabulary")
    p.add_argument("--vocab-from", default=None,
                   help="reuse this dataset's vocabularies (items, behaviors, title words): token ids then mean "
                        "what they meant to the model trained on it")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, when it has one worth showing; epilogs (the
    examples) keep their lines."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or action.required or not action.option_strings
                or action.default in (None, False, [], argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with HelpFormatter; subcommand parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ptum", description="PTUM user embeddings: tokenize logs, pre-train, fine-tune, export, serve.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show library logs and warnings (Beam, TensorFlow, TFX)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write synthetic behavior logs (events, items, users, impressions)")
    g.add_argument("--output", required=True, help="folder for events.csv, items.csv, users.csv, impressions.csv")
    g.add_argument("--users", type=int, default=1000, help="users to generate")
    g.add_argument("--items", type=int, default=500, help="catalog size")
    g.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    g.add_argument("--malformed-rate", type=float, default=0.0, help="share of event lines damaged on purpose (dead letters)")
    g.add_argument("--mean-events", type=float, default=30.0, help="mean events per user (log-normal)")

    t = sub.add_parser("tokenize", help="Beam job: raw logs -> sequence dataset (Parquet)", epilog="""examples:
  ptum tokenize --input logs/ --format csv --items logs/items.csv --output data/
  ptum tokenize --input 'logs/2026-*.jsonl.gz' --format jsonl --split window --output data/
  ptum tokenize --input Beauty.txt --format sequence-lines --output beauty/
  ptum tokenize --input new-logs/ --format csv --vocab-from data/ --output data-2/

Pipeline options go after `--`, e.g.
  ptum tokenize ... -- --runner DataflowRunner --project P --region R --temp_location gs://B/tmp""")
    _add_tokenize_args(t)

    from ptum.cli import commands
    commands.add_subcommands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    console.quiet(-1 if args.quiet else min(args.verbose, 1))
    try:
        if args.command == "generate":
            return _cmd_generate(args)
        if args.command == "tokenize":
            return _cmd_tokenize(args, extra)
        from ptum.cli import commands
        return commands.dispatch(args, extra)
    except KeyboardInterrupt:
        # Outputs are committed last (manifest / metadata.json), so an interrupted run leaves
        # nothing that reads as finished; a re-run starts over (pre-training resumes).
        print(f"ptum {args.command}: interrupted; nothing was committed", file=sys.stderr)
        return 130


