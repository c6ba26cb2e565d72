"""Input spans: a path pattern with {SPAN} (or {YYYY}/{MM}/{DD}) -> the files of the latest
(or a requested) span and the spans before it in a window, as TFX ExampleGen numbers them.

Resolved where the inputs are read (the ingestion component, at run time), so a compiled
Kubeflow pipeline carries the pattern, not the files that existed when it was compiled.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from ptum import fs

_SPAN_PARTS = {"{SPAN}": r"(?P<span>\d+)", "{YYYY}": r"(?P<yyyy>\d{4})", "{MM}": r"(?P<mm>\d{2})",
               "{DD}": r"(?P<dd>\d{2})"}


def _span_of(m: "re.Match") -> int:
    d = m.groupdict()
    if d.get("span") is not None:
        return int(d["span"])
    # Date patterns: the span is the day number since 1970-01-01 (TFX ExampleGen's convention).
    import datetime
    return (datetime.date(int(d["yyyy"]), int(d["mm"]), int(d["dd"])) - datetime.date(1970, 1, 1)).days


def resolve_spans(pattern: str, span: Optional[int], window: int) -> Tuple[int, List[str]]:
    """(span, input paths of the spans in (span - window, span]); see `span_files`."""
    span, by_span = span_files(pattern, span, window)
    return span, [p for s in sorted(by_span) for p in by_span[s]]


def span_files(pattern: str, span: Optional[int], window: int) -> Tuple[int, Dict[int, List[str]]]:
    """(pattern with {SPAN} or {YYYY}/{MM}/{DD}, requested span or latest, window) ->
    (span, input paths of the spans in (span - window, span]). With a date pattern the span
    is the day number since 1970-01-01, so the window counts days. Local or on an object
    store (ptum.fs)."""
    parts = [p for p in _SPAN_PARTS if p in pattern]
    if not parts:
        return 0, {0: [pattern]}
    if "{SPAN}" in parts and len(parts) > 1 or "{SPAN}" not in parts and len(parts) != 3:
        raise ValueError(f"{pattern}: use either {{SPAN}} or all of {{YYYY}}, {{MM}}, {{DD}}")
    regex, wildcard = re.escape(pattern), pattern
    for p in parts:
        regex = regex.replace(re.escape(p), _SPAN_PARTS[p], 1)
        wildcard = wildcard.replace(p, "*")
    regex = re.compile(regex + "$")
    found = {}
    for path in fs.glob(wildcard):
        m = regex.match(path)
        if m:
            found.setdefault(_span_of(m), []).append(path)
    if not found:
        raise FileNotFoundError(f"no input matches {pattern}")
    span = max(found) if span is None else span
    if span not in found:
        raise FileNotFoundError(f"span {span} not found for {pattern} (have {sorted(found)})")
    return span, {s: sorted(found[s]) for s in sorted(found) if span - window < s <= span}


def stopped_spans(report_dir: str) -> Dict[int, str]:
    """{span: report path} for the spans whose newest validation report (the gate's copies in
    `report_dir`, `span-<N>-<stamp>.json`) says they did not pass: their files stay out of later
    windows, so rows the gate refused never reach training through a window."""
    import json

    newest: Dict[int, str] = {}
    if not report_dir or not fs.exists(report_dir):
        return {}
    for path in fs.glob(fs.join(report_dir, "span-*.json")):
        m = re.match(r"span-(\d+)-(\w+)\.json$", path.rsplit("/", 1)[-1])
        if m and (int(m.group(1)) not in newest or path > newest[int(m.group(1))]):
            newest[int(m.group(1))] = path
    out = {}
    for span, path in newest.items():
        try:
            passed = json.loads(fs.read_bytes(path)).get("passed", True)
        except (OSError, ValueError):
            continue
        if not passed:
            out[span] = path
    return out


def window_files(pattern: str, span: Optional[int], window: int,
                 report_dir: str = "") -> Tuple[int, Dict[int, List[str]], List[int]]:
    """(span, {span: files} of the window without the earlier spans the gate stopped, the spans
    left out). The requested span itself is always read (a re-run is judged again)."""
    span, by_span = span_files(pattern, span, window)
    stopped = stopped_spans(report_dir)
    left_out = sorted(s for s in by_span if s in stopped and s != span)
    return span, {s: f for s, f in by_span.items() if s not in left_out}, left_out
