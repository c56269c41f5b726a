"""Training curves from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["save_figure", "write_plot"]


def write_plot(metrics_file: Path, out: Path, title: str = "") -> Path | None:
    """One panel per logged curve: held-out success (the evaluations), reward, success, invalid rate,
    loss terms and SDAR's gate statistics, whichever the run has. Steps are integers; values are shown
    as they are (no offset notation), so a 2-step run reads as well as a 150-step one."""
    if not metrics_file.exists():
        return None
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    keys = [
        k
        for k in (
            "eval_success",
            "reward",
            "success",
            "invalid_rate",
            "loss",
            "sft_loss",
            "gate_mean",
            "gap_negative",
            "entropy",
        )
        if any(k in r for r in rows)
    ]
    if not keys:
        return None
    cols = min(4, len(keys))
    fig, axes = plt.subplots(
        math.ceil(len(keys) / cols), cols, figsize=(3.4 * cols, 2.9 * math.ceil(len(keys) / cols)), squeeze=False
    )
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    steps = [r["step"] for r in rows if "step" in r]
    lo, hi = (min(steps), max(steps)) if steps else (0, 1)
    pad = max(0.5, 0.03 * (hi - lo))  # every panel spans the whole run, so a lone point sits at its step
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o" if key == "eval_success" or len(pts) < 20 else "",
            markersize=3,
        )
        ax.set_title("held-out success" if key == "eval_success" else key.replace("_", " "))
        ax.set_xlabel("step")
        ax.set_xlim(lo - pad, hi + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, out)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG (100 dpi) and close a matplotlib figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
