"""Reading inputs in units of work: whole files, line-aligned byte ranges of big text files
(`LineRange`) and runs of Parquet row groups; chunks of whole lines up to a size; each unit's
records parsed into events and dead letters (`parse_input_unit`), with its counts.
"""
from __future__ import annotations

import logging
import lzma
import zlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ptum import fs
from ptum.data.ingest import formats
from ptum.data.ingest.formats import Chunk, FileSpec, InputError

log = logging.getLogger(__name__)

from ptum.data.ingest.plan import COMPRESSED_SUFFIXES, RANGE_BITS, TokenizeOptions, open_input


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
