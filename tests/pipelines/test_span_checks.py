"""The gate's checks on their own (ptum.data.checks): the newest span's dead letters are not
diluted by the window, and swapped id columns are told apart from a clean span with recurring
users, on generated logs and on integer ids (where user and item ids share one range)."""
import csv

from ptum.data import contracts, checks
from ptum.data.generate import generate
from ptum.data.ingest import plan, reference

LIMITS = dict(max_deadletter_rate=0.05, min_item_overlap=0.5, max_id_crossing=0.2, max_id_ratio_change=3.0)


def _tokenize(inputs, out, vocab_from=None):
    return reference.run(plan.TokenizeOptions(inputs=list(inputs), format="csv", output=str(out),
                                              vocab_from=vocab_from))


def _swap(src, dst, columns=("user_id", "item_id")):
    with open(src, newline="") as f, open(dst, "w", newline="") as g:
        rows = csv.DictReader(f)
        w = csv.DictWriter(g, fieldnames=rows.fieldnames)
        w.writeheader()
        for r in rows:
            r[columns[0]], r[columns[1]] = r[columns[1]], r[columns[0]]
            w.writerow(r)
    return str(dst)


def _ids(new_manifest, new_dir, blessed_dir):
    c = new_manifest["counts"]
    oov = c["oov_events"] / max(c["events_accepted"], 1)
    return checks.id_measures(contracts.open_dataset(str(new_dir)), contracts.open_dataset(str(blessed_dir)), oov)


def test_the_newest_spans_dead_letters_are_judged_alone(tmp_path):
    spans = []
    for s, bad in ((1, 0.0), (2, 0.0), (3, 0.12)):
        generate(str(tmp_path / f"s{s}"), users=100, items=40, seed=s, mean_events=12, malformed_rate=bad)
        spans.append(str(tmp_path / f"s{s}" / "events.csv"))
    m = _tokenize(spans, tmp_path / "window")
    c = m["counts"]
    window_rate = c["events_dead_lettered"]["total"] / c["events_read"]
    newest = checks.newest_span_counts(m, [spans[-1]])
    assert window_rate < 0.05 < newest["rate"]                      # 4% averaged, 12% on its own
    assert sum(v["events_read"] for v in m["inputs_read"].values()) == c["events_read"]
    problems = checks.judge(newest, None, **LIMITS)
    assert [p["kind"] for p in problems] == ["dead_letters"] and "newest span" in problems[0]["reason"]
    assert checks.judge(checks.newest_span_counts(m, spans[:1]), None, **LIMITS) == []


def test_swapped_columns_are_caught_and_a_clean_span_passes(tmp_path):
    generate(str(tmp_path / "a"), users=150, items=60, seed=1, mean_events=12)
    generate(str(tmp_path / "b"), users=150, items=60, seed=2, mean_events=12)   # the same users again
    blessed = tmp_path / "blessed"
    _tokenize([str(tmp_path / "a" / "events.csv")], blessed)
    clean = _tokenize([str(tmp_path / "b" / "events.csv")], tmp_path / "clean", vocab_from=str(blessed))
    ids = _ids(clean, tmp_path / "clean", blessed)
    assert ids["users_known_as_users"] > 0.9 and checks.judge({"rate": 0.0}, ids, **LIMITS) == []
    # A clean window of two spans (users twice as long as the blessed data's) passes too.
    window = _tokenize([str(tmp_path / s / "events.csv") for s in ("a", "b")], tmp_path / "window",
                       vocab_from=str(blessed))
    assert checks.judge({"rate": 0.0}, _ids(window, tmp_path / "window", blessed), **LIMITS) == []
    swapped_csv = _swap(tmp_path / "b" / "events.csv", tmp_path / "swapped.csv")
    swapped = _tokenize([swapped_csv], tmp_path / "swapped", vocab_from=str(blessed))
    problems = checks.judge({"rate": 0.0}, _ids(swapped, tmp_path / "swapped", blessed), **LIMITS)
    assert {p.get("check") for p in problems} >= {"item_overlap", "user_ids_are_items"}, problems


def test_swapped_integer_ids_are_caught(tmp_path):
    """MovieLens-like: users 1..U, items 1..I (I > U), so every user id is also an item id."""
    import random
    rnd = random.Random(0)

    def write(path, seed):
        rnd.seed(seed)
        with open(path, "w") as f:
            f.write("user_id,item_id,timestamp\n")
            for u in range(1, 201):
                for k in range(15):
                    f.write(f"{u},{min(int(rnd.paretovariate(0.8)), 600)},{1000 + k}\n")
        return str(path)
    blessed = tmp_path / "blessed"
    _tokenize([write(tmp_path / "a.csv", 1)], blessed)
    clean = _tokenize([write(tmp_path / "b.csv", 2)], tmp_path / "clean", vocab_from=str(blessed))
    assert checks.judge({"rate": 0.0}, _ids(clean, tmp_path / "clean", blessed), **LIMITS) == []
    swapped = _tokenize([_swap(tmp_path / "b.csv", tmp_path / "s.csv")], tmp_path / "swapped",
                        vocab_from=str(blessed))
    problems = checks.judge({"rate": 0.0}, _ids(swapped, tmp_path / "swapped", blessed), **LIMITS)
    assert problems and all(p["kind"] == "id_columns" for p in problems), problems


def test_spans_the_gate_stopped_are_left_out_of_later_windows(tmp_path):
    import json

    from ptum.data.spans import window_files

    for s in (1, 2, 3, 4):
        (tmp_path / f"span-{s}").mkdir()
        (tmp_path / f"span-{s}" / "events.csv").write_text("user_id,item_id,timestamp\n")
    reports = tmp_path / "reports"
    reports.mkdir()
    for name, passed in (("span-2-20260101T000000", False), ("span-3-20260101T000000", False),
                         ("span-3-20260102T000000", True)):          # span 3 re-run later and passed
        (reports / f"{name}.json").write_text(json.dumps({"passed": passed}))
    pattern = str(tmp_path / "span-{SPAN}" / "events.csv")
    span, by_span, left_out = window_files(pattern, 4, 3, str(reports))
    assert span == 4 and sorted(by_span) == [3, 4] and left_out == [2]
    # The stopped span itself, asked for again, is read (and judged again).
    assert sorted(window_files(pattern, 2, 2, str(reports))[1]) == [1, 2]
