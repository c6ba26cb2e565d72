"""The tokenization transform on Arrow tables (no Beam): input planning, chunked
reading, per-user history building, vocabulary and split writing.

`ptum.data.ingest.job` distributes these steps with Beam; `ptum.data.ingest.reference`
runs them in one process (the benchmark's baseline). Both produce the same dataset.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import logging
import lzma
import os
import re
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ptum.data import contracts
from ptum import fs
from ptum.data.ingest import formats
from ptum.data.ingest.formats import Chunk, Columns, FileSpec, InputError

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 8 << 20
# Uncompressed text files larger than this are read as line-aligned byte ranges of this size
# (Parquet: as runs of row groups), so one big file spreads over workers.
DEFAULT_SPLIT_BYTES = 64 << 20
# A byte range's rows are numbered (range index << RANGE_BITS) + its own line number: the order
# key stays the file's line order whatever the range size, and the file's own line numbers are
# restored for dead letters from the per-range line counts (`file_line_numbers`).
RANGE_BITS = 32
MAX_SPLIT_BYTES = 1 << 31


@dataclass
class TokenizeOptions:
    """Every parameter of a tokenize run (recorded in the manifest)."""

    inputs: List[str]
    format: str
    output: str
    columns: Columns = field(default_factory=Columns)
    delimiter: Optional[str] = None
    header: bool = True
    names: Tuple[str, ...] = ()
    encoding: str = "utf-8"
    items_catalog: Optional[str] = None
    split: str = "leave-one-out"
    time_cut: Optional[str] = None
    finetune_fraction: float = 0.2
    min_item_count: int = 1
    max_history: int = 0
    max_line_bytes: int = 1 << 20
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    split_bytes: int = DEFAULT_SPLIT_BYTES   # 0: every file is one unit of work
    num_shards: int = 0
    min_word_count: int = 1
    max_title_words: int = 30
    vocab_from: Optional[str] = None
    window: int = 10               # for split "window": behaviors per future window
    time_unit: str = "s"           # unit of numeric timestamps (s | ms | us | ns); stored as seconds
    allow_truncated: bool = False  # a truncated compressed input: count it and go on (default: fail)
    catalog_item_column: Optional[str] = None    # default: item_id, else the events' item column
    catalog_title_column: str = "title"
    catalog_categories_column: Optional[str] = None  # default: categories, else genres, if present
    allow_empty: bool = False      # commit a dataset with no accepted event (default: fail)
    strip_ids: bool = False        # trim surrounding whitespace from ids (default: exact, counted)
    stage_of: Optional[str] = None  # set by the runs: `output` is a stage that replaces this folder

    def manifest_params(self) -> dict:
        d = asdict(self)
        d["columns"] = asdict(self.columns)
        d["output"] = d.pop("stage_of") or self.output
        return d


@contextlib.contextmanager
def staged_output(opts: TokenizeOptions, what: str) -> Iterator[TokenizeOptions]:
    """Hold the output's lock, refuse an output of another kind, and yield the options of a run
    that writes a stage which replaces the output when the block ends without an error (see
    ptum.fs.staged_dir: a failed or killed run leaves the previous dataset as it was)."""
    with output_lock(opts.output, what):
        contracts.check_output_kind(opts.output, "dataset", InputError)
        with fs.staged_dir(opts.output) as stage:
            reset_output(stage)
            yield replace(opts, output=stage, stage_of=opts.output)


# ------------------------------------------------------------------ planning
def expand_paths(pattern: str) -> List[str]:
    """A path, directory or glob (local or an object store, see ptum.fs) -> sorted file list."""
    try:
        return fs.glob(pattern)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise InputError(f"{pattern}: cannot list ({type(e).__name__}: {e})") from None


class _Decompressed:
    """A decompressing reader that also closes the file under it."""

    def __init__(self, stream, raw):
        self._stream, self._raw = stream, raw

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_DECOMPRESSORS = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile, ".lzma": lzma.LZMAFile}
# Compressed inputs are read whole (a byte range cannot be entered mid-stream).
COMPRESSED_SUFFIXES = tuple(_DECOMPRESSORS) + (".zst",)


def open_input(path: str):
    """Open a (possibly compressed: .gz, .bz2, .xz, .lzma, .zst) input file for binary reading."""
    raw = fs.open_input(path)
    suffix = os.path.splitext(path)[1]
    if suffix in _DECOMPRESSORS:
        return _Decompressed(_DECOMPRESSORS[suffix](fileobj=raw, mode="rb"), raw)
    if suffix == ".zst":
        return _Decompressed(pa.CompressedInputStream(raw, "zstd"), raw)
    return raw


def _fingerprint(path: str) -> dict:
    size = fs.size(path)
    with fs.open_input(path) as f:
        head = f.read(1 << 20)
        tail = b""
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            tail = f.read()
    return contracts.file_fingerprint(path, size, head, tail)


def _first_line(path: str, encoding: str) -> str:
    try:
        with open_input(path) as f:
            line = b""
            while b"\n" not in line and len(line) < (1 << 20):
                block = f.read(8192)        # small reads: a damaged file's tail is not touched
                if not block:
                    break
                line += block
            line = line.split(b"\n", 1)[0][:1 << 20]
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise InputError(f"{path}: cannot read the header ({type(e).__name__}: {e})")
    if line.startswith(formats.UTF8_BOM):
        line = line[len(formats.UTF8_BOM):]
    return line.decode(encoding, errors="replace").rstrip("\r\n")


ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
             "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
             "Romance", "Sci-Fi", "Thriller", "War", "Western")


def plan_inputs(opts: TokenizeOptions) -> Tuple[List[FileSpec], dict]:
    """Resolve inputs to FileSpecs, checking what can be checked before any work starts.

    Returns the specs (in input order) and side tables for the manifest/labels
    (`catalog`: item_id/title/categories rows; `labels`: user label rows; `has_time`).
    """
    if opts.format not in formats.FORMATS:
        raise InputError(f"unknown format {opts.format!r}; choose one of {', '.join(formats.FORMATS)}")
    if opts.split not in contracts.SPLIT_SCHEMES:
        raise InputError(f"unknown split scheme {opts.split!r}; choose one of {sorted(contracts.SPLIT_SCHEMES)}")
    if opts.split == "time" and not opts.time_cut:
        raise InputError("--split time needs --time-cut (epoch seconds or ISO-8601)")
    if not opts.inputs:
        raise InputError("no --input given")
    if not 0 <= opts.split_bytes <= MAX_SPLIT_BYTES:
        raise InputError(f"--split-bytes {opts.split_bytes}: must be between 0 (no splitting) and "
                         f"{MAX_SPLIT_BYTES} (2 GiB)")
    if opts.time_unit not in formats.TIME_UNITS:
        raise InputError(f"--time-unit {opts.time_unit!r}: unknown time unit; choose one of "
                         f"{', '.join(formats.TIME_UNITS)}")
    extra: dict = {"catalog": None, "labels": None, "has_time": True}
    paths: List[str] = []
    for pattern in opts.inputs:
        found = expand_paths(pattern)
        if not found:
            raise InputError(f"{pattern}: no such file (or the glob matched nothing)")
        paths.extend(found)
    if opts.format == "movielens":
        return _plan_movielens(opts, paths, extra)
    paths = sorted(set(paths))
    specs = []
    for i, p in enumerate(paths):
        if opts.format in ("csv", "tsv"):
            delim = opts.delimiter or ("," if opts.format == "csv" else "\t")
            names = tuple(opts.names)
            if opts.header:
                names = header_names(_first_line(p, opts.encoding), delim)
            missing = [c for c in (opts.columns.user, opts.columns.item, opts.columns.time) if c not in names]
            if missing:
                raise InputError(f"{p}: missing column(s) {missing} in header {list(names)} "
                                 "(set --user-column/--item-column/--time-column or --no-header --names)")
            specs.append(FileSpec(p, i, "delimited", delim, opts.header, names, opts.encoding,
                                  columns=opts.columns))
        elif opts.format == "jsonl":
            specs.append(FileSpec(p, i, "jsonl", encoding=opts.encoding, header=False, columns=opts.columns))
        elif opts.format == "parquet":
            schema = _parquet_schema(p)
            missing = [c for c in (opts.columns.user, opts.columns.item, opts.columns.time)
                       if c not in schema.names]
            if missing:
                raise InputError(f"{p}: missing column(s) {missing} in {list(schema.names)}")
            _check_parquet_types(p, schema, opts.columns)
            specs.append(FileSpec(p, i, "parquet", header=False, columns=opts.columns))
        elif opts.format == "sequence-lines":
            extra["has_time"] = False
            specs.append(FileSpec(p, i, "sequence-lines", header=False, encoding=opts.encoding,
                                  columns=Columns(behavior=None, value=None)))
    if opts.items_catalog:
        extra["catalog"] = read_catalog_csv(opts.items_catalog, opts.encoding, opts.catalog_item_column
                                            or opts.columns.item, opts.catalog_title_column,
                                            opts.catalog_categories_column)
    specs = [replace(s, time_unit=opts.time_unit, allow_truncated=opts.allow_truncated, strip_ids=opts.strip_ids)
             for s in specs]
    return specs, extra


def header_names(line: str, delimiter: str) -> Tuple[str, ...]:
    """Column names of a header line: a UTF-8 BOM dropped, CSV quotes honoured."""
    import csv

    line = line.lstrip("\ufeff")
    if len(delimiter) == 1:
        fields = next(csv.reader([line], delimiter=delimiter), [])
    else:
        fields = line.split(delimiter)
    return tuple(n.strip() for n in fields)


def _parquet_schema(path: str):
    try:
        with fs.open_input(path) as f:
            return pq.read_schema(f)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]})")


def _check_parquet_types(path: str, schema, columns: Columns) -> None:
    """Event columns must be scalar strings or numbers (time: also timestamps / dates)."""
    t = pa.types

    def scalar(typ, time=False):
        if t.is_dictionary(typ):
            typ = typ.value_type
        ok = t.is_string(typ) or t.is_large_string(typ) or t.is_integer(typ)
        if time:
            ok = ok or t.is_floating(typ) or t.is_timestamp(typ) or t.is_date(typ)
        return ok

    for name, is_time in ((columns.user, False), (columns.item, False), (columns.time, True),
                          (columns.behavior, False), (columns.value, None)):
        if not name or name not in schema.names:
            continue
        typ = schema.field(name).type
        good = (t.is_integer(typ) or t.is_floating(typ) or t.is_null(typ)) if is_time is None else scalar(typ, is_time)
        if not good:
            raise InputError(f"{path}: column {name!r} has type {typ}; expected "
                             + ("a number" if is_time is None else "a timestamp, number or string" if is_time
                                else "a string or integer"))


def _plan_movielens(opts, paths, extra):
    dirs = sorted({p if os.path.isdir(p) else os.path.dirname(p) for p in paths})
    root = dirs[0]
    names = {os.path.basename(p) for p in paths}
    ml_cols = Columns(user="user", item="item", time="timestamp", behavior=None, value="rating")
    if "u.data" in names:
        data = os.path.join(root, "u.data")
        spec = FileSpec(data, 0, "delimited", "\t", False, ("user", "item", "rating", "timestamp"),
                        "latin-1", default_behavior="rating", columns=ml_cols)
        item_path, user_path, sep = os.path.join(root, "u.item"), os.path.join(root, "u.user"), "|"
    elif "ratings.dat" in names:
        data = os.path.join(root, "ratings.dat")
        spec = FileSpec(data, 0, "delimited", "::", False, ("user", "item", "rating", "timestamp"),
                        "latin-1", default_behavior="rating", columns=ml_cols)
        item_path, user_path, sep = os.path.join(root, "movies.dat"), os.path.join(root, "users.dat"), "::"
    else:
        raise InputError(f"{root}: not a MovieLens folder (expected u.data (100K) or ratings.dat (1M))")
    if os.path.exists(item_path):
        extra["catalog"] = _movielens_items(item_path, sep)
    if os.path.exists(user_path):
        extra["labels"] = _movielens_users(user_path, sep)
    return [replace(spec, allow_truncated=opts.allow_truncated)], extra


def _age_group(age: int) -> str:
    return "<25" if age < 25 else "25-34" if age < 35 else "35-44" if age < 45 else "45+"


def _movielens_items(path: str, sep: str) -> pa.Table:
    ids, titles, cats = [], [], []
    with open(path, "rb") as f:
        for raw in f:
            parts = raw.decode("latin-1").rstrip("\r\n").split(sep)
            if len(parts) < 2:
                continue
            ids.append(parts[0])
            titles.append(re.sub(r"\s*\(\d{4}\)\s*$", "", parts[1]))
            if sep == "|":
                flags = parts[5:24]
                cats.append("|".join(g for g, fl in zip(ML_GENRES, flags) if fl == "1"))
            else:
                cats.append(parts[2] if len(parts) > 2 else "")
    return pa.table({"item_id": ids, "title": titles, "categories": cats})


def _movielens_users(path: str, sep: str) -> pa.Table:
    rows = {"user_id": [], "gender": [], "age": [], "age_group": [], "occupation": []}
    with open(path, "rb") as f:
        for raw in f:
            parts = raw.decode("latin-1").rstrip("\r\n").split(sep)
            if len(parts) < 4:
                continue
            if sep == "|":  # 100K: id|age|gender|occupation|zip
                uid, age, gender, occ = parts[0], int(parts[1]), parts[2], parts[3]
            else:           # 1M: id::gender::age code::occupation::zip
                uid, gender, age, occ = parts[0], parts[1], int(parts[2]), parts[3]
            rows["user_id"].append(uid)
            rows["gender"].append(gender)
            rows["age"].append(age)
            rows["age_group"].append(_age_group(age))
            rows["occupation"].append(occ)
    return pa.table(rows)


def read_catalog_csv(path: str, encoding: str = "utf-8", item_column: Optional[str] = None,
                     title_column: str = "title", categories_column: Optional[str] = None) -> pa.Table:
    """Item catalog CSV with a header -> item_id, title, categories.

    The item id column is `item_id` if present, else `item_column` (the events' item column,
    e.g. MovieLens' movieId); categories come from `categories_column`, else a `categories`
    or `genres` column when there is one (empty otherwise)."""
    import pyarrow.csv as pacsv

    if not fs.isfile(path):
        raise InputError(f"{path}: item catalog not found")
    names = header_names(_first_line(path, encoding), ",")
    id_col = "item_id" if "item_id" in names else (item_column or "item_id")
    cat_col = categories_column or next((c for c in ("categories", "genres") if c in names), None)
    missing = [c for c in (id_col, title_column) + ((categories_column,) if categories_column else ())
               if c not in names]
    if missing:
        raise InputError(f"{path}: item catalog has no column(s) {missing} (has {list(names)}); the item id "
                         "column is item_id or the events' --item-column, the title --catalog-title-column")
    try:
        t = pacsv.read_csv(open_input(path), read_options=pacsv.ReadOptions(encoding=encoding, column_names=list(names),
                                                                skip_rows=1),
                           convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: unreadable item catalog ({str(e).splitlines()[0]})")
    n = t.num_rows
    cats = t.column(cat_col) if cat_col else pa.array([""] * n, pa.string())
    return pa.table({"item_id": pc.cast(t.column(id_col), pa.string()),
                     "title": pc.fill_null(pc.cast(t.column(title_column), pa.string()), ""),
                     "categories": pc.fill_null(pc.cast(cats, pa.string()), "")})


def fingerprints(specs: Sequence[FileSpec], extra_paths: Sequence[str] = ()) -> List[dict]:
    return [_fingerprint(s.path) for s in specs] + [_fingerprint(p) for p in extra_paths]


def auto_shards(specs: Sequence[FileSpec]) -> int:
    total = sum(fs.size(s.path) for s in specs)
    return int(min(256, max(1, total // (32 << 20) + 1)))


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Split:
    """A unit of reading work: a whole file, the lines that start in bytes [start, end) of an
    uncompressed text file, or Parquet row groups [start, end) (`first_row`: rows before)."""

    spec: FileSpec
    index: int = 0              # position among the file's splits
    start: int = 0
    end: Optional[int] = None   # None: the whole file
    first_row: int = 0


@dataclass(frozen=True)
class RangeLines:
    """What a byte range reports after reading: the lines (header and blank lines included)
    that start in it, from which the file's own line numbers are restored."""

    file_idx: int
    index: int
    lines: int


def plan_splits(specs: Sequence[FileSpec], split_bytes: int) -> List[Split]:
    """FileSpecs -> units of reading work (in the driver, from file sizes and Parquet footers)."""
    return [s for spec in specs for s in _splits_of(spec, split_bytes)]


def _splits_of(spec: FileSpec, split_bytes: int) -> List[Split]:
    if split_bytes <= 0 or spec.path.endswith(COMPRESSED_SUFFIXES):
        return [Split(spec)]
    if spec.kind == "parquet":
        return _row_group_splits(spec, split_bytes)
    size = fs.size(spec.path)
    if size <= split_bytes:
        return [Split(spec)]
    if spec.kind == "delimited" and _has_multiline_records(spec.path):
        log.info("%s: quoted fields span lines in its first MiB; read whole (not split)", spec.path)
        return [Split(spec)]
    n = -(-size // split_bytes)
    return [Split(spec, i, i * split_bytes, min(size, (i + 1) * split_bytes)) for i in range(n)]


def _has_multiline_records(path: str, sample_bytes: int = 1 << 20) -> bool:
    """Whether a delimited file's first MiB has a line with an odd number of '"' (a quoted
    field that goes on in the next line): such a file cannot be cut at newlines."""
    with fs.open_input(path) as f:
        head = f.read(sample_bytes)
    lines = head.split(b"\n")[:-1] if len(head) == sample_bytes else head.split(b"\n")
    return any(line.count(b'"') % 2 for line in lines)


def _row_group_splits(spec: FileSpec, split_bytes: int) -> List[Split]:
    try:
        meta = parquet_file(spec.path).metadata
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{spec.path}: not a readable Parquet file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    splits: List[Split] = []
    start = first_row = rows = size = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        rows += rg.num_rows
        size += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        if size >= split_bytes or g == meta.num_row_groups - 1:
            splits.append(Split(spec, len(splits), start, g + 1, first_row))
            start, first_row, size = g + 1, rows, 0
    return splits if len(splits) > 1 else [Split(spec)]


class LineRange:
    """The bytes of the lines that start in [start, end) of an uncompressed file: from just after
    the first newline at or after start - 1 (from 0 when start is 0) through the first newline at
    or after end - 1. Consecutive ranges thus cover every line exactly once."""

    def __init__(self, path: str, start: int, end: int, block: int = 1 << 20):
        self._f = fs.open_input(path)
        self._buf, self._pos, self._end, self._block = b"", start, end, block
        self._state = "body"
        if start > 0:
            self._f.seek(start - 1)
            self._pos = start - 1
            while True:
                data = self._f.read(block)
                if not data:
                    self._state = "done"
                    break
                nl = data.find(b"\n")
                if nl >= 0:
                    self._buf, self._pos = data[nl + 1:], self._pos + nl + 1
                    break
                self._pos += len(data)
        if self._pos >= end:
            self._state = "done"

    def read(self, n: int) -> bytes:
        if self._state == "done":
            return b""
        if not self._buf:
            self._buf = self._f.read(max(n, self._block))
            if not self._buf:
                self._state = "done"
                return b""
        if self._state == "body":
            take = self._buf[:min(n, self._end - self._pos)]
            if self._pos + len(take) >= self._end:
                self._state = "done" if take.endswith(b"\n") else "tail"
        else:                   # the rest of the last line, through its newline
            nl = self._buf.find(b"\n", 0, n)
            take = self._buf[:nl + 1] if nl >= 0 else self._buf[:n]
            if nl >= 0:
                self._state = "done"
        self._buf, self._pos = self._buf[len(take):], self._pos + len(take)
        return take

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def file_line_numbers(deadletters: pa.Table, range_lines: Sequence[Tuple[int, int]]) -> pa.Table:
    """Dead letters of a file read as byte ranges, rows numbered (range << RANGE_BITS) + line
    in range -> rows numbered by the file's own lines. `range_lines`: (range index, lines) of
    every range of the file; empty for a file read whole (rows are already its lines)."""
    if not range_lines or not deadletters.num_rows:
        return deadletters
    counts = dict(range_lines)
    before = np.concatenate([[0], np.cumsum([counts[i] for i in range(max(counts))], dtype=np.int64)])
    rows = deadletters.column("row").to_numpy().astype(np.int64)
    fixed = before[rows >> RANGE_BITS] + (rows & ((1 << RANGE_BITS) - 1))
    return deadletters.set_column(deadletters.schema.get_field_index("row"), "row",
                                  pa.array(fixed, pa.int64()))


def read_chunks(spec: FileSpec, chunk_bytes: int, max_line_bytes: int,
                opener: Callable = open_input, first_row: int = 1, file_start: bool = True):
    """Yield Chunks of whole lines (and dead-letter tables for lines the reader itself
    rejects: over-long lines with no newline in sight, a truncated compressed file); returns
    the number of lines read. `file_start`: the stream begins at the file's first byte (a BOM
    and the header are there)."""
    # Small reads from compressed streams: a truncated file loses at most one read.
    read_size = (64 << 10) if spec.path.endswith(COMPRESSED_SUFFIXES) else min(chunk_bytes, 1 << 20)
    state = {"row": first_row, "skip_header": spec.header and file_start}
    parts: List[bytes] = []   # blocks of whole lines not yet emitted
    size = [0]
    buf = b""                 # a partial line
    skipping = False          # inside an over-long line: drop bytes until the next newline
    first_block = file_start
    quoted = spec.kind == "delimited"   # a newline inside a quoted field does not end the record

    def lines_in_parts():
        return sum(p.count(b"\n") + 1 for p in parts)

    def flush():
        if parts:
            data = b"\n".join(parts)
            n = lines_in_parts()
            yield from _emit(spec, data, state["row"], state["skip_header"])
            state["row"] += n
            state["skip_header"] = False
            parts.clear()
            size[0] = 0

    with opener(spec.path) as f:
        while True:
            try:
                block = f.read(read_size)
            except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as e:
                if not spec.allow_truncated:
                    raise InputError(f"{spec.path}: truncated or corrupt compressed input after line "
                                     f"{state['row'] + lines_in_parts() - 1} ({type(e).__name__}: {e}); "
                                     "re-copy the file, or pass --allow-truncated to keep the lines before "
                                     "the damage (counted as a truncated_input dead letter)")
                yield from flush()
                yield formats.deadletters(spec, [state["row"]], [None], ["truncated_input"],
                                          [f"{type(e).__name__}: {e} | ".encode() + buf[-200:]])
                return state["row"] - first_row
            if not block:
                break
            if first_block:
                first_block = False
                if block.startswith(formats.UTF8_BOM):
                    block = block[len(formats.UTF8_BOM):]
            if skipping:
                nl = block.find(b"\n")
                if nl < 0:
                    continue
                block = block[nl + 1:]
                skipping = False
            buf += block
            cut = record_cut(buf, max_line_bytes) if quoted else buf.rfind(b"\n")
            if cut < 0:
                if len(buf) > max_line_bytes:
                    yield formats.deadletters(spec, [state["row"] + lines_in_parts()], [None],
                                              ["line_too_long"], [buf])
                    parts.append(b"")  # the line keeps its number; an empty line is no record
                    buf, skipping = b"", True
                continue
            parts.append(buf[:cut])
            size[0] += cut
            buf = buf[cut + 1:]
            if size[0] >= chunk_bytes:
                yield from flush()
    if buf:
        parts.append(buf)
    yield from flush()
    return state["row"] - first_row


def record_cut(buf: bytes, max_record_bytes: int) -> int:
    """The last newline of `buf` outside CSV quotes (an even number of '"' before it), or -1.

    A stray quote would hold every later newline inside a "field": when no even cut exists
    within `max_record_bytes` of the end, cut at the last newline (the stray line then
    fails on its own, as a dead letter)."""
    cut = buf.rfind(b"\n")
    if cut < 0 or b'"' not in buf:
        return cut
    odd = buf.count(b'"', 0, cut) % 2
    pos = cut
    while odd:
        prev = buf.rfind(b"\n", 0, pos)
        if len(buf) - max(prev, 0) > max_record_bytes:
            return cut
        if prev < 0:
            return -1           # the open record may close in the next block
        odd ^= buf.count(b'"', prev, pos) % 2
        pos = prev
    return pos


def _emit(spec, data: bytes, row: int, skip_header: bool):
    if skip_header:
        nl = data.find(b"\n")
        if nl < 0:
            return
        data, row = data[nl + 1:], row + 1
    if data:
        yield Chunk(spec, row, data, tuple(spec.names))


def parquet_file(path: str) -> pq.ParquetFile:
    return pq.ParquetFile(fs.open_input(path))


def read_parquet_batches(spec: FileSpec, batch_rows: int = 1 << 18, row_groups: Optional[List[int]] = None,
                         first_row: int = 0):
    row = first_row
    try:
        pf = parquet_file(spec.path)
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=row_groups):
            yield batch, row
            row += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{spec.path}: unreadable Parquet after row {row} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


# ------------------------------------------------------------------ histories
def build_histories(tables: Sequence[pa.Table], max_history: int):
    """Events of some users -> time-ordered, de-duplicated, truncated histories.

    Ties in timestamp keep input order (file, row). Returns the table sorted by
    (user, time, file, row) and a counts dict.
    """
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return formats.empty_events(), {"duplicates_dropped": 0, "events_truncated": 0,
                                        "events_accepted": 0}
    t = pa.concat_tables(tables).combine_chunks()
    user_codes = _codes(t.column("user_id"))
    item_codes = _codes(t.column("item_id"))
    beh_codes = _codes(pc.fill_null(t.column("behavior"), "\x00"))
    ts = t.column("timestamp").to_numpy()
    file_idx = t.column("file_idx").to_numpy()
    row = t.column("row").to_numpy()
    # Input order position: (file, row) -> one sortable int.
    order_key = file_idx.astype(np.int64) * (1 << 40) + row
    # Exact repeats of (user, item, behavior, timestamp): keep the first in input order.
    o = np.lexsort((order_key, beh_codes, item_codes, ts, user_codes))
    same = np.zeros(len(o), dtype=bool)
    same[1:] = ((user_codes[o][1:] == user_codes[o][:-1]) & (ts[o][1:] == ts[o][:-1])
                & (item_codes[o][1:] == item_codes[o][:-1]) & (beh_codes[o][1:] == beh_codes[o][:-1]))
    keep = np.ones(len(o), dtype=bool)
    keep[o[same]] = False
    duplicates = int(same.sum())
    # Sort by user id string order (stable names in the output), then time, then input order.
    user_rank = _rank(t.column("user_id"))
    idx = np.flatnonzero(keep)
    o2 = idx[np.lexsort((order_key[idx], ts[idx], user_rank[idx]))]
    truncated = 0
    if max_history and max_history > 0:
        u = user_rank[o2]
        starts, ends = _runs(u)
        lens = ends - starts
        drop = np.maximum(lens - max_history, 0)
        truncated = int(drop.sum())
        if truncated:
            keep2 = np.ones(len(o2), dtype=bool)
            for s, d in zip(starts[drop > 0], drop[drop > 0]):
                keep2[s:s + d] = False  # oldest first
            o2 = o2[keep2]
    out = t.take(pa.array(o2))
    counts = {"duplicates_dropped": duplicates, "events_truncated": truncated,
              "events_accepted": int(len(idx))}
    return out, counts


def _codes(col) -> np.ndarray:
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    return np.asarray(enc.indices).astype(np.int64)


def _rank(col) -> np.ndarray:
    """Rank of each value in sorted order of distinct values (string order)."""
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    dict_sort = np.asarray(pc.sort_indices(enc.dictionary))
    rank_of_code = np.empty(len(dict_sort), dtype=np.int64)
    rank_of_code[dict_sort] = np.arange(len(dict_sort))
    return rank_of_code[np.asarray(enc.indices)]


def _runs(sorted_codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    if len(sorted_codes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    return np.concatenate([[0], bounds]), np.concatenate([bounds, [len(sorted_codes)]])


def value_counts(col) -> pa.Table:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    vc = pc.value_counts(col)
    return pa.table({"key": vc.field("values"), "count": pc.cast(vc.field("counts"), pa.int64())})


def merge_counts(tables: Sequence[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return pa.table({"key": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    t = pa.concat_tables(tables)
    g = t.group_by("key").aggregate([("count", "sum")])
    return pa.table({"key": g.column("key"), "count": g.column("count_sum")})


# ------------------------------------------------------------------ vocabulary
def build_item_vocab(item_counts: pa.Table, min_count: int) -> pa.Table:
    """Items with count >= min_count get token ids FIRST_ITEM_ID.. in (count desc, id) order."""
    t = item_counts.filter(pc.greater_equal(item_counts.column("count"), min_count))
    t = t.sort_by([("count", "descending"), ("key", "ascending")])
    n = t.num_rows
    return pa.table({
        "item_id": t.column("key"),
        "token_id": pa.array(np.arange(contracts.FIRST_ITEM_ID, contracts.FIRST_ITEM_ID + n, dtype=np.int32)),
        "count": t.column("count"),
    })


def build_behavior_vocab(behavior_counts: pa.Table) -> pa.Table:
    t = behavior_counts.sort_by([("count", "descending"), ("key", "ascending")])
    return pa.table({
        "behavior": t.column("key"),
        "behavior_id": pa.array(np.arange(contracts.FIRST_BEHAVIOR_ID,
                                          contracts.FIRST_BEHAVIOR_ID + t.num_rows, dtype=np.int32)),
        "count": t.column("count"),
    })


def frozen_behavior_vocab(dataset_dir: str, behavior_counts: pa.Table) -> pa.Table:
    """Reuse another dataset's behavior vocabulary: behavior types it lacks map to
    BEHAVIOR_UNKNOWN_ID (counted as oov_behavior_events), never to new ids."""
    v = contracts.open_dataset(dataset_dir).read_vocab_table(contracts.BEHAVIORS_VOCAB)
    if v is None:
        v = build_behavior_vocab(behavior_counts.schema.empty_table())
    idx = pc.index_in(v.column("behavior"), value_set=behavior_counts.column("key"))
    c = (pc.take(behavior_counts.column("count"), idx) if behavior_counts.num_rows
         else pa.nulls(v.num_rows, pa.int64()))
    return pa.table({"behavior": v.column("behavior"), "behavior_id": v.column("behavior_id"),
                     "count": pc.fill_null(c, 0)})


def behavior_vocab_for(behavior_counts: pa.Table, opts: "TokenizeOptions") -> pa.Table:
    if opts.vocab_from:
        return frozen_behavior_vocab(opts.vocab_from, behavior_counts)
    return build_behavior_vocab(behavior_counts)


def frozen_word_ids(dataset_dir: Optional[str]) -> Optional[Dict[str, int]]:
    """The title-word vocabulary of another dataset (word -> id), or None."""
    if not dataset_dir:
        return None
    v = contracts.open_dataset(dataset_dir).read_vocab_table(contracts.WORDS_VOCAB)
    if v is None:
        return {}
    return dict(zip(v.column("word").to_pylist(), v.column("word_id").to_pylist()))


def frozen_vocab(dataset_dir: str, item_counts: pa.Table) -> pa.Table:
    """Reuse another dataset's item vocabulary (same ids -> same vocab hash); counts are this run's."""
    ds = contracts.open_dataset(dataset_dir)
    v = ds.read_items_vocab()
    counts = pc.index_in(v.column("item_id"), value_set=item_counts.column("key"))
    c = pc.take(item_counts.column("count"), counts) if item_counts.num_rows else pa.nulls(v.num_rows, pa.int64())
    return pa.table({"item_id": v.column("item_id"), "token_id": v.column("token_id"),
                     "count": pc.fill_null(c, 0)})


def tokenize_words(titles: Sequence[str]) -> List[List[str]]:
    return [re.findall(r"[0-9a-z]+", (t or "").lower()) for t in titles]


def build_catalog(catalog: Optional[pa.Table], items_vocab: pa.Table, min_word_count: int,
                  max_title_words: int, frozen_words: Optional[Dict[str, int]] = None
                  ) -> Tuple[Optional[pa.Table], Optional[pa.Table]]:
    """(catalog with token ids and title word ids, word vocabulary) or (None, None).
    `frozen_words` (word -> id, from --vocab-from): reuse those ids; other words are OOV."""
    if catalog is None or catalog.num_rows == 0:
        return None, None
    words = tokenize_words(catalog.column("title").to_pylist())
    counts: Dict[str, int] = {}
    for ws in words:
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    if frozen_words is not None:
        word_id = dict(frozen_words)
        kept = sorted(word_id, key=lambda w: word_id[w])
    else:
        kept = sorted((w for w, c in counts.items() if c >= min_word_count), key=lambda w: (-counts[w], w))
        word_id = {w: i + contracts.FIRST_WORD_ID for i, w in enumerate(kept)}
    word_ids = [[word_id.get(w, contracts.WORD_OOV_ID) for w in ws[:max_title_words]] for ws in words]
    idx = pc.index_in(catalog.column("item_id"), value_set=items_vocab.column("item_id"))
    token = pc.fill_null(pc.take(items_vocab.column("token_id"), idx), -1)
    cat = pa.table({
        "item_id": catalog.column("item_id"),
        "token_id": pc.cast(token, pa.int32()),
        "title": catalog.column("title"),
        "categories": catalog.column("categories"),
        "word_ids": pa.array(word_ids, pa.list_(pa.int32())),
    })
    vocab = pa.table({"word": pa.array(kept, pa.string()),
                      "word_id": pa.array([word_id[w] for w in kept], pa.int32()),
                      "count": pa.array([counts.get(w, 0) for w in kept], pa.int64())})
    return cat, vocab


# ------------------------------------------------------------------ splits
@dataclass(frozen=True)
class SplitSpec:
    scheme: str
    time_cut: Optional[int] = None
    finetune_fraction: float = 0.2
    window: int = 10

    @staticmethod
    def from_options(opts: TokenizeOptions) -> "SplitSpec":
        cut = None
        if opts.split == "time":
            parsed = formats.parse_timestamps(pa.array([str(opts.time_cut)]), opts.time_unit)[0][0].as_py()
            if parsed is None:
                raise InputError(f"--time-cut {opts.time_cut!r}: not an epoch number (in --time-unit "
                                 f"{opts.time_unit}) or ISO-8601 within year 1970..9999")
            cut = int(parsed)
        if opts.split == "window" and opts.window < 1:
            raise InputError(f"--window {opts.window}: must be >= 1")
        return SplitSpec(opts.split, cut, opts.finetune_fraction, opts.window)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lens = np.maximum(ends - starts, 0)
    if lens.sum() == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return np.arange(lens.sum(), dtype=np.int64) + offs


def _rows(histories: pa.Table, tokens: np.ndarray, beh: np.ndarray, users: pa.Array,
          starts: np.ndarray, ends: np.ndarray, user_idx: np.ndarray) -> pa.Table:
    """Rows for users `user_idx` holding events [starts, ends) of the sorted histories."""
    s, e = starts[user_idx], ends[user_idx]
    flat = _ranges(s, e)
    lens = (e - s).astype(np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    ts = np.asarray(histories.column("timestamp"))
    vals = np.asarray(pc.fill_null(histories.column("value"), float("nan")))

    def lst(values, typ):
        return pa.ListArray.from_arrays(offsets, pa.array(values, typ))

    return pa.table({
        "user_id": users.take(pa.array(user_idx)),
        "item_ids": lst(tokens[flat], pa.int32()),
        "timestamps": lst(ts[flat], pa.int64()),
        "behavior_ids": lst(beh[flat], pa.int32()),
        "values": lst(vals[flat].astype(np.float32), pa.float32()),
        "length": pa.array(lens, pa.int32()),
    }, schema=contracts.sequence_schema())


def tokenize_histories(histories: pa.Table, items_vocab: pa.Table, behavior_vocab: pa.Table,
                       split: SplitSpec) -> Tuple[Dict[str, pa.Table], dict]:
    """Sorted histories of some users -> sequence rows per split (+ counts)."""
    names = contracts.SPLIT_SCHEMES[split.scheme]
    counts = {"users": 0, "events_in_sequences": 0, "oov_events": 0, "oov_behavior_events": 0,
              **{c: 0 for c in contracts.USER_CATEGORIES}, "events_after_target": 0}
    if histories.num_rows == 0:
        return {n: contracts.sequence_schema().empty_table() for n in names}, counts
    idx = pc.index_in(histories.column("item_id"), value_set=items_vocab.column("item_id"))
    tok = pc.take(items_vocab.column("token_id"), idx)
    tokens = np.asarray(pc.fill_null(tok, contracts.OOV_ID)).astype(np.int32)
    counts["oov_events"] = int(pc.sum(pc.is_null(idx)).as_py() or 0)
    bidx = pc.index_in(histories.column("behavior"), value_set=behavior_vocab.column("behavior"))
    named = pc.and_(pc.is_valid(histories.column("behavior")),
                    pc.greater(pc.utf8_length(pc.fill_null(histories.column("behavior"), "")), 0))
    counts["oov_behavior_events"] = int(pc.sum(pc.and_(named, pc.is_null(bidx))).as_py() or 0)
    beh = np.asarray(pc.fill_null(pc.take(behavior_vocab.column("behavior_id"), bidx),
                                  contracts.BEHAVIOR_UNKNOWN_ID)).astype(np.int32)
    ucodes = _codes(histories.column("user_id"))
    starts, ends = _runs(ucodes)
    users = histories.column("user_id").combine_chunks().take(pa.array(starts))
    n_users = len(starts)
    lens = ends - starts
    counts["users"] = n_users
    counts["events_in_sequences"] = int(lens.sum())
    all_users = np.arange(n_users)
    out: Dict[str, pa.Table] = {}
    if split.scheme == "leave-one-out":
        long_enough = lens >= 3
        counts["users_train_only"] = int((~long_enough).sum())
        train_end = np.where(long_enough, ends - 2, ends)
        out["train"] = _rows(histories, tokens, beh, users, starts, train_end, all_users)
        ev = np.flatnonzero(long_enough)
        out["valid"] = _rows(histories, tokens, beh, users, starts, ends - 1, ev)
        out["test"] = _rows(histories, tokens, beh, users, starts, ends, ev)
    elif split.scheme == "time":
        ts = np.asarray(histories.column("timestamp"))
        before = ts < split.time_cut
        # Events before the cut per user = prefix length (histories are time-sorted).
        n_before = np.add.reduceat(before.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
        has_train = n_before > 0
        out["train"] = _rows(histories, tokens, beh, users, starts, starts + n_before, np.flatnonzero(has_train))
        # Test: history before the cut + the first event at or after it. A user whose events all
        # come after the cut is a test row with an empty history (users_test_only); one whose
        # events all come before it is in train only (users_train_only).
        has_target = n_before < lens
        ev = np.flatnonzero(has_target)
        out["test"] = _rows(histories, tokens, beh, users, starts, starts + n_before + 1, ev)
        counts["users_train_only"] = int((~has_target).sum())
        counts["users_test_only"] = int((~has_train).sum())
        counts["events_after_target"] = int(np.maximum(lens - n_before - 1, 0)[has_target].sum())
    elif split.scheme == "window":
        # Future windows of W behaviors: train = all but the last 2W (what pre-training
        # sees), valid = all but the last W (its own last W are the validation window, never
        # trained on), test = all (the last W are the test window). A user with W behaviors or
        # fewer has no window: the whole history is in train (users_train_only). One with
        # W+1..2W has no behavior outside the two windows: valid and test only (users_eval_only).
        w = split.window
        evaluated = lens > w
        has_train = (lens - 2 * w >= 1) | ~evaluated
        counts["users_train_only"] = int((~evaluated).sum())
        counts["users_eval_only"] = int((~has_train).sum())
        train_end = np.where(evaluated, ends - 2 * w, ends)
        out["train"] = _rows(histories, tokens, beh, users, starts, train_end, np.flatnonzero(has_train))
        out["valid"] = _rows(histories, tokens, beh, users, starts, ends - w, np.flatnonzero(evaluated))
        out["test"] = _rows(histories, tokens, beh, users, starts, ends, np.flatnonzero(evaluated))
    else:
        h = np.array([contracts.stable_user_hash(u) for u in users.to_pylist()])
        fine = h < split.finetune_fraction
        out["pretrain"] = _rows(histories, tokens, beh, users, starts, ends, np.flatnonzero(~fine))
        out["finetune"] = _rows(histories, tokens, beh, users, starts, ends, np.flatnonzero(fine))
    return out, counts


# ------------------------------------------------------------------ writing
join = fs.join


def write_parquet(table: pa.Table, path: str) -> None:
    """Write a Parquet file so that it appears whole (see ptum.fs.writer)."""
    with fs.writer(path) as f:
        pq.write_table(table, f, compression="zstd")


def write_arrow(table: pa.Table, path: str) -> None:
    """Stage a table as an Arrow IPC file (the tokenizer's shuffle through files)."""
    import pyarrow.ipc as ipc

    with fs.writer(path) as f, ipc.new_file(f, table.schema) as w:
        w.write_table(table)


read_parquet = contracts.read_parquet


def read_arrow(path: str) -> pa.Table:
    import pyarrow.ipc as ipc

    with fs.open_input(path) as f:
        return ipc.open_file(f).read_all()


def remove_tree(path: str) -> None:
    fs.remove(path)


def shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}.parquet"


def output_lock(output: str, what: str = "ptum tokenize"):
    """contracts.output_lock, refusing with an InputError (one line at the CLI)."""
    return contracts.output_lock(output, what, InputError)


def reset_output(output: str) -> None:
    """Remove the manifest first (uncommits the old dataset), then old data files."""
    fs.remove(join(output, contracts.MANIFEST))
    for sub in (contracts.SEQUENCES_DIR, contracts.VOCAB_DIR, contracts.DEADLETTER_DIR, contracts.LABELS_DIR,
                ".staging"):
        fs.remove(join(output, sub))
    fs.makedirs(output)


def sum_counts(dicts) -> dict:
    """Add count dicts (nested one level for dead letters by reason)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                sub = out.setdefault(k, {})
                for k2, v2 in v.items():
                    sub[k2] = sub.get(k2, 0) + v2
            else:
                out[k] = out.get(k, 0) + v
    return out


def deadletter_counts(dl: pa.Table) -> dict:
    if dl.num_rows == 0:
        return {"dead_by_reason": {}}
    vc = pc.value_counts(dl.column("reason").combine_chunks())
    return {"dead_by_reason": {k: int(c) for k, c in zip(vc.field("values").to_pylist(),
                                                         vc.field("counts").to_pylist())}}


def make_manifest(opts: TokenizeOptions, counts: dict, files: List[Tuple[str, str, int, int]],
                  items_vocab: pa.Table, behavior_vocab: pa.Table, fingerprints_: List[dict],
                  has_time: bool, runner: str, extras: Dict[str, str]) -> dict:
    """The manifest: counts (with invariants), splits and their files, vocab hash, params."""
    import datetime

    by_reason = {r: 0 for r in contracts.DEADLETTER_REASONS}
    by_reason.update(counts.get("dead_by_reason", {}))
    splits: Dict[str, dict] = {n: {"files": [], "file_rows": [], "rows": 0, "events": 0}
                               for n in contracts.SPLIT_SCHEMES[opts.split]}
    deadletter_files = []
    for kind, name, rows, events in sorted(files):
        if kind == "deadletter":
            deadletter_files.append(name)
            continue
        s = splits[kind]
        s["files"].append(name)
        s["file_rows"].append(int(rows))
        s["rows"] += rows
        s["events"] += events
    extras = dict(extras)
    words = extras.pop(WORDS_KEY, {})
    vhash, vhashes = contracts.dataset_vocab_hash(
        items_vocab.column("item_id").to_pylist(), items_vocab.column("token_id").to_pylist(),
        behavior_vocab.column("behavior").to_pylist(), behavior_vocab.column("behavior_id").to_pylist(),
        list(words), list(words.values()))
    c = {
        "events_read": int(counts.get("events_read", 0)),
        "events_accepted": int(counts.get("events_accepted", 0)),
        "events_dead_lettered": {"total": int(sum(by_reason.values())), "by_reason": by_reason},
        "duplicates_dropped": int(counts.get("duplicates_dropped", 0)),
        "events_truncated": int(counts.get("events_truncated", 0)),
        "events_in_sequences": int(counts.get("events_in_sequences", 0)),
        "events_after_target": int(counts.get("events_after_target", 0)),
        "users": int(counts.get("users", 0)),
        **{c: int(counts.get(c, 0)) for c in contracts.USER_CATEGORIES},
        "items": int(items_vocab.num_rows),
        "items_seen": int(counts.get("items_seen", items_vocab.num_rows)),
        "behaviors": int(behavior_vocab.num_rows),
        "oov_events": int(counts.get("oov_events", 0)),
        "oov_behavior_events": int(counts.get("oov_behavior_events", 0)),
        # ids as written unless --strip-ids (parameters.strip_ids): these had surrounding whitespace
        "ids_with_surrounding_space": int(counts.get("ids_with_surrounding_space", 0)),
    }
    manifest = {
        "format_version": contracts.FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "counts": c,
        "splits": splits,
        "split_scheme": opts.split,
        "deadletter_files": [join(contracts.DEADLETTER_DIR, f) for f in deadletter_files],
        "vocab_hash": vhash,
        "vocab_hashes": vhashes,
        "vocab_frozen_from": opts.vocab_from,
        "has_time": has_time,
        "reserved_item_ids": {"pad": contracts.PAD_ID, "mask": contracts.MASK_ID, "oov": contracts.OOV_ID,
                              "first_item": contracts.FIRST_ITEM_ID},
        "parameters": opts.manifest_params(),
        "inputs": fingerprints_,
        "runner": runner,
        "files": extras,
        "inputs_read": {p: {"events_read": int(n), "dead_lettered": int(counts.get("dead_by_file", {}).get(p, 0))}
                        for p, n in sorted(counts.get("read_by_file", {}).items())},
        # Vocabularies, catalog and labels decide what token ids mean: readers verify them.
        "file_sha256": contracts.file_sha256({rel: join(opts.output, rel) for rel in extras.values()}),
    }
    if c["events_accepted"] == 0 and not opts.allow_empty:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items(), key=lambda x: -x[1]) if n)[:200]
        raise InputError(f"no event was accepted ({c['events_read']} read, "
                         f"{c['events_dead_lettered']['total']} dead-lettered{': ' + reasons if reasons else ''}, "
                         f"{c['duplicates_dropped']} duplicates); nothing was committed (--allow-empty commits "
                         "an empty dataset)")
    problems = contracts.check_invariants(manifest)
    if problems:
        raise AssertionError(f"count invariants violated: {problems}; counts={c}")
    return manifest


# ------------------------------------------------------------------ stage helpers
def read_counts(path: str, read: int, dead: int, events: Optional[pa.Table] = None) -> dict:
    """Counts of one unit of input: records read, also per input file with its dead letters
    (the manifest's `inputs_read`: a gate judges the newest span's files on their own), and
    the events whose ids had surrounding whitespace."""
    meta = (events.schema.metadata or {}) if events is not None else {}
    return {"events_read": read, "read_by_file": {path: read}, "dead_by_file": {path: dead},
            "ids_with_surrounding_space": int(meta.get(formats.SPACED_IDS_KEY, b"0"))}


def parse_input_unit(unit, max_line_bytes: int):
    """A Chunk, a (spec, record batch, first row) tuple or a reader dead-letter table
    -> (events, dead letters, records read)."""
    if isinstance(unit, pa.Table):  # the reader's own dead letter
        return formats.empty_events(), unit, unit.num_rows
    if isinstance(unit, Chunk):
        return formats.parse_chunk(unit, max_line_bytes)
    spec, batch, first_row = unit
    return formats.parse_parquet_batch(spec, batch, first_row)


def read_units(split: Split, opts: TokenizeOptions):
    """A Split -> the units `parse_input_unit` takes; a byte range of a split file ends with
    its RangeLines."""
    spec = split.spec
    if spec.kind == "parquet":
        groups = list(range(split.start, split.end)) if split.end is not None else None
        for batch, first in read_parquet_batches(spec, row_groups=groups, first_row=split.first_row):
            yield (spec, batch, first)
        return
    if split.end is None:
        yield from read_chunks(spec, opts.chunk_bytes, opts.max_line_bytes)
        return
    lines = yield from read_chunks(spec, opts.chunk_bytes, opts.max_line_bytes,
                                   opener=lambda path: LineRange(path, split.start, split.end),
                                   first_row=(split.index << RANGE_BITS) + 1, file_start=split.start == 0)
    yield RangeLines(spec.file_idx, split.index, lines)


def history_stats(histories: pa.Table) -> Tuple[pa.Table, pa.Table]:
    """(item counts, behavior counts) of accepted events (before truncation counts are
    not needed: the vocabulary counts the events that reach the sequences)."""
    beh = pc.fill_null(histories.column("behavior"), "") if histories.num_rows else pa.array([], pa.string())
    bc = value_counts(beh)
    bc = bc.filter(pc.greater(pc.utf8_length(bc.column("key")), 0)) if bc.num_rows else bc
    return value_counts(histories.column("item_id")), bc


def write_bucket(bucket: int, num_shards: int, histories: pa.Table, items_vocab: pa.Table,
                 behavior_vocab: pa.Table, split: SplitSpec, output: str):
    """Tokenize and write one bucket's histories; returns (file records, counts)."""
    rows, counts = tokenize_histories(histories, items_vocab, behavior_vocab, split)
    files = []
    for name, table in rows.items():
        fname = shard_name(name, bucket, num_shards)
        write_parquet(table, join(output, contracts.SEQUENCES_DIR, fname))
        files.append((name, fname, table.num_rows, int(pc.sum(table.column("length")).as_py() or 0)))
    return files, counts


# write_vocab_and_tables hands the word vocabulary to make_manifest (for the vocab hash) under
# this key of its result; make_manifest takes it out before recording the written files.
WORDS_KEY = "__words__"


def write_vocab_and_tables(output: str, items_vocab: pa.Table, behavior_vocab: pa.Table,
                           extra: dict, opts: TokenizeOptions) -> Dict[str, object]:
    """Vocabulary files, the item catalog (title words) and label tables; returns their paths."""
    written = {}
    write_parquet(items_vocab, join(output, contracts.VOCAB_DIR, contracts.ITEMS_VOCAB))
    written["items_vocab"] = join(contracts.VOCAB_DIR, contracts.ITEMS_VOCAB)
    write_parquet(behavior_vocab, join(output, contracts.VOCAB_DIR, contracts.BEHAVIORS_VOCAB))
    written["behaviors_vocab"] = join(contracts.VOCAB_DIR, contracts.BEHAVIORS_VOCAB)
    frozen_words = frozen_word_ids(opts.vocab_from)
    catalog, words = build_catalog(extra.get("catalog"), items_vocab, opts.min_word_count,
                                   opts.max_title_words, frozen_words)
    if words is None and frozen_words:
        # No catalog in this run: the frozen word vocabulary still belongs to the dataset
        # (it is part of the vocab hash the model was trained with).
        words = pa.table({"word": pa.array(list(frozen_words), pa.string()),
                          "word_id": pa.array(list(frozen_words.values()), pa.int32()),
                          "count": pa.array([0] * len(frozen_words), pa.int64())})
        write_parquet(words, join(output, contracts.VOCAB_DIR, contracts.WORDS_VOCAB))
        written["words_vocab"] = join(contracts.VOCAB_DIR, contracts.WORDS_VOCAB)
    if words is not None:
        written[WORDS_KEY] = dict(zip(words.column("word").to_pylist(), words.column("word_id").to_pylist()))
    if catalog is not None:
        write_parquet(catalog, join(output, contracts.VOCAB_DIR, contracts.CATALOG))
        write_parquet(words, join(output, contracts.VOCAB_DIR, contracts.WORDS_VOCAB))
        written["catalog"] = join(contracts.VOCAB_DIR, contracts.CATALOG)
        written["words_vocab"] = join(contracts.VOCAB_DIR, contracts.WORDS_VOCAB)
    if extra.get("labels") is not None:
        write_parquet(extra["labels"], join(output, contracts.LABELS_DIR, "users.parquet"))
        written["labels"] = join(contracts.LABELS_DIR, "users.parquet")
    return written


def items_vocab_for(item_counts: pa.Table, opts: TokenizeOptions) -> pa.Table:
    if opts.vocab_from:
        return frozen_vocab(opts.vocab_from, item_counts)
    return build_item_vocab(item_counts, opts.min_item_count)
