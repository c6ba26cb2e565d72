"""Shared parts of every benchmark result: the stack, the machine, how to reproduce it."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def stack() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    from importlib import metadata
    for pkg in ("tfx", "tensorflow", "keras", "apache-beam", "pyarrow", "numpy", "jax"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out["name"] = "legacy" if out.get("tfx", "").startswith("1.16") else "modern" if "tfx" in out else "custom"
    return out


def machine() -> Dict[str, object]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = None
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": gpu, "platform": platform.platform()}


def envelope(command: str) -> dict:
    return {"stack": stack(), "machine": machine(), "command": command,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def markdown_table(columns: Sequence[str], rows: List[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_result(name: str, result: dict, columns: Sequence[str], rows: List[dict]) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    write_text(os.path.join(RESULTS, f"{name}.json"), json.dumps(result, indent=2, sort_keys=True))
    st, m = result["stack"], result["machine"]
    md = [f"# {name}", "", f"- stack: {st.get('name')} ({', '.join(f'{k} {v}' for k, v in st.items() if k != 'name')})",
          f"- machine: {m['cores']} cores, {m['cpu']}" + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
          f"- command: `{result['command']}`", f"- created: {result['created']}", "",
          markdown_table(columns, rows), ""]
    for key in ("growth", "goal", "notes"):
        if key in result:
            md.append(f"- {key}: {json.dumps(result[key])}")
    write_text(os.path.join(RESULTS, f"{name}.md"), "\n".join(md) + "\n")
    print(f"wrote {RESULTS}/{name}.json and .md", file=sys.stderr)


def mean_sd(rows: Sequence[dict], keys: Sequence[str]) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Mean and (population) standard deviation of each key over runs (seeds)."""
    import numpy as np

    return ({k: float(np.mean([r[k] for r in rows])) for k in keys},
            {k: float(np.std([r[k] for r in rows])) for k in keys})


def write_text(path: str, text: str) -> None:
    """Write a file atomically: a killed benchmark leaves the previous result whole, never half of one."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic(path, write)


def save_figure(fig, path: str) -> None:
    """A matplotlib figure as PNG, atomically (as write_text)."""
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _atomic(path: str, write) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    """Write JSON atomically (a benchmark's intermediate results survive a kill whole or not at all)."""
    write_text(path, json.dumps(obj, indent=1))


def ptum_curve(model_dir: str) -> List[dict]:
    """Our validation curve from a model folder's history.json: `seconds` is the wall time
    after that epoch's validation (training + every validation so far)."""
    with open(os.path.join(model_dir, "history.json")) as f:
        history = json.load(f)
    return [{"epoch": h["epoch"], "seconds": round(h["seconds"] + h.get("valid_seconds", 0.0), 2),
             "valid_ndcg@10": h.get("valid_ndcg@10"), "loss": h["loss"]} for h in history]


def plot_curves(name: str, curves: Dict[str, List[dict]], x: str, xlabel: str, title: str,
                target: Optional[float] = None) -> None:
    """Validation NDCG@10 curves (one line per label, x = "epoch" or "seconds") -> <name>.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, curve in curves.items():
        pts = [(e[x], e["valid_ndcg@10"]) for e in curve if e.get("valid_ndcg@10") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("valid NDCG@10 (full ranking, history filtered)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_plot(fig, name)


def save_plot(fig, name: str) -> None:
    """Finish a matplotlib figure and write it beside the results as <name>.png."""
    fig.tight_layout()
    save_figure(fig, os.path.join(RESULTS, f"{name}.png"))
