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
    # no C++ compiled at start-up: DeepSpeed's shared-memory all-reduce (inference only) is turned off
    assert "built successfully" not in done.stdout + done.stderr
    for row in (f"| {label} SDAR update", f"| {label} weight gather into the generation copy |", f"| {label} peak GPU"):
        assert row in done.stdout, done.stdout


@pytest.mark.slow
def test_replicate_step_profile_prints_every_part():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.replicate_step",
            "--steps",
            "1",
            "--env-workers",
            "0",
            "--tasks",
            "1",
            "--group",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("| generation_s |", "| env_and_prompts_s |", "| teacher_ref_old_s |", "| update_s |"):
        assert row in done.stdout, done.stdout
    assert "| rollout_over_bare_generation |" in done.stdout


@pytest.mark.slow
def test_step_cost_bench_times_both_arms_on_one_rollout_with_equal_losses():
    """bench/step_cost.py with the tiny model: GRPO and SDAR, before and after, on one rollout; the losses
    of before and after agree (the step-cost work changes what is computed, not what is learnt)."""
    done = subprocess.run(
        [sys.executable, "bench/step_cost.py", "--model", "tiny", "--envs", "searchqa"]
        + ["--tasks", "2", "--group", "2", "--max-turns", "1", "--ablate-layout", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 3 and cells[1] in ("before", "after"):
            rows[(cells[0], cells[1])] = cells
    assert set(rows) == {(a, arm) for a in ("grpo", "sdar") for arm in ("before", "after")}, done.stdout
    for algo in ("grpo", "sdar"):
        before, after = (float(rows[(algo, arm)][-3]) for arm in ("before", "after"))  # the loss column
        assert after == pytest.approx(before, rel=1e-4, abs=1e-6), done.stdout
        assert int(rows[(algo, "after")][10]) < int(rows[(algo, "before")][10])  # tokens computed
    ratios = ("SDAR step, after vs before", "SDAR / GRPO step time", "tokens computed by SDAR", "rows right-padded")
    for ratio in ratios:
        assert ratio in done.stdout, done.stdout


def test_precision_bench_prints_both_precisions_and_the_choice_for_each_model():
    """bench/precision.py on the tiny model: fp32 and bf16 timed side by side, and what --bf16 unset picks."""
    done = subprocess.run(
        [sys.executable, "bench/precision.py", "--models", "tiny", "--rows", "1", "--tokens", "70", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| tiny |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "128" and all(float(c) > 0 for c in cells[2:8])
    assert cells[8].startswith("fp32 (auto")  # narrow: fp32 unless asked, whatever the CPU


def test_allocator_bench_compares_each_set_up_with_glibcs_default():
    """bench/allocator.py on the tiny model: the fixed threshold and malloc_trim each against the default."""
    argv = [sys.executable, "bench/allocator.py", "--models", "tiny", "--tokens", "64", "--steps", "2", "--rounds", "1"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("| tiny |")
    ]
    assert [r[1] for r in rows] == ["fixed", "trim"]
    assert all(float(c) > 0 for r in rows for c in r[2:])


def test_gpu_real_refuses_a_machine_without_cuda_and_says_how_to_check_it():
    done = subprocess.run([sys.executable, "bench/gpu_real.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stdout


@pytest.mark.slow
def test_gpu_real_dry_run_goes_through_the_step_and_the_miniature(tmp_path):
    """The prepared GPU script's stages on the CPU with the tiny warm start: a step's phase row, and the
    miniature's start, its step, its evaluation and its report."""
    done = subprocess.run(
        [sys.executable, "bench/gpu_real.py", "--dry-run", "--stages", "step,miniature", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    (hf,) = [line for line in summary.splitlines() if line.startswith("| hf |")]
    assert "| hf | ok, 1 steps |" in hf and "nan" not in hf, summary
    assert "| vllm |" in summary  # measured in the vLLM venv, or skipped saying so
    assert "## The miniature: ok after" in summary and "| sdar | 1 |" in summary, summary
    assert (tmp_path / "real" / "webshop" / "arms" / "sdar-s0" / "eval.json").exists()  # the held-out end


def test_kv_cache_bench_times_both_caches_under_both_allocators():
    """bench/kv_cache.py on the tiny model: a decode step on transformers' cache and on the growing one,
    in a process with glibc's default malloc and one with the fixed mmap threshold."""
    argv = [sys.executable, "bench/kv_cache.py", "--model", "tiny", "--rows", "2", "--prompt", "40", "--new", "4"]
    done = subprocess.run(argv + ["--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines() if "ms" not in line]
    rows = [r for r in rows if r[0] in ("glibc default", "MALLOC_MMAP_THRESHOLD_=131072")]
    # numbers, not compared: a tiny-model decode step is too short to time
    assert len(rows) == 2 and all(float(c) == float(c) for r in rows for c in r[1:])


def test_update_anatomy_bench_splits_a_forward_and_an_update_by_operator():
    """bench/update_anatomy.py on the tiny model: a no-grad forward and a LoRA update of one micro-batch, timed,
    their attention and matmul shares of profiled time, and eager attention against SDPA."""
    argv = [sys.executable, "bench/update_anatomy.py", "--model", "tiny", "--tokens", "64", "--response", "8"]
    done = subprocess.run([*argv, "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| 64 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    forward, update, ratio = (float(c) for c in cells[1:4])
    assert forward > 0 and update > 0 and ratio > 0
    attention_fwd = float(cells[4].rstrip("%"))
    attention_update, attention_bwd = (float(x.strip("()%")) for x in cells[5].split())
    assert 0 < attention_fwd < 100 and 0 < attention_bwd <= attention_update < 100  # the update's includes its backward
    assert float(cells[6]) > 0 and float(cells[8]) > 0


def test_sampling_bench_times_both_draws_side_by_side():
    """bench/sampling.py on the tiny model: torch.multinomial and the inverse-CDF sampler, each timed for
    one draw and for generate, with their ratios."""
    argv = [sys.executable, "bench/sampling.py", "--model", "tiny", "--prompt", "40", "--new", "4", "--rounds", "1"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| multinomial |", "| inverse CDF |"))]
    assert len(rows) == 2 and all(" ms | " in r and r.rstrip().endswith(" s |") for r in rows), done.stdout
    assert "multinomial / inverse CDF: draw " in done.stdout
