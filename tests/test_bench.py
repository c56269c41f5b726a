"""The benchmark scripts that CI can run: the GPU check's dry run (the same code path as on a CUDA machine) and
the miniature's step profile (one step)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT


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


@pytest.mark.slow
@pytest.mark.parametrize("flags, label", [(["--fsdp"], "FSDP2"), (["--sharded", "zero3"], "ZeRO-3")])
def test_gpu_check_sharded_dry_run_shards_over_two_cpu_processes(flags, label):
    if label == "ZeRO-3":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'sdar[deepspeed]')")
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", *flags, "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{label} over 2 CPU process(es)" in done.stdout, done.stdout + done.stderr[-2000:]
    for row in (f"| {label} SDAR update", f"| {label} weight gather into the generation copy |", f"| {label} peak GPU"):
        assert row in done.stdout, done.stdout


@pytest.mark.slow
def test_replicate_step_profile_prints_every_part():
    done = subprocess.run(
        [sys.executable, "-m", "bench.replicate_step", "--steps", "1", "--env-workers", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("| generation_s |", "| env_and_prompts_s |", "| teacher_ref_old_s |", "| update_s |"):
        assert row in done.stdout, done.stdout
    assert "| rollout_over_bare_generation |" in done.stdout
