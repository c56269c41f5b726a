"""Where one training step goes, phase by phase, and what padding costs: one run, side by side.

    .venv/bin/python bench/step_cost.py [--model smollm2-135m-instruct] [--envs webshop alfworld]
        [--algos grpo sdar] [--tasks 2] [--group 2] [--max-turns 3] [--response-tokens 48]

For each environment and algorithm, one step from the same seed, twice: micro-batches of length-sorted
rows cut by count alone (``--max_padding 1.0``) and cut so that no forward is more than 10% padding
(``0.1``, the default). The rollout is the same both times (same seed, same
weights), so the two rows differ only in how the scoring passes and the update batch their rows.
Printed per run: the phase split (generation, environments and prompts, teacher pass, reference pass,
old-policy pass, update), the share of computed tokens that are padding, and the step's losses (equal
across the two cuts to float tolerance). The real model runs LoRA r16 over a bf16 base, as the CPU
recipe does; ``--model tiny`` gives the same split for the 1.4M model.

For scale, the SDAR reference's step on Qwen2.5-3B, ALFWorld, 4 x A100 (GitHub ZJU-REAL/SDAR #51):
generation 23%, old log-probs 10%, teacher 14%, reference 10%, update 43% of 1,816 s.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

ENVS = {
    "webshop": ("SDAR/WebShop-v0", {"split": "train"}),
    "alfworld": ("SDAR/ALFWorld-v0", {"split": "train"}),
    "searchqa": ("SDAR/SearchQA-v0", {"split": "train"}),
}
PHASES = ("generation_s", "env_s", "teacher_pass_s", "reference_pass_s", "old_policy_pass_s", "update_s")


def one_step(env: str, algo: str, padding: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from sdar_train.config import TrainConfig
    from sdar_train.trainer import Trainer

    env_id, kwargs = ENVS[env]
    real = args.model != "tiny"
    cfg = TrainConfig(
        env=env_id,
        env_kwargs=kwargs,
        algo=algo,
        model=args.model,
        output_dir=str(out / f"{env}-{algo}-{padding}"),
        steps=1,
        tasks_per_step=args.tasks,
        group_size=args.group,
        max_turns=args.max_turns,
        max_response_tokens=args.response_tokens,
        micro_batch_size=args.micro,
        mini_batch_size=args.mini,
        max_padding=padding,
        lora_r=16 if real else 0,
        lora_alpha=32,
        bf16=real,
        kl_coef=0.01,
        progress=False,
        save_every=1000,
        report_to="none",
        seed=args.seed,
    )
    trainer = Trainer(cfg)
    try:
        m = trainer.train_step(0)
    finally:
        trainer.close()
    m["env_s"] = m["rollout_s"] - m["generation_s"]
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--envs", nargs="+", default=["webshop", "alfworld"], choices=list(ENVS))
    p.add_argument("--algos", nargs="+", default=["grpo", "sdar"])
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--response-tokens", type=int, default=48)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--mini", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for env in args.envs:
            for algo in args.algos:
                for padding in (1.0, 0.1):
                    m = one_step(env, algo, padding, args, Path(tmp))
                    rows.append((env, algo, padding, m))
                    print(f"done {env} {algo} max_padding={padding}: {m['time_s']:.0f} s", flush=True)
    print(
        f"\nmodel {args.model}; B={args.tasks} x G={args.group}, <= {args.max_turns} turns, {args.response_tokens} response tokens"
    )
    print(
        "| env | algo | cut | step s | "
        + " | ".join(p.removesuffix("_s") for p in PHASES)
        + " | padding | samples | loss |"
    )
    print("|---|---|---|---|" + "---|" * len(PHASES) + "---|---|---|")
    for env, algo, padding, m in rows:
        split = " | ".join(f"{m[p]:.1f} ({m[p] / m['time_s']:.0%})" for p in PHASES)
        cut = "count" if padding == 1.0 else "padding <= 10%"
        print(
            f"| {env} | {algo} | {cut} | {m['time_s']:.1f} | {split} | {m['padding_share']:.1%} | {m['samples']} | {m['loss']:.6f} |"
        )


if __name__ == "__main__":
    main()
