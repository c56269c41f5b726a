"""SmolLM2-135M-Instruct through the suite on CPU: the premise zero-shot, a behaviour-cloned warm start,
and the premise again, one environment at a time. Resumable: each stage is skipped when its output
exists, and the warm start continues from its last checkpoint.

    python -m sdar_train.miniature.real_model --env searchqa --out runs/real     # docs/real_model/

Stages, each through the harness's own command lines (so each is also a command a user can type):

1. ``premise-zeroshot-{none,teacher}.json``: ``sdar_train.eval`` on the fixed held-out list, greedy,
   without and with the teacher's skill block (``--skills teacher``: the block before the chat text);
2. ``warmstart/``: ``python -m sdar_train --algo sft`` on the train split's expert demonstrations, LoRA r 16
   over a bf16 base, with ``--sft_skills_share`` of the episodes shown the teacher's prompt, and held-out
   evaluations along the way (``metrics.jsonl``);
3. ``premise-warm-{none,teacher}.json``: stage 1 on the warm start;
4. ``report.md``: the premise table (success, return, format-valid, admissible, cut at the response
   limit, turns) and the warm start's curve.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SETTINGS", "EnvSettings", "main", "premise_table"]


@dataclass(frozen=True)
class EnvSettings:
    env_id: str
    config: str  # the harness's SFT config for this environment
    eval_split: str
    eval_episodes: int  # evenly spaced over the split's fixed order (sdar_envs.core.evaluation_tasks)
    max_response_tokens: int  # sized to the environment's actions; the paper's configs say 512
    steps: int
    tasks_per_step: int
    eval_every: int


SETTINGS: dict[str, EnvSettings] = {
    "searchqa": EnvSettings("SDAR/SearchQA-v0", "searchqa_sft.yaml", "test", 200, 64, 40, 8, 20),
    "webshop": EnvSettings("SDAR/WebShop-v0", "webshop_sft.yaml", "test", 100, 64, 40, 4, 20),
    "alfworld": EnvSettings("SDAR/ALFWorld-v0", "alfworld_sft.yaml", "valid_unseen", 67, 48, 40, 4, 20),
}
MODEL = "smollm2-135m-instruct"


def _log(msg: str) -> None:
    print(f"[real_model] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _run(args: list[str]) -> None:
    _log("$ " + " ".join(args))
    subprocess.run([sys.executable, *args], check=True)


def _premise(s: EnvSettings, model: str, out: Path, tag: str) -> None:
    for skills in ("none", "teacher"):
        path = out / f"premise-{tag}-{skills}.json"
        if path.exists():
            continue
        _run(
            ["-m", "sdar_train.eval", "--env", s.env_id, "--model", model, "--split", s.eval_split]
            + ["--episodes", str(s.eval_episodes), "--temperature", "0", "--dtype", "bfloat16"]
            + ["--max_response_tokens", str(s.max_response_tokens), "--skills", skills, "--out", str(path)]
        )


def _warm_start(s: EnvSettings, out: Path, lr: float, skills_share: float, threads: int) -> Path:
    run = out / "warmstart"
    final = run / "final"
    if (final / "config.json").exists():
        return final
    resume = (run / "checkpoints").is_dir()
    _run(
        ["-m", "sdar_train", "--config", s.config, "--model", MODEL, "--output_dir", str(run)]
        + ["--steps", str(s.steps), "--tasks_per_step", str(s.tasks_per_step), "--group_size", "1"]
        + ["--lora_r", "16", "--lora_alpha", "32", "--bf16", "true", "--lr", str(lr)]
        # micro-batches of 2: activations of 8 rows x 900 tokens x 30 layers take ~15 GB on a CPU
        + ["--micro_batch_size", "2", "--max_response_tokens", str(s.max_response_tokens)]
        # an optimizer step every 4 turns: the RL configs' mini-batches (64-256 turns) would give cloning
        # one update per step, and 10 updates left SmolLM2 copying 'search[<your query>]' (docs/real_model/)
        + ["--mini_batch_size", "4"]
        + ["--sft_skills_share", str(skills_share), "--eval_every", str(s.eval_every)]
        + ["--eval_episodes", str(s.eval_episodes), "--save_every", "5", "--keep_checkpoints", "1"]
        + ["--cpu_threads", str(threads), "--progress", "false"]
        + (["--resume", "true"] if resume else [])
    )
    return final


def premise_table(out: Path) -> list[str]:
    """Markdown rows: one per (model, prompt) evaluation found in ``out``."""
    rows = [
        "| model | prompt | episodes | success | mean return | format-valid turns | admissible turns | cut at the limit | turns per episode |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for tag, name in (("zeroshot", "SmolLM2 zero-shot"), ("warm", "warm start")):
        for skills, prompt in (("none", "student (no skills)"), ("teacher", "teacher (skills before the chat)")):
            path = out / f"premise-{tag}-{skills}.json"
            if not path.exists():
                continue
            r: dict[str, Any] = json.loads(path.read_text())
            rows.append(
                f"| {name} | {prompt} | {r['episodes']} | {r['success']:.3f} | {r['return']:.3f} | "
                f"{1 - r['invalid_rate']:.3f} | {1 - r['inadmissible_rate']:.3f} | "
                f"{r.get('response_limit_rate', float('nan')):.3f} | {r['episode_length']:.2f} |"
            )
    return rows


def _report(s: EnvSettings, out: Path) -> Path:
    lines = [f"# SmolLM2-135M-Instruct on {s.env_id}", "", "## The premise (greedy, the same tasks)", ""]
    lines += premise_table(out)
    metrics = out / "warmstart" / "metrics.jsonl"
    if metrics.exists():
        points = [json.loads(line) for line in metrics.read_text().splitlines()]
        curve = [p for p in points if "eval_success" in p]
        lines += ["", "## The warm start's held-out curve", "", "| step | success | mean return |", "|---|---|---|"]
        lines += [f"| {p['step']} | {p['eval_success']:.3f} | {p['eval_return']:.3f} |" for p in curve]
        losses = [p for p in points if "sft_loss" in p]
        if losses:
            wall = sum(p.get("time_s", 0.0) for p in losses) / 60
            lines += [
                "",
                f"{len(losses)} cloning steps, {wall:.0f} min; response NLL {losses[0]['sft_loss']:.3f} -> {losses[-1]['sft_loss']:.3f}.",
            ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=sorted(SETTINGS), default="searchqa")
    p.add_argument("--out", default="runs/real")
    p.add_argument("--lr", type=float, default=2e-4, help="the warm start's learning rate (LoRA)")
    p.add_argument("--skills_share", type=float, default=0.3, help="demonstrations shown the teacher's prompt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stages", default="premise,warmstart,report", help="comma-separated subset to run")
    args = p.parse_args(argv)
    s = SETTINGS[args.env]
    out = Path(args.out) / args.env
    out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    if "premise" in stages:
        _premise(s, MODEL, out, "zeroshot")
    if "warmstart" in stages:
        final = _warm_start(s, out, args.lr, args.skills_share, args.threads)
        _premise(s, str(final), out, "warm")
    _log(f"report: {_report(s, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
