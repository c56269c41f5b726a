"""The miniature's ALFWorld warm start: behaviour cloning of a small local model, with its held-out curve.

    python -m sdar_train.miniature.alfworld_warmstart --out runs/alfworld_warmstart     # resumable

Stages (each skipped when its output exists):

1. ``model/``: a small Qwen2 with a byte-level BPE trained on the prompts and actions of demonstrated
   *train* games only (held-out text never reaches the tokenizer), built locally, nothing downloaded.
2. ``demos.jsonl.gz``: one episode per sampled train game, played by
   :mod:`sdar_train.miniature.alfworld_demonstrator` (it reads only the prompt and wins all 134 ``valid_unseen``
   games), on the prompts the rollout itself builds.
3. ``warmstart/``: token NLL on the responses (:func:`sdar_train.miniature.replicate.behaviour_cloning`), with a
   held-out evaluation every ``eval_every`` steps: ``eval_games`` ``valid_unseen`` games evenly spaced
   over the split's fixed order (every task type, in proportion), temperature 0.4, seed 0.
4. ``report.md`` and ``curve.png``: success, per-type success and inadmissible-action rate against
   behaviour-cloning steps, beside the untrained model's and the demonstrator's.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdar_train.miniature.alfworld_demonstrator import alfworld_command
from sdar_train.miniature.demonstrator import play_prompts
from sdar_train.miniature.replicate import demonstration_turns, read_records, write_records
from sdar_train.policy import PromptCodec, load_policy

__all__ = ["AlfworldWarmStartConfig", "demonstrate", "main", "run"]

ENV = "SDAR/ALFWorld-v0"
RESPONSE = "<think></think><action>{}</action>"


@dataclass
class AlfworldWarmStartConfig:
    """The defaults are the recorded run (docs/replication/alfworld/bc1200, which ran on one thread)."""

    out: str = field(default="runs/alfworld_warmstart", metadata={"help": "where every stage writes"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary trained on ALFWorld train text"})
    hidden_size: int = field(default=192, metadata={"help": "Qwen2 width"})
    layers: int = field(default=3, metadata={"help": "Qwen2 layers"})
    demo_games: int = field(default=800, metadata={"help": "train games demonstrated (one episode each)"})
    bc_steps: int = field(default=1200, metadata={"help": "behaviour-cloning optimiser steps"})
    bc_batch: int = field(default=16, metadata={"help": "turn samples per step"})
    bc_lr: float = field(default=3e-3, metadata={"help": "peak learning rate (cosine decay)"})
    bc_prompt_lm: int = field(default=64, metadata={"help": "next-token loss at this many prompt positions per sample"})
    eval_every: int = field(default=300, metadata={"help": "held-out evaluation every N steps"})
    eval_games: int = field(default=67, metadata={"help": "valid_unseen games per evaluation (of 134; evenly spaced)"})
    eval_temperature: float = field(default=0.4, metadata={"help": "the reference's evaluation temperature"})
    max_prompt_tokens: int = field(default=2048, metadata={"help": "prompt budget"})
    max_response_tokens: int = field(default=48, metadata={"help": "tokens per turn"})
    threads: int = field(default=2, metadata={"help": "torch threads"})
    dagger_rounds: int = field(
        default=0,
        metadata={
            "help": "DAgger rounds after cloning: the policy plays train games, the demonstrator labels every "
            "prompt it met, and cloning goes on over the demonstrations and all labels so far (0: off)"
        },
    )
    dagger_games: int = field(default=150, metadata={"help": "train games the policy plays per DAgger round"})
    dagger_steps: int = field(default=600, metadata={"help": "behaviour-cloning steps per DAgger round"})
    dagger_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of each DAgger round (cosine)"})

    def __post_init__(self) -> None:
        from sdar_train.errors import ConfigError

        for name in ("demo_games", "bc_steps", "bc_batch", "eval_every", "eval_games", "threads", "dagger_games"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dagger_rounds < 0 or self.dagger_steps < 1:
            raise ConfigError("dagger_rounds must be >= 0 and dagger_steps >= 1")
        if self.eval_games < 60:
            raise ConfigError("eval_games must be >= 60 (a stratified subset of at least 60 valid_unseen games)")


def demonstrate(
    codec: PromptCodec, task_ids: Sequence[str], *, seed: int = 0, max_prompt_tokens: int = 2048
) -> list[dict[str, Any]]:
    """One demonstrated episode per train game; one record per turn (``prompt``/``response`` token ids,
    ``task_id``, ``won``). The prompts are the rollout's own, made by the same code."""

    def act(prompts: list[list[int]], _seed: int) -> list[list[int]]:
        return [codec.encode_response(RESPONSE.format(alfworld_command(codec.decode(ids)))) for ids in prompts]

    turns = demonstration_turns(
        ENV, codec, task_ids, act, seed=seed, max_prompt_tokens=max_prompt_tokens, seed_label="alfworld-demos", chunk=50
    )
    return [
        {"task_id": ep.task_id, "won": ep.won, "prompt": s.prompt_ids, "response": s.response_ids} for ep, s in turns
    ]


def policy_states(
    policy: Any, codec: PromptCodec, task_ids: Sequence[str], cfg: AlfworldWarmStartConfig, *, seed: int
) -> list[dict[str, Any]]:
    """DAgger's data: the prompts ``policy`` meets playing ``task_ids`` (sampled at the evaluation
    temperature, so its own mistakes lead it off the demonstrations' path), each labelled with the
    demonstrator's command for that prompt. Records as :func:`demonstrate`'s (``won`` is the policy's)."""
    from sdar_train.generation import HFGenerator, Sampling

    generator = HFGenerator(policy)
    sampling = Sampling(cfg.max_response_tokens, cfg.eval_temperature, 1.0, tuple(policy.stop_ids))
    turns = demonstration_turns(
        ENV,
        codec,
        task_ids,
        lambda prompts, s: generator(prompts, s, sampling),
        seed=seed,
        max_prompt_tokens=cfg.max_prompt_tokens,
        seed_label="alfworld-dagger",
        chunk=50,
    )
    return [
        {
            "task_id": ep.task_id,
            "won": ep.won,
            "prompt": s.prompt_ids,
            "response": codec.encode_response(RESPONSE.format(alfworld_command(codec.decode(s.prompt_ids)))),
        }
        for ep, s in turns
    ]


def _texts(n: int = 300, seed: int = 0) -> Iterator[str]:
    """The tokenizer's training text: prompts and actions of ``n`` demonstrated train games, the skills."""
    from sdar_envs.alfworld.env import AlfworldEnv
    from skills.store import seed_bank_path

    yield seed_bank_path("alfworld").read_text(encoding="utf-8")
    env = AlfworldEnv(split="train")
    for tid in random.Random(seed).sample(env.task_ids(), n):
        turns, _ = play_prompts(env, tid, alfworld_command, response=RESPONSE)
        for text, action in turns:
            yield text
            yield action
    env.close()


def evaluate_warmstart(policy: Any, cfg: AlfworldWarmStartConfig) -> dict[str, Any]:
    """Held-out success on ``cfg.eval_games`` ``valid_unseen`` games, with per-type success."""
    from sdar_train.eval import evaluate
    from sdar_train.rollout import PromptSpec

    report = evaluate(
        policy,
        ENV,
        env_kwargs={"split": "valid_unseen"},
        episodes=cfg.eval_games,
        temperature=cfg.eval_temperature,
        seed=0,
        max_response_tokens=cfg.max_response_tokens,
        prompts=PromptSpec(cfg.max_prompt_tokens),
    )
    keep = ("episodes", "success", "invalid_rate", "inadmissible_rate", "episode_length", "per_task_type")
    return {k: report[k] for k in keep if k in report}


def _log(msg: str) -> None:
    print(f"[alfworld-warmstart {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cfg: AlfworldWarmStartConfig) -> Path:
    from sdar_train.miniature.replicate import behaviour_cloning, build_small_qwen2

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    model_dir, demos_file, warm = out / "model", out / "demos.jsonl.gz", out / "warmstart"
    t0 = time.time()
    if not (model_dir / "config.json").exists():
        _log(f"building the model ({cfg.hidden_size} wide, {cfg.layers} layers, {cfg.vocab_size} BPE)")
        build_small_qwen2(model_dir, cfg.vocab_size, cfg.hidden_size, cfg.layers, _texts())
    policy = load_policy(str(model_dir), torch.device("cpu"))
    codec = PromptCodec(policy.tokenizer)
    if not demos_file.exists():
        from sdar_envs.alfworld.env import AlfworldEnv

        env = AlfworldEnv(split="train")
        games = random.Random(1).sample(env.task_ids(), cfg.demo_games)
        env.close()
        _log(f"demonstrating {len(games)} train games")
        write_records(demos_file, demonstrate(codec, games, max_prompt_tokens=cfg.max_prompt_tokens))
    records = read_records(demos_file)
    won = {r["task_id"]: r["won"] for r in records}
    curve_file = out / "curve.jsonl"

    def clone(policy: Any, data: list[dict[str, Any]], steps: int, lr: float, offset: int, dest: Path) -> None:
        """Cloning on ``data`` for ``steps`` steps, evaluated every ``eval_every`` (the curve counts steps
        from ``offset``), saved to ``dest``."""

        def on_step(step: int, loss: float) -> None:
            point: dict[str, Any] = {"step": offset + step, "loss": loss, "wall_s": time.time() - t0}
            if step % cfg.eval_every == 0 or step == steps:
                point.update(evaluate_warmstart(policy, cfg))
                _log(f"step {offset + step}: success {point['success']:.3f} loss {loss:.3f}")
                policy.model.train()
            with open(curve_file, "a") as f:
                f.write(json.dumps(point) + "\n")

        behaviour_cloning(
            policy, data, steps=steps, batch_size=cfg.bc_batch, lr=lr, prompt_lm=cfg.bc_prompt_lm, on_step=on_step
        )
        staging = dest.with_name(dest.name + ".tmp")
        policy.model.save_pretrained(staging)
        policy.tokenizer.save_pretrained(staging)
        recipe = {**dataclasses.asdict(cfg), "turns": len(data), "wall_s": time.time() - t0}
        (staging / "recipe.json").write_text(json.dumps(recipe, indent=2))
        staging.replace(dest)

    if not (warm / "config.json").exists():
        start = {"step": 0, **evaluate_warmstart(policy, cfg)}
        _log(f"untrained: {start}; cloning {len(records)} turns of {len(won)} games ({sum(won.values())} won)")
        curve_file.write_text(json.dumps(start) + "\n")
        clone(policy, records, cfg.bc_steps, cfg.bc_lr, 0, warm)
    previous = warm
    for r in range(1, cfg.dagger_rounds + 1):  # DAgger: label the states the policy itself reaches
        labels, dest = out / f"dagger{r}.jsonl.gz", out / f"dagger{r}"
        if not (dest / "config.json").exists():
            policy = load_policy(str(previous), torch.device("cpu"))
            if not labels.exists():
                from sdar_envs.alfworld.env import AlfworldEnv

                env = AlfworldEnv(split="train")
                games = random.Random(1000 + r).sample(env.task_ids(), cfg.dagger_games)
                env.close()
                _log(f"DAgger round {r}: the policy plays {len(games)} train games, the demonstrator labels")
                write_records(labels, policy_states(policy, codec, games, cfg, seed=r))
            data = records + [x for k in range(1, r + 1) for x in read_records(out / f"dagger{k}.jsonl.gz")]
            _log(f"DAgger round {r}: cloning on {len(data)} turns")
            clone(policy, data, cfg.dagger_steps, cfg.dagger_lr, cfg.bc_steps + (r - 1) * cfg.dagger_steps, dest)
        previous = dest
    report(cfg, out)
    return previous


def report(cfg: AlfworldWarmStartConfig, out: Path) -> Path:
    """``report.md`` and ``curve.png`` from ``curve.jsonl``."""
    from sdar_train.report import save_figure

    points = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines() if line.strip()]
    evals = [p for p in points if "success" in p]
    types = sorted({t for p in evals for t in p.get("per_task_type", {})})
    lines = [
        "# ALFWorld warm start: behaviour cloning on the prompt-only demonstrator",
        "",
        f"Model: Qwen2, {cfg.hidden_size} wide, {cfg.layers} layers, {cfg.vocab_size} BPE; "
        f"{cfg.demo_games} demonstrated train games; {cfg.bc_steps} steps x {cfg.bc_batch}, lr {cfg.bc_lr}.",
        *(
            [
                f"Then {cfg.dagger_rounds} DAgger round(s), steps {cfg.bc_steps} onwards: the policy plays "
                f"{cfg.dagger_games} train games at temperature {cfg.eval_temperature}, the demonstrator labels "
                f"every prompt it met, and cloning goes on over all labels so far for {cfg.dagger_steps} steps "
                f"(lr {cfg.dagger_lr}).",
            ]
            if cfg.dagger_rounds
            else []
        ),
        f"Held-out: {evals[0]['episodes'] if evals else cfg.eval_games} valid_unseen games evenly spaced over "
        f"the split, temperature {cfg.eval_temperature}, seed 0.",
        "",
        "| step | success | inadmissible | " + " | ".join(types) + " |",
        "|---|---|---|" + "---|" * len(types),
    ]
    for p in evals:
        per = p.get("per_task_type", {})
        cells = [f"{per[t]['success']:.2f}" if t in per else "" for t in types]
        lines.append(
            f"| {p['step']} | {p['success']:.3f} | {p.get('inadmissible_rate', float('nan')):.2f} | "
            + " | ".join(cells)
            + " |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    losses = [p for p in points if "loss" in p]
    left.plot([p["step"] for p in losses], [p["loss"] for p in losses])
    left.set_title("behaviour-cloning loss (responses)")
    right.plot([p["step"] for p in evals], [p["success"] for p in evals], marker="o", label="success")
    right.plot(
        [p["step"] for p in evals], [p.get("inadmissible_rate", 0) for p in evals], marker="x", label="inadmissible"
    )
    right.axhline(0.2, color="grey", ls="--", lw=0.8, label="target 0.2")
    right.set_title("held-out valid_unseen")
    right.legend()
    for axis in (left, right):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    save_figure(fig, out / "curve.png")
    lines += ["", "![curve](curve.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from sdar_train.miniature.replicate import parse_config

    run(parse_config(AlfworldWarmStartConfig, argv, __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
