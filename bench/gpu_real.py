"""The real model on a GPU, one prepared run (issue 29): SmolLM2-135M-Instruct's WebShop warm start (the
packaged LoRA adapter) through the real-model SDAR step with HF generation and with vLLM, ``make gpu-check``'s
single-GPU check, and as many steps of the real-model miniature (GRPO and SDAR from the warm start) as fit in
``--minutes``. Every stage is a command a user can type; each is logged, bounded by a wall-clock limit, and a
stage that fails is reported without stopping the next. The tables land in ``OUT/summary.md``.

    make gpu-real                                    # = python bench/gpu_real.py, on a CUDA machine after make setup
    python bench/gpu_real.py --minutes 10 --out runs/gpu-real
    python bench/gpu_real.py --dry-run               # the same stages on the CPU: the tiny warm start, 1 step each

Stages:
1. ``step-hf``, ``step-vllm``: ``python -m sdar_train --config webshop_sdar.yaml`` for ``--steps`` steps of
   B x G episodes from the warm start; seconds per phase (generation, the teacher's, reference's and old
   policy's no-grad passes, the update) of the last step, from its ``metrics.jsonl``. The vLLM step runs in the
   vLLM venv (``make setup-vllm``) and is skipped, saying so, where that venv is missing.
2. ``gpu-check``: ``bench/gpu_check.py`` (a ~0.5B Qwen2-shaped model's bf16 step, SDAR / GRPO).
3. ``miniature``: ``python -m sdar_train.miniature.real_model --stages arms,report`` with GPU sizes (B x G,
   micro-batches of ``--micro-batch`` rows, held-out evaluation on 50 test goals every ``--eval-every`` steps),
   stopped after ``--minutes``; the report covers the steps reached (runs resume if started again).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_WARM = "sdar_train/miniature/warmstart_smollm2_webshop"
TINY_WARM = "sdar_train/miniature/warmstart"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
STAGES = ("step", "gpu-check", "miniature")
PHASES = ("time_s", "generation_s", "teacher_pass_s", "reference_pass_s", "old_policy_pass_s", "update_s")


def _stage(name: str, argv: list[str], out: Path, limit_s: float, python: str = sys.executable) -> tuple[str, float]:
    """Runs ``python argv`` with its output in ``out/<name>.log``; returns (how it ended, wall seconds)."""
    t = time.time()
    print(f"[gpu_real] {name}: {python} {' '.join(argv)}", flush=True)
    with open(out / f"{name}.log", "w") as log:
        # a session of its own: the miniature's training runs are its children, and a limit stops them all
        proc = subprocess.Popen([python, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit_s)
            ended = "ok" if code == 0 else f"failed (exit status {code}; see {name}.log)"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            ended = f"stopped at its {limit_s:.0f} s limit"
    wall = time.time() - t
    print(f"[gpu_real] {name}: {ended} after {wall:.0f} s", flush=True)
    return ended, wall


def step_args(warm: str, run: Path, steps: int, tasks: int, group: int, micro: int, backend: str) -> list[str]:
    """The real-model SDAR step: the paper's WebShop SDAR config at B x G, LoRA r 16 over bf16."""
    return (
        ["-m", "sdar_train", "--config", "webshop_sdar.yaml", "--model", warm, "--output_dir", str(run)]
        + ["--steps", str(steps), "--tasks_per_step", str(tasks), "--group_size", str(group)]
        + ["--train_reward", "return", "--lora_r", "16", "--lora_alpha", "32", "--bf16", "true"]
        + ["--micro_batch_size", str(micro), "--max_response_tokens", "64", "--generation_backend", backend]
        + ["--eval_episodes", "0", "--save_every", str(steps), "--overwrite", "true", "--progress", "false"]
    )


def phase_row(name: str, ended: str, run: Path) -> str:
    metrics = run / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [r for r in rows if "time_s" in r]
    if not steps:
        return f"| {name} | {ended} |" + " |" * len(PHASES)
    last = steps[-1]  # the first step also compiles kernels and loads the engine
    return f"| {name} | {ended}, {len(steps)} steps |" + "".join(f" {last.get(k, float('nan')):.1f} |" for k in PHASES)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu-real")
    p.add_argument("--minutes", type=float, default=10.0, help="the miniature's wall-clock budget")
    p.add_argument("--steps", type=int, default=2, help="steps of the step stage (the last one is reported)")
    p.add_argument("--tasks", type=int, default=8, help="B")
    p.add_argument("--group", type=int, default=8, help="G")
    p.add_argument("--micro-batch", type=int, default=16, help="rows a forward")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    p.add_argument(
        "--dry-run", action="store_true", help="the tiny warm start on the CPU, 1 step each: checks the code path"
    )
    args = p.parse_args(argv)
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda and not args.dry_run:
        print("gpu_real: no CUDA device here; run with --dry-run to check the stages on the CPU")
        return 2
    warm = REAL_WARM
    eval_episodes, rl_steps, arms = 50, 40, "grpo,sdar"  # more steps than fit: --minutes stops the miniature
    if args.dry_run:
        warm, args.steps, args.tasks, args.group, args.micro_batch, args.eval_every = TINY_WARM, 1, 1, 2, 2, 1
        eval_episodes, rl_steps, arms = 2, 1, "sdar"
    stages = set(args.stages.split(","))
    if unknown := stages - set(STAGES):
        p.error(f"unknown stages {sorted(unknown)}")
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env_note = f"device: {torch.cuda.get_device_name() if cuda else 'cpu (dry run, the tiny warm start)'}"
    lines = [f"# The real model on a GPU ({time.strftime('%Y-%m-%d %H:%M')})", "", env_note, ""]

    if "step" in stages:
        lines += step_stage(out, warm, args)
    if "gpu-check" in stages:  # make gpu-check's single-GPU stage
        check = ["bench/gpu_check.py", *(["--dry-run"] if args.dry_run else [])]
        ended, _ = _stage("gpu-check", check, out, 600)
        lines += ["", f"## bench/gpu_check.py: {ended}", "", (out / "gpu-check.log").read_text().strip(), ""]
    if "miniature" in stages:
        lines += ["", *miniature(out, warm, arms, rl_steps, eval_episodes, args)]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def step_stage(out: Path, warm: str, args: argparse.Namespace) -> list[str]:
    """The real-model SDAR step with each generation back-end: seconds per phase of its last step."""
    lines = [
        f"## The real-model SDAR step: {args.tasks} x {args.group} WebShop episodes, micro-batches of "
        f"{args.micro_batch} rows; seconds of step {args.steps}",
        "",
        "| back-end | ended | step | generation | teacher pass | reference pass | old-policy pass | update |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend in ("hf", "vllm"):
        run = out / f"step-{backend}"
        if backend == "vllm" and not VLLM_PYTHON.exists():
            missing = VLLM_PYTHON.relative_to(ROOT)
            lines.append(f"| vllm | skipped: no {missing} (make setup-vllm) |" + " |" * len(PHASES))
            continue
        python = sys.executable if backend == "hf" else str(VLLM_PYTHON)
        argv = step_args(warm, run, args.steps, args.tasks, args.group, args.micro_batch, backend)
        ended, _ = _stage(f"step-{backend}", argv, out, 600, python)
        lines.append(phase_row(backend, ended, run))
    return lines


def miniature(
    out: Path, warm: str, arms: str, rl_steps: int, eval_episodes: int, args: argparse.Namespace
) -> list[str]:
    """The real-model comparison at GPU sizes until ``args.minutes`` stop it, then its report."""
    mini = ["-m", "sdar_train.miniature.real_model", "--env", "webshop", "--out", str(out / "real")]
    mini += ["--warm", warm, "--train_reward", "return", "--arms", arms, "--seeds", "0"]
    mini += ["--rl_steps", str(rl_steps), "--rl_tasks_per_step", str(args.tasks), "--rl_group_size", str(args.group)]
    mini += ["--rl_micro_batch_size", str(args.micro_batch), "--rl_mini_batch_size", str(args.tasks * args.group)]
    mini += ["--rl_eval_every", str(args.eval_every), "--rl_eval_episodes", str(eval_episodes)]
    runs = [*mini, "--stages", "arms", "--parallel", str(len(arms.split(",")))]
    ended, wall = _stage("miniature", runs, out, args.minutes * 60)
    _stage("miniature-report", [*mini, "--stages", "report"], out, 300)  # the report of whatever was reached
    found = out / "real" / "webshop" / "report.md"
    lines = [f"## The miniature: {ended} after {wall / 60:.1f} min ({found.relative_to(out)})", ""]
    if found.exists():
        text = found.read_text()
        lines += [text[text.index("## RL from") :] if "## RL from" in text else text]
    return lines


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
