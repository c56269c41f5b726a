"""A CPU miniature of the SDAR paper's comparison on WebShop, one resumable command:

    python -m sdar_train.miniature.replicate --out runs/replicate        # or: make replicate

Stages (each skipped when its output exists, so an interrupted run continues where it stopped):

1. ``model/``: a small Qwen2 with a byte-level BPE trained on WebShop's own text (prompts of the
   demonstrator's episodes), built locally, nothing downloaded.
2. ``demos.jsonl.gz``: demonstrations on WebShop's train goals by :mod:`sdar_train.miniature.demonstrator`,
   which reads only the prompt. Half of the episodes are careful (search the whole instruction, choose
   the options it names), shown with the skills in view (the teacher's prompt: the packaged WebShop
   skills before the chat text). The other half are shown without skills: 60% careless (search the
   product without its attributes, buy without choosing options), 40% careful all the same, so the
   student samples the careful habit at times but prefers the careless one. So the skills carry what
   separates the two habits, a model trained from scratch learns to read them, and the teacher knows
   what the student does not: the paper's premise, built in (see ``docs/REPLICATION.md``; ``--careless
   no_options --careful_without_skills 0`` is the first construction, whose teacher was barely better).
3. ``warmstart/``: behaviour cloning on those pairs (token NLL on responses only), with its curve.
4. ``premise.json``: held-out test success of the warm start without skills (the student) and with
   them in its prompt as the teacher sees them. SDAR has something to distil only if the teacher wins more.
5. ``arms/<algo>-s<seed>/``: GRPO, SDAR and GRPO+OPSD (ungated) from the same warm start, one run per
   seed, the same task stream per seed, held-out evaluation every ``eval_every`` steps.
6. ``report.md``, ``curves.png``, ``diagnostics.png``: success per arm (mean and 95% interval over
   seeds, start and end) and SDAR's gate and gap statistics over training.

Held-out evaluation everywhere: ``eval_episodes`` WebShop test goals evenly spaced over the first 500
(the split the paper reports), temperature 0.4, seed = the run's seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import random
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from sdar_envs import EnvPool
from sdar_train.batching import micro_batches
from sdar_train.config import add_field_flags
from sdar_train.losses import selective_log_softmax, sft_loss
from sdar_train.miniature.arms import (
    ArmRun,
    ArmRunFailed,
    Curves,
    check_comparison,
    diagnostics_table,
    outcome_table,
    plot_curves,
    plot_diagnostics,
    run_arms,
)
from sdar_train.miniature.arms import collect_curves as arm_curves
from sdar_train.miniature.demonstrator import habit_counts, play, read_prompt, webshop_action
from sdar_train.miniature.packaged_warmstart import WARMSTART, package_warmstart
from sdar_train.policy import Policy, PromptCodec, load_policy, pack
from sdar_train.report import mean_interval
from sdar_train.seeding import derive_seed

if TYPE_CHECKING:
    from sdar_train.rollout import Episode, Generate, Skills, TurnSample

__all__ = [
    "ReplicateConfig",
    "behaviour_cloning",
    "build_small_qwen2",
    "collect_demonstrations",
    "demonstration_turns",
    "arm_runs",
    "main",
    "parse_config",
    "read_records",
    "run",
    "write_records",
]

ENV = "SDAR/WebShop-v0"
RESPONSE = "<think></think><action>{}</action>"  # the env's format rule: a <think> block, then the action
MODES = ("careful_skills", "careless", "careful")  # careful: shown without skills (careful_without_skills > 0)
T = TypeVar("T")


@dataclass
class ReplicateConfig:
    out: str = field(default="runs/replicate", metadata={"help": "where every stage writes"})
    # the model
    vocab_size: int = field(default=8192, metadata={"help": "BPE vocabulary trained on WebShop text"})
    hidden_size: int = field(default=128, metadata={"help": "Qwen2 width"})
    layers: int = field(default=2, metadata={"help": "Qwen2 layers"})
    # the warm start
    demo_goals: int = field(default=600, metadata={"help": "train goals demonstrated (one episode each)"})
    bc_steps: int = field(default=600, metadata={"help": "behaviour-cloning optimiser steps"})
    bc_batch: int = field(default=16, metadata={"help": "turn samples per behaviour-cloning step"})
    bc_lr: float = field(default=3e-3, metadata={"help": "behaviour-cloning peak learning rate (cosine decay)"})
    bc_prompt_lm: int = field(
        default=64, metadata={"help": "next-token loss at this many random prompt positions per sample (0: off)"}
    )
    bc_eval_every: int = field(default=300, metadata={"help": "held-out evaluation of the warm start every N steps"})
    # held-out evaluation
    eval_episodes: int = field(default=50, metadata={"help": "test goals per evaluation (evenly spaced, fixed)"})
    eval_temperature: float = field(default=0.4, metadata={"help": "the reference's evaluation temperature"})
    # the RL arms
    arms: list[str] = field(default_factory=lambda: ["grpo", "sdar", "opsd"], metadata={"help": "algorithms"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "one run per arm and seed"})
    rl_steps: int = field(default=20, metadata={"help": "RL steps per run"})
    eval_every: int = field(default=5, metadata={"help": "held-out evaluation every N RL steps"})
    tasks_per_step: int = field(default=4, metadata={"help": "B"})
    group_size: int = field(default=4, metadata={"help": "G"})
    rl_lr: float = field(default=1e-4, metadata={"help": "RL learning rate"})
    rl_temperature: float = field(
        default=0.5,
        metadata={"help": "rollout temperature of the RL arms (at 1.0 most turns were inadmissible clicks)"},
    )
    sdar_coef: float = field(default=0.1, metadata={"help": "lambda of the distillation term"})
    train_reward: str = field(
        default="return",
        metadata={
            "help": "return: 10 x the WebShop score (dense; the tiny warm start never buys the exact target, "
            "so the official won gives every episode 0); won: 10 x (score == 1), the reference's"
        },
    )
    max_prompt_tokens: int = field(default=2048, metadata={"help": "prompt budget (WebShop prompts fit whole)"})
    max_response_tokens: int = field(default=64, metadata={"help": "tokens per turn"})
    threads: int = field(
        default=1, metadata={"help": "torch threads per arm run (the stages before the arms use threads x parallel)"}
    )
    parallel: int = field(
        default=2,
        metadata={"help": "arm runs at once, each a process with `threads` torch threads (cores = parallel x threads)"},
    )
    careless: str = field(
        default="vague",
        metadata={
            "help": "the careless habit the skills correct: no_options (buy without choosing options) or vague "
            "(also search the product without its attributes: the instruction up to its first ' with ')"
        },
    )
    careful_without_skills: float = field(
        default=0.4,
        metadata={
            "help": "share of the episodes shown without skills that are careful all the same (0: the skills "
            "alone separate the habits, so the student hardly ever samples the careful one)"
        },
    )
    package: bool = field(
        default=False, metadata={"help": "copy the warm start into sdar_train/miniature/warmstart (the demo's)"}
    )

    def __post_init__(self) -> None:
        from sdar_train.errors import ConfigError

        for name in (
            "demo_goals",
            "bc_steps",
            "bc_batch",
            "eval_episodes",
            "rl_steps",
            "tasks_per_step",
            "threads",
            "parallel",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rl_temperature <= 0:
            raise ConfigError(f"rl_temperature must be > 0, got {self.rl_temperature}")
        check_comparison(self.arms, self.seeds, self.group_size, self.train_reward)
        if self.careless not in ("no_options", "vague"):
            raise ConfigError(f"careless must be no_options or vague, got {self.careless!r}")
        if not 0.0 <= self.careful_without_skills < 1.0:
            raise ConfigError(f"careful_without_skills must be in [0, 1), got {self.careful_without_skills}")


# --- stage 1 and 2: demonstrations and the model ----------------------------------------------------------
def episode_mode(task: str, seed: int, careful_without_skills: float = 0.0) -> str:
    """Which of :data:`MODES` an episode's demonstration is, fixed by its instruction and the seed: half are
    careful with skills; of the other half, a ``careful_without_skills`` share is careful, the rest careless."""
    key = zlib.crc32(task.encode())
    if derive_seed(seed, "mode", key) % 2 == 0:
        return "careful_skills"
    share = derive_seed(seed, "unskilled mode", key) % 10_000 / 10_000
    return "careful" if share < careful_without_skills else "careless"


def collect_demonstrations(
    codec: PromptCodec,
    task_ids: Sequence[str],
    *,
    seed: int = 0,
    max_prompt_tokens: int = 1 << 20,
    careless: str = "no_options",
    careful_without_skills: float = 0.0,
) -> list[dict[str, Any]]:
    """One demonstrated episode per train goal; returns one record per turn: ``prompt`` and ``response``
    token ids, ``mode`` (:data:`MODES`), ``task_id``. ``careful_skills`` turns carry the teacher's prompt
    (skills before the chat text), the others the student's. Prompts are the rollout's own, made by the
    same code. ``careless``: the habit of careless episodes (see :class:`ReplicateConfig`)."""
    from sdar_train.rollout import default_memory

    def mode_of(task: str) -> str:
        return episode_mode(task, seed, careful_without_skills)

    def demonstrate(prompts: list[list[int]], _seed: int) -> list[list[int]]:
        out = []
        for ids in prompts:
            view = read_prompt(codec.decode(ids))
            careful = mode_of(view.task) != "careless"
            command = webshop_action(view, careful=careful, vague_search=careless == "vague")
            out.append(codec.encode_response(RESPONSE.format(command)))
        return out

    records: list[dict[str, Any]] = []
    memory = default_memory(ENV, "keyword", seed, None)
    for ep, s in demonstration_turns(
        ENV, codec, task_ids, demonstrate, seed=seed, max_prompt_tokens=max_prompt_tokens, memory=memory
    ):
        mode = mode_of(ep.task)
        prompt = s.teacher_prompt_ids if mode == "careful_skills" and s.teacher_prompt_ids else s.prompt_ids
        records.append(
            {"task_id": ep.task_id, "mode": mode, "won": ep.won, "prompt": prompt, "response": s.response_ids}
        )
    return records


def demonstration_turns(
    env_id: str,
    codec: PromptCodec,
    task_ids: Sequence[str],
    demonstrate: Generate,
    *,
    seed: int,
    max_prompt_tokens: int,
    memory: Skills | None = None,
    seed_label: str = "demos",
    chunk: int = 100,
) -> Iterator[tuple[Episode, TurnSample]]:
    """One episode per train task of ``env_id``, played by ``demonstrate`` in place of the model through
    the rollout's own code (so the prompts are the policy's), ``chunk`` episodes at a time; yields each
    turn with its episode. With ``memory``, every turn also carries the teacher's prompt."""
    from sdar_train.rollout import PromptSpec, collect_rollout

    prompts = PromptSpec(max_prompt_tokens, max_prompt_tokens, memory=memory, teacher=memory is not None)
    with EnvPool(env_id, chunk, num_workers=0, env_kwargs={"split": "train"}) as pool:
        for start in range(0, len(task_ids), chunk):
            rollout = collect_rollout(
                pool,
                env_id,
                list(task_ids[start : start + chunk]),
                1,
                codec=codec,
                generate=demonstrate,
                seed=derive_seed(seed, seed_label, start),
                prompts=prompts,
            )
            for s in rollout.samples:
                yield rollout.episodes[s.episode], s


def _demo_texts(n: int = 300, seed: int = 0) -> Iterator[str]:
    """The tokenizer's training text: the prompts and actions of ``n`` demonstrated train episodes."""
    from sdar_envs.webshop.env import WebShopEnv
    from sdar_train.tiny_model import _training_text
    from skills.store import seed_bank_path

    env = WebShopEnv(split="train")
    ids = env.task_ids()
    rng = random.Random(seed)
    yield seed_bank_path("webshop").read_text(encoding="utf-8")
    for tid in rng.sample(ids, min(n, len(ids))):
        turns, _ = play(env, tid, response=RESPONSE)
        for text, action in turns:
            yield text
            yield action
    env.close()
    yield from _training_text()  # the suite's other text, so the model can still be pointed at any env


def build_model(cfg: ReplicateConfig, path: Path) -> Path:
    return build_small_qwen2(path, cfg.vocab_size, cfg.hidden_size, cfg.layers, _demo_texts())


def build_small_qwen2(path: Path, vocab_size: int, hidden_size: int, layers: int, texts: Iterable[str]) -> Path:
    """The miniature's model shape: a Qwen2 with a head per 32 of width, half as many key/value heads, and
    a BPE trained on ``texts``."""
    from sdar_train.tiny_model import build_tiny_model

    heads = max(2, hidden_size // 32)
    return build_tiny_model(
        path,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=max(1, heads // 2),
        texts=texts,
    )


# --- stage 3: behaviour cloning ---------------------------------------------------------------------------
def prompt_lm_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    hidden: torch.Tensor,
    prompt_width: int,
    k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Mean next-token NLL at ``k`` random positions per row inside the (left-padded) prompts.

    WebShop prompts repeat what the actions must copy (the instruction in the first observation, every
    ASIN and option value in the admissible list), so a little language modelling on them teaches a
    model trained from scratch to copy far sooner than the few response tokens per turn do."""
    real = (attention_mask[:, : prompt_width - 1] * attention_mask[:, 1:prompt_width]).float()
    rows, cols = [], []
    for i in range(real.size(0)):
        if real[i].sum() == 0:
            continue
        picked = torch.multinomial(real[i], min(k, int(real[i].sum())), replacement=False, generator=generator)
        rows.append(torch.full_like(picked, i))
        cols.append(picked)
    if not rows:
        return hidden.sum() * 0.0
    r, c = torch.cat(rows).to(hidden.device), torch.cat(cols).to(hidden.device)
    logits = model.get_output_embeddings()(hidden[r, c])
    return torch.nn.functional.cross_entropy(logits.float(), input_ids.to(hidden.device)[r, c + 1])


def behaviour_cloning(
    policy: Policy,
    records: Sequence[dict[str, Any]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    micro_batch: int = 8,
    prompt_lm: int = 0,
    on_step: Any = None,
) -> list[float]:
    """Token-mean NLL of the response tokens under AdamW with a linear warm-up and cosine decay, batches
    drawn without replacement epoch after epoch; plus, with ``prompt_lm`` > 0, next-token NLL at that many
    random prompt positions per sample (:func:`prompt_lm_loss`; a warm-start aid, the RL stage trains
    responses only). ``on_step(step, loss)`` is called after each step; returns the response losses."""

    model = policy.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    rng = random.Random(seed)
    positions = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    for step in range(steps):
        batch = []
        for _ in range(batch_size):
            if not order:
                order = list(range(len(records)))
                rng.shuffle(order)
            batch.append(records[order.pop()])
        tokens = sum(len(r["response"]) for r in batch)
        total = 0.0
        # length-sorted micro-batches closed at 10% padding: attention over WebShop's pages is quadratic
        # in the padded width, and the sum over micro-batches is the same gradient
        lengths = [(len(r["prompt"]), len(r["response"])) for r in batch]
        # (left-padded: the response columns and the prompt LM loss below read that layout)
        for rows in micro_batches(lengths, max_rows=micro_batch, max_padding=0.1, right_padded=False):
            part = [batch[i] for i in rows]
            packed = pack([r["prompt"] for r in part], [r["response"] for r in part], policy.pad_id, right_padded=False)
            width = packed.targets.size(1)
            hidden = model.get_decoder()(
                input_ids=packed.input_ids.to(policy.device),
                attention_mask=packed.attention_mask.to(policy.device),
                position_ids=packed.position_ids.to(policy.device),
            ).last_hidden_state
            logits = model.get_output_embeddings()(hidden[:, -width - 1 : -1])  # column j predicts response token j
            logp = selective_log_softmax(logits, packed.targets.to(policy.device))
            loss = sft_loss(logp, packed.mask.to(policy.device), normalizer=tokens)
            total += float(loss.detach())
            if prompt_lm > 0:
                prompt_width = packed.input_ids.size(1) - width
                lm = prompt_lm_loss(
                    model, packed.input_ids, packed.attention_mask, hidden, prompt_width, prompt_lm, positions
                )
                loss = loss + lm * len(part) / len(batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        if on_step is not None:
            on_step(step + 1, total)
    model.eval()
    return losses


def evaluate_policy(
    policy: Policy, cfg: ReplicateConfig, *, seed: int = 0, skills: bool = False, episodes: int | None = None
) -> dict[str, Any]:
    """Held-out success on the test goals; ``skills``: the prompt the SDAR teacher sees (the packaged skills
    before the chat text)."""
    from sdar_train.eval import evaluate
    from sdar_train.rollout import PromptSpec, default_memory

    memory = default_memory(ENV, "keyword", seed, None) if skills else None
    return evaluate(
        policy,
        ENV,
        env_kwargs={"split": "test"},
        episodes=episodes or cfg.eval_episodes,
        temperature=cfg.eval_temperature,
        seed=seed,
        max_response_tokens=cfg.max_response_tokens,
        prompts=PromptSpec(
            cfg.max_prompt_tokens,
            cfg.max_prompt_tokens + 512,
            memory=memory,
            student_skills=memory is not None,
            student_placement="before_chat",
        ),
    )


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's success, score and invalid-turn rate, with what the policy did (:func:`habit_counts`)."""
    return {
        "success": report["success"],
        "score": report["return"],
        "invalid_rate": report["invalid_rate"],
        "habits": habit_counts(report["results"]),
    }


def _log(msg: str) -> None:
    print(f"[replicate {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Turn records as gzipped JSON lines, written whole or not at all (resumable stages)."""
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records :func:`write_records` wrote."""
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def warm_start(cfg: ReplicateConfig, out: Path) -> Path:
    """Stages 1-3; returns the warm-start model folder."""
    model_dir, demos_file, warm = out / "model", out / "demos.jsonl.gz", out / "warmstart"
    if (warm / "config.json").exists():
        return warm
    t0 = time.time()
    if not (model_dir / "config.json").exists():
        _log(f"building the model ({cfg.hidden_size} wide, {cfg.layers} layers, {cfg.vocab_size} BPE)")
        build_model(cfg, model_dir)
    policy = load_policy(str(model_dir), torch.device("cpu"))
    codec = PromptCodec(policy.tokenizer)
    if not demos_file.exists():
        from sdar_envs.webshop.env import WebShopEnv

        env = WebShopEnv(split="train")
        goals = random.Random(0).sample(env.task_ids(), cfg.demo_goals)
        env.close()
        _log(f"demonstrating {len(goals)} train goals")
        records = collect_demonstrations(
            codec,
            goals,
            max_prompt_tokens=cfg.max_prompt_tokens,
            careless=cfg.careless,
            careful_without_skills=cfg.careful_without_skills,
        )
        write_records(demos_file, records)
    records = read_records(demos_file)
    curve: list[dict[str, Any]] = []
    untrained = _summary(evaluate_policy(policy, cfg, episodes=min(20, cfg.eval_episodes)))
    curve.append({"step": 0, **{f"eval_{k}": v for k, v in untrained.items()}})
    _log(f"untrained: {untrained}; behaviour cloning on {len(records)} turns")

    def on_step(step: int, loss: float) -> None:
        point: dict[str, Any] = {"step": step, "loss": loss}
        if step % cfg.bc_eval_every == 0 or step == cfg.bc_steps:
            point.update({f"eval_{k}": v for k, v in _summary(evaluate_policy(policy, cfg)).items()})
            _log(f"step {step}: {point}")
            policy.model.train()
        curve.append(point)

    behaviour_cloning(
        policy,
        records,
        steps=cfg.bc_steps,
        batch_size=cfg.bc_batch,
        lr=cfg.bc_lr,
        prompt_lm=cfg.bc_prompt_lm,
        on_step=on_step,
    )
    staging = out / "warmstart.tmp"
    policy.model.save_pretrained(staging)
    policy.tokenizer.save_pretrained(staging)
    with open(staging / "curve.jsonl", "w") as f:
        for p in curve:
            f.write(json.dumps(p) + "\n")
    _write_json(staging / "recipe.json", {**dataclasses.asdict(cfg), "demos": len(records), "wall_s": time.time() - t0})
    staging.replace(warm)
    return warm


def premise(cfg: ReplicateConfig, out: Path, warm: Path) -> dict[str, Any]:
    """Stage 4: the warm start's held-out success without and with the skills in its prompt, per seed."""
    path = out / "premise.json"
    if path.exists():
        return json.loads(path.read_text())
    policy = load_policy(str(warm), torch.device("cpu"))
    result: dict[str, Any] = {"episodes": cfg.eval_episodes, "seeds": cfg.seeds, "student": [], "teacher": []}
    for seed in cfg.seeds:
        result["student"].append(_summary(evaluate_policy(policy, cfg, seed=seed)))
        result["teacher"].append(_summary(evaluate_policy(policy, cfg, seed=seed, skills=True)))
        _log(f"premise seed {seed}: student {result['student'][-1]}, teacher {result['teacher'][-1]}")
    _write_json(path, result)
    return result


# --- stage 5: the RL arms ------------------------------------------------------------------------------
BASE_CONFIG = "webshop_base.yaml"  # the official training signal: 10 x won, 0.1 per invalid turn; mini-batches of 64


def arm_settings(cfg: ReplicateConfig, arm: str, seed: int, warm: Path, out_dir: Path) -> dict[str, Any]:
    """The TrainConfig fields of one arm and seed, laid over :data:`BASE_CONFIG`, sized for a CPU."""
    return {
        "algo": arm,
        "model": str(warm),
        "output_dir": str(out_dir),
        "seed": seed,
        "steps": cfg.rl_steps,
        "tasks_per_step": cfg.tasks_per_step,
        "group_size": cfg.group_size,
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "max_teacher_prompt_tokens": cfg.max_prompt_tokens + 512,
        "max_response_tokens": cfg.max_response_tokens,
        "lr": cfg.rl_lr,
        "temperature": cfg.rl_temperature,
        "sdar_coef": cfg.sdar_coef,
        "train_reward": cfg.train_reward,
        "micro_batch_size": 8,
        "generation_batch_size": 64,
        "env_workers": 0,
        "eval_every": cfg.eval_every,
        "eval_episodes": cfg.eval_episodes,
        "eval_temperature": cfg.eval_temperature,
        "save_every": cfg.eval_every,
        "cpu_threads": cfg.threads,
        "progress": False,
    }


def arm_args(cfg: ReplicateConfig, arm: str, seed: int, warm: Path, out_dir: Path) -> list[str]:
    """``python -m sdar_train`` arguments of one arm and seed (:func:`arm_settings`)."""
    args = ["--config", BASE_CONFIG]
    for k, v in arm_settings(cfg, arm, seed, warm, out_dir).items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return args


def _run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "arms" / f"{arm}-s{seed}"


def arm_runs(cfg: ReplicateConfig, out: Path, warm: Path) -> list[ArmRun]:
    """Every arm x seed, seeds outermost so that a short budget still sees every arm."""
    return [
        ArmRun(arm, seed, _run_dir(out, arm, seed), tuple(arm_args(cfg, arm, seed, warm, _run_dir(out, arm, seed))))
        for seed in cfg.seeds
        for arm in cfg.arms
    ]


# --- stage 6: the report --------------------------------------------------------------------------------


def collect_curves(cfg: ReplicateConfig, out: Path) -> Curves:
    """Per arm and seed, the rows of its metrics file, with the warm start's evaluation as step 0."""
    student = json.loads((out / "premise.json").read_text())["student"]
    start = {
        seed: {"eval_success": student[i]["success"], "eval_return": student[i]["score"]}
        for i, seed in enumerate(cfg.seeds)
    }
    return arm_curves([(arm, seed, _run_dir(out, arm, seed), start[seed]) for seed in cfg.seeds for arm in cfg.arms])


def write_report(cfg: ReplicateConfig, out: Path) -> Path:
    """``report.md`` (tables), ``curves.png`` (held-out success and score per arm, bands = 95% intervals over seeds)
    and ``diagnostics.png`` (SDAR's gate and gap statistics and the invalid-turn rate over training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdar_train.report import save_figure

    curves = collect_curves(cfg, out)
    prem = json.loads((out / "premise.json").read_text())
    recipe = json.loads((out / "warmstart" / "recipe.json").read_text())
    lines = [
        "# SDAR miniature on WebShop (CPU)",
        "",
        f"Held-out: {cfg.eval_episodes} WebShop test goals (evenly spaced over the first 500), temperature "
        f"{cfg.eval_temperature}, one evaluation per seed; 95% t-intervals over seeds {cfg.seeds}. RL: "
        f"{cfg.rl_steps} steps of B={cfg.tasks_per_step} x G={cfg.group_size}, lr {cfg.rl_lr}, rollout temperature "
        f"{cfg.rl_temperature}.",
        "",
        "## Warm start and the premise",
        "",
        f"Behaviour cloning: {recipe['demos']} demonstrated turns, {recipe['bc_steps']} steps x {recipe['bc_batch']}, "
        f"{recipe['wall_s'] / 60:.1f} min.",
        "",
        "| policy | success | score |",
        "|---|---|---|",
    ]
    for who, label in (
        ("student", "warm start, no skills (the student)"),
        ("teacher", "warm start + skills (the teacher)"),
    ):
        s, sh = mean_interval([r["success"] for r in prem[who]])
        c, ch = mean_interval([r["score"] for r in prem[who]])
        lines.append(f"| {label} | {s:.3f} ± {sh:.3f} | {c:.3f} ± {ch:.3f} |")
    lines += ["", "## RL arms from the same warm start", "", *outcome_table(curves, cfg.rl_steps)]
    plot_curves(curves, out / "curves.png", "WebShop test")
    diag = plot_diagnostics(curves, out / "diagnostics.png")
    lines += ["", "## Diagnostics over training (mean over steps and seeds)", "", *diagnostics_table(diag)]
    lines += _habits_table(cfg, out, prem)
    curve = [json.loads(line) for line in (out / "warmstart" / "curve.jsonl").read_text().splitlines() if line.strip()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
    left.plot([p["step"] for p in curve if "loss" in p], [p["loss"] for p in curve if "loss" in p])
    left.set_title("behaviour cloning: response NLL")
    evals = [p for p in curve if "eval_score" in p]
    right.plot([p["step"] for p in evals], [p["eval_score"] for p in evals], marker="o", label="score")
    right.plot([p["step"] for p in evals], [p["eval_success"] for p in evals], marker="o", label="success")
    right.set_title("warm start: held-out score, success")
    right.legend()
    for axis in (left, right):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    save_figure(fig, out / "warmstart.png")
    lines += [
        "",
        "![success](curves.png)",
        "",
        "![diagnostics](diagnostics.png)",
        "",
        "![warm start](warmstart.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _habits_table(cfg: ReplicateConfig, out: Path, prem: dict[str, Any]) -> list[str]:
    """Report lines: what the policies do in the held-out episodes (:func:`habit_counts`), the warm start's
    (from the premise, when it recorded them) and each arm's at its final evaluation, mean over seeds."""
    rows: list[tuple[str, list[dict[str, int]]]] = [
        (f"warm start, {label}", [r["habits"] for r in prem[who] if "habits" in r])
        for who, label in (("student", "no skills (start)"), ("teacher", "with skills (the teacher)"))
    ]
    for arm in cfg.arms:
        ends = [_run_dir(out, arm, seed) / "eval.json" for seed in cfg.seeds]
        rows.append((f"{arm}, end", [habit_counts(json.loads(f.read_text())["results"]) for f in ends if f.exists()]))
    lines = [
        "",
        "## What the policies do (held-out episodes, mean over seeds)",
        "",
        "| policy | seeds | first search without the attributes | option clicks per episode | bought |",
        "|---|---|---|---|---|",
    ]
    for label, counts in rows:
        if counts:
            share = {k: sum(c[k] / c["episodes"] for c in counts) / len(counts) for k in counts[0] if k != "episodes"}
            lines.append(
                f"| {label} | {len(counts)} | {share['vague_search']:.2f} | {share['option_clicks']:.2f} | "
                f"{share['bought']:.2f} |"
            )
    return lines


def run(cfg: ReplicateConfig) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "replicate_config.json", dataclasses.asdict(cfg))
    torch.set_num_threads(cfg.threads * cfg.parallel)  # the stages before the arms have every core
    t0 = time.time()
    warm = warm_start(cfg, out)
    if cfg.package:
        _log(f"packaged the warm start in {package_warmstart(warm, WARMSTART)}")
    premise(cfg, out, warm)
    run_arms(arm_runs(cfg, out, warm), cfg.parallel)
    report = write_report(cfg, out)
    _log(f"report: {report} ({(time.time() - t0) / 60:.1f} min in this invocation)")
    return out


def parse_config(cls: type[T], argv: Sequence[str] | None, description: str | None) -> T:
    """A kit config from command-line flags (:func:`sdar_train.config.add_field_flags`)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_field_flags(p, cls, layered=False)
    return cls(**vars(p.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(parse_config(ReplicateConfig, argv, __doc__))
    except ArmRunFailed as failed:  # already logged with its exit status; one line, no traceback
        print(f"replicate: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
