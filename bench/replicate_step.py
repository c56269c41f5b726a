"""Where one RL step of the CPU miniature goes: generation, environments, teacher pass, update.

    .venv/bin/python -m bench.replicate_step [--algo sdar] [--env-workers 0 2] [--steps 2]

One SDAR step of ``make replicate``'s arm configuration (WebShop train goals, B=2 x G=4, the packaged
warm start), timed by part: generation (the back-end's calls), environment steps and prompt building
(the rest of the rollout), the no-grad passes (teacher, reference, old policy) and the update. Then the
same prompts the rollout generated for are generated again in one batched call: the ratio rollout /
bare generation is what the multi-turn loop costs over generating the same tokens. Each
``--env-workers`` value runs in the same invocation, side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def profile(
    algo: str, env_workers: int, steps: int, threads: int, tasks: int | None = None, group: int | None = None
) -> dict[str, float]:
    from sdar_train.config import load_config, resolve_reference_defaults
    from sdar_train.miniature.demo import check_warmstart
    from sdar_train.miniature.replicate import BASE_CONFIG, ReplicateConfig, arm_settings
    from sdar_train.trainer import Trainer

    warm = check_warmstart()
    with tempfile.TemporaryDirectory() as tmp:
        settings = arm_settings(ReplicateConfig(threads=threads), algo, 0, warm, Path(tmp) / "run")
        sizes = {k: v for k, v in (("tasks_per_step", tasks), ("group_size", group)) if v}
        cfg = load_config(BASE_CONFIG, **{**settings, "env_workers": env_workers, **sizes})
        trainer = Trainer(resolve_reference_defaults(cfg))
        prompts: list[list[int]] = []
        spent = {"generation": 0.0}
        inner = trainer.generator

        class Timed:
            def __call__(self, batch, seed, sampling):
                prompts.extend(batch)
                t = time.perf_counter()
                try:
                    return inner(batch, seed, sampling)
                finally:
                    spent["generation"] += time.perf_counter() - t

            def sync(self, model):
                inner.sync(model)

            def close(self):
                inner.close()

        trainer.generator = Timed()  # type: ignore[assignment]
        totals = {"step": 0.0, "rollout": 0.0, "teacher+ref": 0.0}
        try:
            for step in range(steps):
                m = trainer.train_step(step)
                totals["step"] += m["time_s"]
                totals["rollout"] += m["rollout_s"]
                totals["teacher+ref"] += m["teacher_s"]
            t = time.perf_counter()
            inner(prompts, 0, trainer.sampling)
            bare = time.perf_counter() - t
        finally:
            trainer.close()
    return {
        "step_s": totals["step"] / steps,
        "generation_s": spent["generation"] / steps,
        "env_and_prompts_s": (totals["rollout"] - spent["generation"]) / steps,
        "teacher_ref_old_s": totals["teacher+ref"] / steps,
        "update_s": (totals["step"] - totals["rollout"] - totals["teacher+ref"]) / steps,
        "bare_generation_s": bare / steps,
        "rollout_over_bare_generation": totals["rollout"] / bare,
        "prompts": len(prompts) / steps,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", default="sdar")
    p.add_argument("--env-workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tasks", type=int, default=None, help="B (default: the miniature's arms', 2)")
    p.add_argument("--group", type=int, default=None, help="G (default: the miniature's arms', 4)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = {w: profile(args.algo, w, args.steps, args.threads, args.tasks, args.group) for w in args.env_workers}
    keys = list(next(iter(rows.values())))
    print(f"one {args.algo} step of the miniature (mean of {args.steps}), seconds unless a ratio")
    print("| measure | " + " | ".join(f"env_workers={w}" for w in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k]:.2f}" for r in rows.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
