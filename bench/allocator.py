"""glibc's default malloc against a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``) and against
``malloc_trim(0)`` after every step, side by side: CPU time per training step and peak resident memory.

    .venv/bin/python bench/allocator.py [--models tiny smollm2-135m-instruct] [--rows 2] [--tokens 512]
        [--steps 6] [--rounds 2] [--threads 1]

Why: glibc's mmap threshold rises to the size of each large block freed (up to 32 MiB), after which tensors
come from heap arenas that keep freed pages. A real-model RL run on CPU grew to 12.7-13.4 GB that way; with
the threshold fixed at 128 KiB it peaked near 5 GB (docs/real_model/README.md). But every block above a fixed
threshold is a fresh mapping the kernel zeroes, which costs CPU time; this bench says how much.

Each measurement is a fresh process running ``--steps`` steps of forward + backward + AdamW over ``rows x
tokens`` (bf16 autocast, logits for the last 64 positions) followed by a no-grad forward; the lengths vary
from step to step as a run's micro-batches do. The three set-ups alternate for ``--rounds`` rounds. Times are
CPU seconds of the process (user and system, so the page faults of fresh mappings count), which another job
on the machine does not inflate. Printed per model: median CPU seconds per step, peak resident GB, and their
ratio to the default's (time above 1: it costs time; memory below 1: it saves).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _worker(name: str, rows: int, tokens: int, steps: int, threads: int, mode: str) -> dict[str, float]:
    import torch

    from sdar_train.policy import load_policy

    trim = ctypes.CDLL("libc.so.6").malloc_trim if mode == "trim" else None
    torch.set_num_threads(threads)
    model = load_policy(name, torch.device("cpu")).model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps):
        # lengths vary from step to step, as a run's micro-batches do: what fragments the heap
        ids = torch.randint(0, 1000, (rows, tokens // 2 + (step * tokens // 7) % (tokens // 2 + 1)), generator=gen)
        t = time.process_time()  # CPU seconds (user + system, so page faults count): other jobs do not inflate it
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.get_decoder()(input_ids=ids).last_hidden_state
            logits = model.get_output_embeddings()(hidden[:, -64:])
            loss = torch.log_softmax(logits.float(), -1)[..., 0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, logits_to_keep=1)
        if trim is not None:
            trim(0)
        times.append(time.process_time() - t)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    return {"step_s": statistics.median(times[1:] or times), "peak_gb": peak_gb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m-instruct"])
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", choices=["default", "fixed", "trim"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.models[0], args.rows, args.tokens, args.steps, args.threads, args.worker)))
        return
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    print(
        f"{args.rows} x {args.tokens} tokens, {args.steps} steps a process, {args.threads} threads, {args.rounds} rounds\n"
    )
    print(
        "| model | against default | default CPU s/step | its CPU s/step | ratio | default peak GB | its peak GB | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        got: dict[str, list[dict[str, float]]] = {"default": [], "fixed": [], "trim": []}
        for _ in range(args.rounds):
            for mode in got:
                argv = [sys.executable, __file__, "--models", name, "--worker", mode]
                argv += ["--rows", str(args.rows), "--tokens", str(args.tokens), "--steps", str(args.steps)]
                argv += ["--threads", str(args.threads)]
                fixed = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)} if mode == "fixed" else {}  # read by glibc at start
                done = subprocess.run(argv, capture_output=True, text=True, env={**env, **fixed}, check=True)
                got[mode].append(json.loads(done.stdout.splitlines()[-1]))
        t = {m: statistics.median(r["step_s"] for r in rs) for m, rs in got.items()}
        g = {m: max(r["peak_gb"] for r in rs) for m, rs in got.items()}
        for mode in ("fixed", "trim"):
            print(
                f"| {name} | {mode} | {t['default']:.3f} | {t[mode]:.3f} | {t[mode] / t['default']:.2f} | "
                f"{g['default']:.2f} | {g[mode]:.2f} | {g[mode] / g['default']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
