"""SDAR's cost over GRPO on the same batch: step time and peak memory, measured side by side.

    .venv/bin/python -m bench.sdar_overhead [--samples 32] [--prompt 512] [--skills 128] [--response 48] [--repeats 3]

One "step" here is everything after the rollout, on a fixed synthetic batch of turn samples:
GRPO = reference pass (no grad) + update (forward + backward); SDAR = the same plus the teacher pass,
one no-grad forward over the longer, skill-augmented prompts. Runs alternate (GRPO, SDAR, GRPO, ...)
so that machine noise hits both alike. Peak memory: CUDA's max allocated on a GPU; on CPU the peak
RSS of a fresh subprocess per variant.

Target: SDAR/GRPO time within 10% of 1 + T / (3 S), T = teacher tokens, S = student
tokens (a no-grad forward costs about a third of forward + backward); peak memory within 1.1x.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sdar_train.trainer import TurnBatch

ROOT = Path(__file__).resolve().parents[1]


def one_step(trainer, batch, teacher: bool) -> float:
    prompts, teacher_prompts, responses, adv = batch
    t = time.perf_counter()
    model = trainer.accelerator.unwrap_model(trainer.model)
    ref = trainer._score(trainer.ref_model, prompts, responses)
    teach = trainer._score(model, teacher_prompts, responses) if teacher else None
    tokens = torch.tensor(float(sum(len(r) for r in responses)))
    mb = trainer.cfg.micro_batch_size
    rows = TurnBatch(prompts, responses, adv, ref_logp=ref, teacher_logp=teach)
    for s in range(0, len(prompts), mb):
        trainer._accumulate(rows, list(range(s, min(s + mb, len(prompts)))), tokens, {})
    trainer.optimizer.zero_grad(set_to_none=True)  # measure, do not drift the weights
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def build(args: argparse.Namespace, algo: str):
    import gymnasium as gym

    if "Test/LetterY-v0" not in gym.registry:
        gym.register("Test/LetterY-v0", entry_point="tests.train.toy_env:LetterEnv")
    from sdar_train.config import TrainConfig
    from sdar_train.trainer import Trainer

    cfg = TrainConfig(
        env="Test/LetterY-v0",
        algo=algo,
        model=args.model,
        output_dir=tempfile.mkdtemp(),
        steps=1,
        tasks_per_step=1,
        group_size=2,
        kl_coef=0.01,
        micro_batch_size=args.micro,
        mini_batch_size=max(args.micro, args.samples),
        progress=False,
        cpu_threads=args.threads,
    )
    trainer = Trainer(cfg)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 4000, (args.prompt,), generator=g).tolist() for _ in range(args.samples)]
    teacher_prompts = [torch.randint(10, 4000, (args.skills,), generator=g).tolist() + p for p in prompts]
    responses = [torch.randint(10, 4000, (args.response,), generator=g).tolist() for _ in range(args.samples)]
    adv = torch.randn(args.samples, generator=g)
    return trainer, (prompts, teacher_prompts, responses, adv)


def child(args: argparse.Namespace) -> None:
    """Peak RSS of one variant in a fresh process (CPU memory)."""
    trainer, batch = build(args, args.child)
    one_step(trainer, batch, teacher=args.child == "sdar")
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--skills", type=int, default=128)
    p.add_argument("--response", type=int, default=48)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=["grpo", "sdar"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    trainer, batch = build(args, "sdar")
    one_step(trainer, batch, teacher=True)  # warm-up
    times = {"grpo": [], "sdar": []}
    for _ in range(args.repeats):
        for algo in ("grpo", "sdar"):
            times[algo].append(one_step(trainer, batch, teacher=algo == "sdar"))
    trainer.close()
    mem = {}
    if torch.cuda.is_available():
        for algo in ("grpo", "sdar"):
            torch.cuda.reset_peak_memory_stats()
            one_step(*build(args, algo), teacher=algo == "sdar")
            mem[algo] = torch.cuda.max_memory_allocated() / 2**20
        unit = "MiB allocated (CUDA)"
    else:
        for algo in ("grpo", "sdar"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.sdar_overhead", "--child", algo, *sys.argv[1:]],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            mem[algo] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        unit = "MiB peak RSS (CPU)"
    s_tokens = args.samples * (args.prompt + args.response)
    t_tokens = args.samples * (args.skills + args.prompt + args.response)
    grpo, sdar = min(times["grpo"]), min(times["sdar"])
    predicted = 1 + t_tokens / (3 * s_tokens)
    print(
        f"batch: {args.samples} turns, prompt {args.prompt} + skills {args.skills} + response {args.response} tokens, model {args.model}"
    )
    print(f"| | step (s, best of {args.repeats}) | peak memory ({unit}) |")
    print("|---|---|---|")
    print(f"| GRPO | {grpo:.2f} | {mem['grpo']:.0f} |")
    print(f"| SDAR | {sdar:.2f} | {mem['sdar']:.0f} |")
    print(f"| SDAR / GRPO | {sdar / grpo:.2f} | {mem['sdar'] / mem['grpo']:.2f} |")
    print(
        f"predicted time ratio 1 + T/(3S) = {predicted:.2f}; measured/predicted = {sdar / grpo / predicted:.2f} "
        f"(target within 10%: {'met' if abs(sdar / grpo / predicted - 1) <= 0.10 else 'MISSED'}); "
        f"memory target <= 1.1x: {'met' if mem['sdar'] / mem['grpo'] <= 1.1 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
