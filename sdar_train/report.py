"""Training curves from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_plot"]


def write_plot(metrics_file: Path, out: Path, title: str = "") -> Path | None:
    """reward / success / invalid rate / loss (and SDAR's gate statistics when present) per step."""
    if not metrics_file.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    keys = [k for k in ("reward", "success", "eval_success", "invalid_rate", "loss", "gate_mean", "gap_negative", "entropy", "sft_loss")
            if any(k in r for r in rows)]  # fmt: skip
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
