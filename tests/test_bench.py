"""The benchmark scripts that CI can run: the GPU check's dry run (the same code path as on a CUDA machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_measures_every_row_on_the_cpu():
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in (
        "| generation |",
        "| GRPO update (fwd + bwd) |",
        "| SDAR update",
        "| SDAR / GRPO step time |",
        "| peak GPU memory |",
    ):
        assert row in done.stdout, done.stdout
