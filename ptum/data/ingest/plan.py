"""What a tokenize run reads and how: its options (`TokenizeOptions`), the input files found
and checked before anything runs (formats, columns, Parquet types, MovieLens layouts, the
item catalog), their fingerprints and the number of output shards.
"""
from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import re
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ptum import fs
from ptum.data import contracts
from ptum.data.ingest import formats
from ptum.data.ingest.formats import Columns, FileSpec, InputError

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


# The file names a folder input reads, per format (a compressed suffix may follow); other files
# in the folder (notes, _SUCCESS markers, ...) are skipped and named. A file or a glob given
# explicitly is read whatever its name.
FORMAT_SUFFIXES = {"csv": (".csv",), "tsv": (".tsv", ".tab"), "jsonl": (".jsonl", ".ndjson", ".json"),
                   "parquet": (".parquet", ".pq"), "sequence-lines": (".txt",)}


def _input_files(pattern: str, fmt: str) -> List[str]:
    """The files one --input names: a file, a glob's matches, or a folder's files of `fmt`."""
    found = expand_paths(pattern)
    folder = not any(c in pattern for c in "*?[") and fs.isdir(pattern)
    if folder and fmt in FORMAT_SUFFIXES:
        suffixes = FORMAT_SUFFIXES[fmt]
        keep = [p for p in found if _strip_compression(p).lower().endswith(suffixes)]
        skipped = [p for p in found if p not in keep]
        if not found:
            raise InputError(f"{pattern}: the folder holds no file")
        if not keep:
            names = ", ".join(os.path.basename(p) for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            raise InputError(f"{pattern}: no {'/'.join(suffixes)} file among its {len(skipped)} file(s) ({names}); "
                             "name the files with a glob to read them anyway")
        if skipped:
            log.warning("%s: skipped %d file(s) not named %s: %s", pattern, len(skipped), "/".join(suffixes),
                        ", ".join(os.path.basename(p) for p in skipped[:10]))
        return keep
    if not found:
        raise InputError(f"{pattern}: no such file (or the glob matched nothing)")
    return found


def _strip_compression(path: str) -> str:
    for suffix in COMPRESSED_SUFFIXES:
        if path.lower().endswith(suffix):
            return path[: -len(suffix)]
    return path


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
        paths.extend(_input_files(pattern, opts.format))
    if opts.format == "movielens":
        return _plan_movielens(opts, paths, extra)
    paths = sorted(set(paths))
    specs = []
    for i, p in enumerate(paths):
        if opts.format in ("csv", "tsv"):
            delim = opts.delimiter or ("," if opts.format == "csv" else "\t")
            names = tuple(opts.names)
            if opts.header:
                first = _first_line(p, opts.encoding)
                if not first.strip():
                    raise InputError(f"{p}: empty file (no header line); leave it out or give --no-header --names")
                names = header_names(first, delim)
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
