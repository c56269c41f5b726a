"""Training curves from metrics.jsonl."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["mean_interval", "save_figure", "write_before_after_plot", "write_plot"]


# two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's 1.96)
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, _T975.get(n - 1, 1.96) * sd / math.sqrt(n)


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
            "eval_return",
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
            marker="o" if key.startswith("eval_") or len(pts) < 20 else "",
            markersize=3,
        )
        held_out = {"eval_success": "held-out success", "eval_return": "held-out score"}
        ax.set_title(held_out.get(key, key.replace("_", " ")))
        ax.set_xlabel("step")
        ax.set_xlim(lo - pad, hi + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, out)


def write_before_after_plot(rows: Sequence[tuple[str, dict[str, Any]]], out: Path, title: str = "") -> Path:
    """Held-out score and success of each (name, evaluation report) side by side: what a demo claims (the
    same goals, before and after), as bars with their values written on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.2))
    names = [name for name, _ in rows]
    for ax, (key, label) in zip(
        axes,
        (("return", "held-out score"), ("success", "held-out success"), ("invalid_rate", "invalid turns")),
        strict=True,
    ):
        values = [float(r[key]) for _, r in rows]
        bars = ax.bar(range(len(values)), values, color=["#9aa9bb"] + ["#2f6db5"] * (len(values) - 1))  # before: grey
        ax.bar_label(bars, labels=[f"{v:.3f}" if key == "return" else f"{v:.2f}" for v in values])
        ax.set_xticks(range(len(values)), names, fontsize=8)
        ax.set_title(label)
        ax.set_ylim(0, max(1e-9, *values) * 1.25)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG (100 dpi) and close a matplotlib figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
