"""Synthetic behavior logs with learnable structure, for demos, tests and benchmarks.

Users have latent interests over item clusters; items have titles whose words
reflect their cluster; sequences drift between neighbouring items of a cluster
(so next-item prediction has signal); time gaps are heavy-tailed; user labels and
impression clicks depend on the latent interests (so fine-tuning has signal).
Deterministic for a seed.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
import numpy as np

BEHAVIORS = ("click", "like", "share", "purchase")
BEHAVIOR_P = (0.70, 0.15, 0.05, 0.10)
AGE_GROUPS = ("<25", "25-34", "35-44", "45+")
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "be", "do", "fa", "gu",
              "hi", "jo", "pe", "si")


@dataclass
class GenerateStats:
    users: int
    items: int
    events: int
    malformed: int
    impressions: int


def _cluster_words(n_clusters: int, words_per_cluster: int, rng) -> list:
    words = []
    for c in range(n_clusters):
        ws = []
        for w in range(words_per_cluster):
            a, b, d = rng.integers(0, len(_SYLLABLES), size=3)
            ws.append(f"{_SYLLABLES[a]}{_SYLLABLES[b]}{_SYLLABLES[d]}{c}{w}")
        words.append(ws)
    return words


def generate(output: str, users: int = 1000, items: int = 500, seed: int = 0,
             malformed_rate: float = 0.0, mean_events: float = 30.0,
             clusters: int = 0, start: int = 1_700_000_000) -> GenerateStats:
    """Write events.csv, items.csv, users.csv and impressions.csv under `output`."""
    if users < 1 or items < 2:
        raise ValueError("need at least 1 user and 2 items")
    if not 0.0 <= malformed_rate < 1.0:
        raise ValueError("--malformed-rate must be in [0, 1)")
    rng = np.random.default_rng(seed)   # one generator, drawn in this order: items, users, events
    os.makedirs(output, exist_ok=True)
    n_clusters = clusters or max(2, min(20, items // 25))
    catalog = _catalog(rng, items, n_clusters)
    # Users: interest mixture over clusters (sparse Dirichlet).
    interests = rng.dirichlet(np.full(n_clusters, 0.15), size=users)
    lengths = np.maximum(3, rng.lognormal(np.log(mean_events), 0.6, size=users).astype(int))
    lengths = np.minimum(lengths, int(mean_events * 8))
    labels = _user_labels(rng, interests, lengths, mean_events)
    events, imp_rows = [], []
    for u in range(users):
        events.append(_user_events(rng, u, lengths[u], interests[u], catalog, start, imp_rows))
    user, item, ts, beh, val = (np.concatenate(col) for col in zip(*events))
    # Logs arrive roughly in time order, not grouped by user.
    order = np.argsort(ts, kind="stable")
    lines = _event_lines(user[order], item[order], ts[order], beh[order], val[order])
    malformed = 0
    if malformed_rate > 0:
        n_bad = int(round(malformed_rate * len(lines)))
        bad_idx = rng.choice(len(lines), size=n_bad, replace=False)
        for j, idx in enumerate(bad_idx):
            lines[idx] = _corrupt(lines[idx], j % 5)
        malformed = n_bad
    _write_files(output, lines, catalog["rows"], labels, imp_rows)
    return GenerateStats(users=users, items=items, events=len(lines), malformed=malformed,
                         impressions=len(imp_rows))


def _catalog(rng, items: int, n_clusters: int) -> dict:
    """Items in topic clusters, a Zipf popularity, and titles from the cluster's words plus
    shared filler words."""
    item_cluster = np.sort(rng.integers(0, n_clusters, size=items))
    # Items of a cluster, in order: neighbours in this order are "related".
    cluster_items = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    cluster_items = [ci if len(ci) else np.array([c % items]) for c, ci in enumerate(cluster_items)]
    popularity = rng.zipf(1.6, size=items).clip(max=1000).astype(float)
    cwords = _cluster_words(n_clusters, 8, rng)
    filler = ["new", "classic", "deluxe", "mini", "pro", "set", "edition", "pack"]
    item_rows = []
    for i in range(items):
        c = item_cluster[i]
        k = rng.integers(2, 5)
        words = list(rng.choice(cwords[c], size=k, replace=False)) + [filler[rng.integers(len(filler))]]
        rng.shuffle(words)
        cats = f"cat{c}|group{c % 4}"
        item_rows.append((f"item_{i:06d}", " ".join(words), cats))
    return {"cluster": item_cluster, "members": cluster_items, "popularity": popularity, "rows": item_rows,
            "clusters": n_clusters, "items": items}


def _user_labels(rng, interests: np.ndarray, lengths: np.ndarray, mean_events: float):
    """Labels correlate with interests: cluster halves lean to a gender; cluster quarters to
    an age group; short, bursty histories to churn."""
    users, n_clusters = interests.shape
    female_score = interests[:, : n_clusters // 2].sum(axis=1)
    p_female = 1.0 / (1.0 + np.exp(-12.0 * (female_score - 0.5)))
    gender = np.where(rng.random(users) < p_female, "F", "M")
    age_logits = np.stack([interests[:, np.arange(n_clusters) % 4 == g].sum(axis=1)
                           for g in range(4)], axis=1) * 8.0
    age_p = np.exp(age_logits) / np.exp(age_logits).sum(axis=1, keepdims=True)
    age_group = np.array([AGE_GROUPS[rng.choice(4, p=p)] for p in age_p])
    churn = (rng.random(users) < 1 / (1 + np.exp((lengths - mean_events) / (mean_events / 3)))).astype(int)
    return gender, age_group, churn


def _user_events(rng, u: int, n: int, interest: np.ndarray, catalog: dict, start: int, imp_rows: list):
    """One user's n events (user, item, time, behavior, value columns): sticky topics, walks
    between related items; and the impressions shown after the history (appended to imp_rows)."""
    n_clusters, cluster_items, popularity = catalog["clusters"], catalog["members"], catalog["popularity"]
    cl = rng.choice(n_clusters, size=n, p=interest)
    # Sticky clusters: a user stays on a topic for a while.
    stay = rng.random(n) < 0.6
    for t in range(1, n):
        if stay[t]:
            cl[t] = cl[t - 1]
    seq = np.empty(n, dtype=np.int64)
    pos = None
    for t in range(n):
        members = cluster_items[cl[t]]
        if pos is not None and t > 0 and cl[t] == cl[t - 1] and rng.random() < 0.7:
            step = int(rng.choice([-2, -1, 1, 1, 2, 3]))
            pos = (pos + step) % len(members)
        else:
            w = popularity[members]
            pos = int(rng.choice(len(members), p=w / w.sum()))
        seq[t] = members[pos]
    gaps = rng.lognormal(np.log(3600.0), 2.0, size=n).astype(np.int64) + 1
    times = start + int(rng.integers(0, 86400 * 60)) + np.cumsum(gaps)
    beh = rng.choice(len(BEHAVIORS), size=n, p=BEHAVIOR_P)
    val = np.clip(np.round(3 + 1.5 * rng.standard_normal(n)), 1, 5)
    # Impressions: candidates shown after the history; clicks follow interests.
    for _ in range(int(rng.integers(2, 7))):
        cand = int(rng.integers(catalog["items"]))
        affinity = interest[catalog["cluster"][cand]]
        p_click = 1 / (1 + np.exp(-(8 * affinity - 2.5)))
        imp_rows.append((f"user_{u:07d}", catalog["rows"][cand][0], int(times[-1]) + int(rng.integers(60, 86400)),
                         int(rng.random() < p_click)))
    return np.full(n, u), seq, times, beh, val


def _write_files(output: str, lines: list, item_rows: list, labels, imp_rows: list) -> None:
    gender, age_group, churn = labels
    with open(os.path.join(output, "events.csv"), "wb") as f:
        f.write(b"user_id,item_id,timestamp,behavior,value\n")
        f.write(b"\n".join(lines))
        f.write(b"\n")
    with open(os.path.join(output, "items.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "categories"])
        w.writerows(item_rows)
    with open(os.path.join(output, "users.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "gender", "age_group", "churn"])
        for u in range(len(gender)):
            w.writerow([f"user_{u:07d}", gender[u], age_group[u], churn[u]])
    with open(os.path.join(output, "impressions.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp", "clicked"])
        w.writerows(imp_rows)


def _event_lines(user, item, ts, beh, val) -> list:
    """CSV lines (bytes) for events, built column-wise for speed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    u = pc.binary_join_element_wise(pa.array(["user_"] * len(user)),
                                    pc.utf8_lpad(pa.array(user.astype(str)), 7, "0"), "")
    i = pc.binary_join_element_wise(pa.array(["item_"] * len(item)),
                                    pc.utf8_lpad(pa.array(item.astype(str)), 6, "0"), "")
    b = pa.array(np.array(BEHAVIORS)[beh])
    line = pc.binary_join_element_wise(u, i, pa.array(ts.astype(str)), b,
                                       pa.array(val.astype(int).astype(str)), ",")
    return [s.encode("utf-8") for s in line.to_pylist()]


def _corrupt(line: bytes, kind: int) -> bytes:
    if kind == 0:
        return line + b",extra"                          # wrong column count
    parts = line.split(b",")
    if kind == 1:
        parts[2] = b"not-a-time"                          # unparsable timestamp
    elif kind == 2:
        parts[0] = b""                                    # empty user id
    elif kind == 3:
        parts[1] = b"\xff\xfe" + parts[1]                 # undecodable bytes
    else:
        parts[1] = parts[1] + b"\x00"                     # NUL byte
    return b",".join(parts)
