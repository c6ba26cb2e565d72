"""Raw behavior-log formats -> Arrow event tables + dead letters.

Pure pyarrow/numpy (no Beam): the Beam job and the pyarrow reference implementation
both call these functions, so they compute exactly the same transform.

Unit of work: a *chunk* = whole lines of one file (bytes) with the 1-based line
number of its first line. A chunk parses into an events table with the columns of
`EVENT_SCHEMA` and a dead-letter table (`ptum.data.contracts.deadletter_schema()`).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ptum.data import contracts

FORMATS = ("csv", "tsv", "jsonl", "parquet", "movielens", "sequence-lines")

EVENT_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("timestamp", pa.int64()),
    ("behavior", pa.string()),
    ("value", pa.float64()),
    ("file_idx", pa.int32()),
    ("row", pa.int64()),
])

_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ",
                "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d")
_NUMBER = r"^\s*-?\d+(\.\d*)?([eE][-+]?\d+)?\s*$"
# Numeric timestamps are in this unit (the tokenizer's --time-unit); stored as epoch seconds.
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Accepted range of a timestamp in seconds: the epoch up to the end of year 9999.
MAX_EPOCH_SECONDS = 253_402_300_799
UTF8_BOM = b"\xef\xbb\xbf"
RAW_PREVIEW_BYTES = 1024


@dataclass(frozen=True)
class Columns:
    """Where the event fields are in a delimited / JSON / Parquet record."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    behavior: Optional[str] = "behavior"
    value: Optional[str] = "value"


@dataclass(frozen=True)
class FileSpec:
    """One input file: its position in input order and how to read it."""

    path: str
    file_idx: int
    kind: str                   # delimited | jsonl | parquet | sequence-lines
    delimiter: str = ","
    header: bool = True
    names: Tuple[str, ...] = ()  # column names when the file has no header
    encoding: str = "utf-8"
    default_behavior: Optional[str] = None
    columns: Columns = field(default_factory=Columns)
    time_unit: str = "s"
    allow_truncated: bool = False
    strip_ids: bool = False     # trim surrounding whitespace from user/item ids (default: ids as written)


# Schema metadata key of a parsed events table: how many of its rows had a user or item id with
# surrounding whitespace (kept as written, or trimmed with strip_ids); the manifest counts them.
SPACED_IDS_KEY = b"ids_with_surrounding_space"


@dataclass
class Chunk:
    spec: FileSpec
    first_row: int
    data: bytes
    names: Tuple[str, ...]      # column names resolved from the header


class InputError(Exception):
    """Input that cannot be read at all (reported before any work starts)."""


def empty_events() -> pa.Table:
    return EVENT_SCHEMA.empty_table()


def deadletters(spec: FileSpec, rows, fields, reasons, raws) -> pa.Table:
    n = len(rows)
    return pa.table({
        "file": pa.array([spec.path] * n, pa.string()),
        "row": pa.array(rows, pa.int64()),
        "field": pa.array(fields, pa.string()),
        "reason": pa.array(reasons, pa.string()),
        "raw": pa.array([bytes(r[:RAW_PREVIEW_BYTES]) for r in raws], pa.binary()),
    }, schema=contracts.deadletter_schema())


def parse_timestamps(col: pa.Array, unit: str = "s") -> Tuple[pa.Array, np.ndarray]:
    """Epoch numbers in `unit` (int or float) or ISO-8601 strings -> int64 epoch seconds.

    Returns (seconds, null where unparsable or out of range; out_of_range mask): a value
    before the epoch or past year 9999 is out of range (never wrapped into int64)."""
    if unit not in TIME_UNITS:
        raise InputError(f"unknown time unit {unit!r}; choose one of {', '.join(TIME_UNITS)}")
    col = pc.utf8_trim_whitespace(col)
    numeric = pc.fill_null(pc.match_substring_regex(col, _NUMBER), False)
    num = pc.cast(pc.if_else(numeric, col, "0"), pa.float64())
    secs = pc.divide(num, float(TIME_UNITS[unit]))
    numeric_np = numeric.to_numpy(zero_copy_only=False)
    secs_np = secs.to_numpy(zero_copy_only=False)
    out_of_range = numeric_np & ~((secs_np >= 0) & (secs_np <= MAX_EPOCH_SECONDS))
    ok = numeric_np & ~out_of_range
    whole = np.zeros(len(secs_np), np.int64)
    if ok.any():
        # Exact integer arithmetic for integral values (ns epochs exceed float precision).
        is_int = ok & pc.fill_null(pc.match_substring_regex(col, r"^-?\d{1,18}$"), False).to_numpy(
            zero_copy_only=False)
        exact = pc.cast(pc.if_else(pa.array(is_int), col, "0"), pa.int64()).to_numpy(zero_copy_only=False)
        exact_int = exact // TIME_UNITS[unit]
        floor = np.floor(np.where(ok, secs_np, 0)).astype(np.int64)
        whole = np.where(ok & is_int, exact_int, floor)
    out = pa.array(whole, pa.int64(), mask=~ok)
    rest = pc.and_(pc.invert(numeric), pc.is_valid(col))
    if pc.any(rest).as_py():
        # Fractional seconds are dropped before strptime (it does not parse them).
        stripped = pc.replace_substring_regex(col, r"\.\d+", "")
        for fmt in _ISO_FORMATS:
            parsed = pc.strptime(stripped, format=fmt, unit="s", error_is_null=True)
            iso = pc.cast(pc.cast(parsed, pa.int64()), pa.int64())
            out = pc.coalesce(out, pc.if_else(rest, iso, None))
        iso_np = pc.fill_null(out, 0).to_numpy(zero_copy_only=False)
        bad_iso = (~numeric_np) & pc.is_valid(out).to_numpy(zero_copy_only=False) & (
            (iso_np < 0) | (iso_np > MAX_EPOCH_SECONDS))
        if bad_iso.any():
            out_of_range = out_of_range | bad_iso
            out = pc.if_else(pa.array(bad_iso), pa.scalar(None, pa.int64()), out)
    return out, out_of_range


def bucket_of_users(users: pa.Array, num_buckets: int) -> np.ndarray:
    """Stable bucket per event by user id (crc32 of each distinct user once)."""
    enc = pc.dictionary_encode(users)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    codes = np.array([zlib.crc32(u.encode("utf-8")) % num_buckets
                      for u in enc.dictionary.to_pylist()], dtype=np.int64)
    return codes[enc.indices.to_numpy(zero_copy_only=False)]


def split_by_bucket(events: pa.Table, num_buckets: int) -> List[Tuple[int, pa.Table]]:
    if events.num_rows == 0:
        return []
    buckets = bucket_of_users(events.column("user_id").combine_chunks(), num_buckets)
    order = np.argsort(buckets, kind="stable")
    sorted_b = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_b)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(order)]])
    taken = events.take(pa.array(order))
    return [(int(sorted_b[s]), taken.slice(s, e - s)) for s, e in zip(starts, ends)]


# ---------------------------------------------------------------- line hygiene
def clean_lines(chunk: Chunk, max_line_bytes: int):
    """Split a chunk into decoded lines; dead-letter undecodable / NUL / over-long lines.

    Returns (lines: pa.StringArray, rows: np.ndarray, deadletter table, lines_read).
    Blank lines are not records and are not counted.
    """
    spec = chunk.spec
    data = chunk.data
    bad_rows, bad_reasons, bad_raw = [], [], []
    text = None
    if b"\x00" not in data:
        try:
            text = data.decode(spec.encoding)
        except UnicodeDecodeError:
            text = None
    if text is not None:
        lines = pa.array([text]) if text else pa.array([""])
        lines = pc.split_pattern(lines, "\n").flatten()
        rows = np.arange(chunk.first_row, chunk.first_row + len(lines), dtype=np.int64)
    else:
        keep, keep_rows = [], []
        for i, raw in enumerate(data.split(b"\n")):
            row = chunk.first_row + i
            if b"\x00" in raw:
                bad_rows.append(row), bad_reasons.append("nul_byte"), bad_raw.append(raw)
                continue
            try:
                keep.append(raw.decode(spec.encoding))
                keep_rows.append(row)
            except UnicodeDecodeError:
                bad_rows.append(row), bad_reasons.append("undecodable_bytes"), bad_raw.append(raw)
        lines = pa.array(keep, pa.string())
        rows = np.array(keep_rows, dtype=np.int64)
    lines = pc.utf8_rtrim(lines, "\r")
    if spec.kind == "delimited" and len(lines):
        lines, rows = merge_quoted_lines(lines, rows, max_line_bytes)
    nonblank = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(lines)), 0)
    mask = nonblank.to_numpy(zero_copy_only=False)
    lines = lines.filter(nonblank)
    rows = rows[mask]
    too_long = pc.greater(pc.binary_length(lines), max_line_bytes).to_numpy(zero_copy_only=False)
    if too_long.any():
        for i in np.flatnonzero(too_long):
            bad_rows.append(int(rows[i])), bad_reasons.append("line_too_long")
            bad_raw.append(lines[int(i)].as_py().encode("utf-8"))
        lines = lines.filter(pa.array(~too_long))
        rows = rows[~too_long]
    dl = deadletters(spec, bad_rows, [None] * len(bad_rows), bad_reasons, bad_raw)
    return lines, rows, dl, len(lines) + len(bad_rows)


def merge_quoted_lines(lines: pa.Array, rows: np.ndarray, max_bytes: int) -> Tuple[pa.Array, np.ndarray]:
    """Join lines whose CSV quotes are open (an odd number of '"') with the following lines up
    to the one that closes them: a newline inside a quoted field stays in its record, which
    keeps the row number of its first line. A quote that never closes within `max_bytes`
    is a stray: that line stays alone (and fails on its own)."""
    odd = (pc.count_substring(lines, '"').to_numpy(zero_copy_only=False) % 2).astype(bool)
    if not odd.any():
        return lines, rows
    py = lines.to_pylist()
    out, out_rows, i, n = [], [], 0, len(py)
    while i < n:
        if odd[i]:
            j, size = i + 1, len(py[i])
            while j < n and not odd[j] and size <= max_bytes:
                size += len(py[j]) + 1
                j += 1
            if j < n and size + len(py[j]) < max_bytes:
                out.append("\n".join(py[i:j + 1]))
                out_rows.append(rows[i])
                i = j + 1
                continue
        out.append(py[i])
        out_rows.append(rows[i])
        i += 1
    return pa.array(out, pa.string()), np.asarray(out_rows, np.int64)


# ---------------------------------------------------------------- validation
def validate_events(spec: FileSpec, user, item, ts_raw, behavior, value_raw, rows: np.ndarray,
                    raw_lines: Optional[pa.Array]) -> Tuple[pa.Table, pa.Table]:
    """Columns of strings -> (events, dead letters), checking each field vectorised."""
    n = len(user)
    user, item = pc.fill_null(user, ""), pc.fill_null(item, "")
    user_t, item_t = pc.utf8_trim_whitespace(user), pc.utf8_trim_whitespace(item)
    spaced = pc.or_(pc.not_equal(user, user_t), pc.not_equal(item, item_t))
    if spec.strip_ids:
        user, item = user_t, item_t
    if ts_raw is not None:
        ts, ts_range = parse_timestamps(ts_raw, spec.time_unit)
    else:
        ts, ts_range = pa.array(np.zeros(n, np.int64)), np.zeros(n, bool)
    if value_raw is not None:
        value_raw = pc.utf8_trim_whitespace(value_raw)
        has_value = pc.and_(pc.is_valid(value_raw), pc.greater(pc.utf8_length(pc.fill_null(value_raw, "")), 0))
        value_ok = pc.or_(pc.invert(has_value), pc.match_substring_regex(pc.fill_null(value_raw, ""), _NUMBER))
        value = pc.if_else(pc.and_(has_value, value_ok),
                           pc.cast(pc.if_else(pc.and_(has_value, value_ok), value_raw, "0"), pa.float64()),
                           None)
    else:
        value_ok = pa.array(np.ones(n, bool))
        value = pa.nulls(n, pa.float64())
    checks = [   # an id of whitespace only is empty either way
        ("empty_user_id", spec.columns.user, pc.equal(pc.utf8_length(user_t), 0)),
        ("empty_item_id", spec.columns.item, pc.equal(pc.utf8_length(item_t), 0)),
        ("timestamp_out_of_range", spec.columns.time, pa.array(ts_range)),
        ("unparsable_timestamp", spec.columns.time, pc.is_null(ts)),
        ("unparsable_value", spec.columns.value, pc.invert(value_ok)),
    ]
    bad = np.zeros(n, dtype=bool)
    dl_rows, dl_fields, dl_reasons, dl_raw = [], [], [], []
    for reason, fname, mask in checks:
        m = mask.to_numpy(zero_copy_only=False) & ~bad
        if m.any():
            for i in np.flatnonzero(m):
                dl_rows.append(int(rows[i])), dl_fields.append(fname), dl_reasons.append(reason)
                dl_raw.append(_raw_of(raw_lines, i, user, item, ts_raw))
            bad |= m
    if behavior is None:
        behavior = pa.array([spec.default_behavior] * n, pa.string())
    else:
        behavior = pc.utf8_trim_whitespace(behavior)
        behavior = pc.if_else(pc.equal(pc.utf8_length(pc.fill_null(behavior, "")), 0), None, behavior)
    events = pa.table({
        "user_id": user, "item_id": item, "timestamp": ts, "behavior": behavior, "value": value,
        "file_idx": pa.array(np.full(n, spec.file_idx, np.int32)),
        "row": pa.array(rows, pa.int64()),
    }, schema=EVENT_SCHEMA)
    n_spaced = int((spaced.to_numpy(zero_copy_only=False) & ~bad).sum()) if n else 0
    if bad.any():
        events = events.filter(pa.array(~bad))
    if n_spaced:
        events = events.replace_schema_metadata({SPACED_IDS_KEY: str(n_spaced).encode()})
    return events, deadletters(spec, dl_rows, dl_fields, dl_reasons, dl_raw)


def _raw_of(raw_lines, i, user, item, ts_raw) -> bytes:
    if raw_lines is not None:
        return str(raw_lines[int(i)].as_py()).encode("utf-8")
    parts = [user[int(i)].as_py(), item[int(i)].as_py(),
             ts_raw[int(i)].as_py() if ts_raw is not None else None]
    return json.dumps(parts, default=str).encode("utf-8")


# ---------------------------------------------------------------- per format
def parse_delimited(chunk: Chunk, max_line_bytes: int):
    spec = chunk.spec
    lines, rows, dl0, read = clean_lines(chunk, max_line_bytes)
    names = chunk.names
    ncols = len(names)
    quoted = pc.match_substring(lines, '"').to_numpy(zero_copy_only=False)
    if quoted.any():
        fields_list = _split_quoted(lines, spec.delimiter, quoted)
    else:
        fields_list = pc.split_pattern(lines, spec.delimiter)
    counts = pc.list_value_length(fields_list).to_numpy(zero_copy_only=False)
    wrong = counts != ncols
    dls = [dl0]
    if wrong.any():
        idx = np.flatnonzero(wrong)
        dls.append(deadletters(spec, rows[idx].tolist(), [None] * len(idx),
                               ["wrong_column_count"] * len(idx),
                               [lines[int(i)].as_py().encode("utf-8") for i in idx]))
        keep = pa.array(~wrong)
        fields_list, lines, rows = fields_list.filter(keep), lines.filter(keep), rows[~wrong]

    def col(name):
        if name is None or name not in names:
            return None
        return pc.list_element(fields_list, names.index(name)) if len(lines) else pa.array([], pa.string())

    events, dl = validate_events(spec, col(spec.columns.user), col(spec.columns.item),
                                 col(spec.columns.time), col(spec.columns.behavior),
                                 col(spec.columns.value), rows, lines)
    dls.append(dl)
    return events, pa.concat_tables(dls), read


def _split_quoted(lines: pa.Array, delimiter: str, quoted: np.ndarray) -> pa.Array:
    """Split lines, honouring CSV quoting where a line has quotes (the rare slow path)."""
    import csv

    plain = pc.split_pattern(lines, delimiter).to_pylist()
    for i in np.flatnonzero(quoted):
        plain[i] = next(csv.reader([lines[int(i)].as_py()], delimiter=delimiter))
    return pa.array(plain, pa.list_(pa.string()))


def parse_jsonl(chunk: Chunk, max_line_bytes: int):
    spec = chunk.spec
    lines, rows, dl0, read = clean_lines(chunk, max_line_bytes)
    c = spec.columns
    cols: Dict[str, list] = {"user": [], "item": [], "time": [], "behavior": [], "value": []}
    keep_rows, bad_rows, bad_raw, keep_lines = [], [], [], []
    for line, row in zip(lines.to_pylist(), rows.tolist()):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            bad_rows.append(row), bad_raw.append(line.encode("utf-8"))
            continue
        for key, name in (("user", c.user), ("item", c.item), ("time", c.time),
                          ("behavior", c.behavior), ("value", c.value)):
            v = rec.get(name) if name else None
            cols[key].append(None if v is None else str(v))
        keep_rows.append(row)
        keep_lines.append(line)
    arr = {k: pa.array(v, pa.string()) for k, v in cols.items()}
    events, dl = validate_events(spec, arr["user"], arr["item"], arr["time"],
                                 arr["behavior"] if c.behavior else None,
                                 arr["value"] if c.value else None,
                                 np.array(keep_rows, np.int64), pa.array(keep_lines, pa.string()))
    bad = deadletters(spec, bad_rows, [None] * len(bad_rows), ["malformed_json"] * len(bad_rows), bad_raw)
    return events, pa.concat_tables([dl0, bad, dl]), read


def parse_sequence_lines(chunk: Chunk, max_line_bytes: int):
    """S3-Rec style `user item item ...`: one event per item, ordinal timestamps."""
    spec = chunk.spec
    lines, rows, dl0, _ = clean_lines(chunk, max_line_bytes)
    tokens = pc.split_pattern_regex(pc.utf8_trim_whitespace(lines), r"\s+")
    lens = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    no_items = lens < 2
    dls = [dl0]
    if no_items.any():
        idx = np.flatnonzero(no_items)
        dls.append(deadletters(spec, rows[idx].tolist(), [spec.columns.item] * len(idx),
                               ["empty_item_id"] * len(idx),
                               [lines[int(i)].as_py().encode("utf-8") for i in idx]))
        keep = pa.array(~no_items)
        tokens, lines, rows, lens = tokens.filter(keep), lines.filter(keep), rows[~no_items], lens[~no_items]
    n_items = lens - 1
    users = pc.list_element(tokens, 0) if len(lines) else pa.array([], pa.string())
    flat = tokens.flatten()
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    # Every token but the first of each line is an item.
    is_item = np.ones(len(flat), dtype=bool)
    is_item[starts] = False
    items = flat.filter(pa.array(is_item))
    user_rep = np.repeat(np.arange(len(lines)), n_items)
    ordinal = np.arange(len(items), dtype=np.int64) - np.repeat(np.cumsum(n_items) - n_items, n_items)
    n = len(items)
    events = pa.table({
        "user_id": users.take(pa.array(user_rep, pa.int64())) if n else pa.array([], pa.string()),
        "item_id": items,
        "timestamp": pa.array(ordinal, pa.int64()),
        "behavior": pa.array([spec.default_behavior] * n, pa.string()),
        "value": pa.nulls(n, pa.float64()),
        "file_idx": pa.array(np.full(n, spec.file_idx, np.int32)),
        # Row = line number; ties in time never happen (ordinals), so order is exact.
        "row": pa.array(rows[user_rep] if n else np.zeros(0, np.int64), pa.int64()),
    }, schema=EVENT_SCHEMA)
    dl = pa.concat_tables(dls)
    # One event read per item, plus one per line that had none or was dead-lettered.
    read = n + dl.num_rows
    return events, dl, read


def parse_parquet_batch(spec: FileSpec, batch: pa.RecordBatch, first_row: int):
    c = spec.columns
    names = batch.schema.names

    def col(name):
        if name is None or name not in names:
            return None
        return pc.cast(batch.column(names.index(name)), pa.string())

    rows = np.arange(first_row, first_row + batch.num_rows, dtype=np.int64)
    events, dl = validate_events(spec, col(c.user), col(c.item), col(c.time), col(c.behavior),
                                 col(c.value), rows, None)
    return events, dl, batch.num_rows


def parse_chunk(chunk: Chunk, max_line_bytes: int):
    """Dispatch on the file kind. Returns (events, dead letters, records read)."""
    kind = chunk.spec.kind
    if kind == "delimited":
        return parse_delimited(chunk, max_line_bytes)
    if kind == "jsonl":
        return parse_jsonl(chunk, max_line_bytes)
    if kind == "sequence-lines":
        return parse_sequence_lines(chunk, max_line_bytes)
    raise ValueError(f"unknown file kind {kind!r}")
