"""Decode steps on transformers' KV cache (``torch.cat`` every step) against the one that grows in place
(``sdar_train.kv_cache``), under glibc's default malloc and under the fixed mmap threshold the CPU run
scripts set (``MALLOC_MMAP_THRESHOLD_=131072``): one run, side by side.

    .venv/bin/python bench/kv_cache.py [--model smollm2-135m-instruct] [--rows 16] [--prompt 1000]
        [--new 64] [--threads 1] [--rounds 2]

Each allocator is a fresh process (glibc reads the variable at start); in it the two caches alternate for
``--rounds`` rounds. A decode step's time is (time for ``--new`` tokens - time for 1) / (``--new`` - 1),
greedy, bf16, every prompt prefilled in full. Printed: ms a step (median over rounds) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _worker(args: argparse.Namespace) -> dict[str, list[float]]:
    import torch

    import sdar_train.policy as policy_module
    from sdar_train.kv_cache import growing_cache

    torch.set_num_threads(args.threads)
    policy = policy_module.load_policy(args.model, torch.device("cpu"))
    policy.model.to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    shortest = args.prompt * 7 // 10  # lengths vary, so rows are padded as in a rollout
    prompts = [
        torch.randint(
            10,
            min(20000, policy.model.config.vocab_size),
            (shortest + (args.prompt - shortest) * i // max(args.rows - 1, 1),),
            generator=gen,
        ).tolist()
        for i in range(args.rows)
    ]
    steps: dict[str, list[float]] = {"transformers": [], "growing": []}
    for _ in range(args.rounds):
        for arm in steps:
            policy_module.growing_cache = growing_cache if arm == "growing" else (lambda model: None)
            times = []
            for new in (1, args.new):
                t = time.perf_counter()
                policy_module.generate(
                    policy,
                    prompts,
                    max_new_tokens=new,
                    temperature=0.0,
                    top_p=1.0,
                    generator_seed=0,
                    batch_size=args.rows,
                    share_prompts=False,
                )
                times.append(time.perf_counter() - t)
            steps[arm].append((times[1] - times[0]) / (args.new - 1))
    return steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--prompt", type=int, default=1000)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    print(
        f"{args.model}, {args.rows} rows of {args.prompt * 7 // 10}-{args.prompt} prompt tokens, {args.new} new, "
        f"{args.threads} threads, {args.rounds} rounds\n"
    )
    print("| allocator | transformers' cache, ms a step | growing cache, ms a step | transformers' / growing |")
    print("|---|---|---|---|")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    for name, extra in (("glibc default", {}), ("MALLOC_MMAP_THRESHOLD_=131072", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        argv = [sys.executable, __file__, "--worker", *sys.argv[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, env={**env, **extra}, check=True)
        got = json.loads(done.stdout.splitlines()[-1])
        cat, grow = (statistics.median(got[k]) * 1000 for k in ("transformers", "growing"))
        print(f"| {name} | {cat:.1f} | {grow:.1f} | {cat / grow:.2f} |", flush=True)


if __name__ == "__main__":
    main()
