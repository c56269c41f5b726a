"""One trainer for GRPO, SDAR and the baselines: rollout -> turn scores -> advantages -> teacher pass ->
update, with the training signal of the SDAR reference (docs/FIDELITY.md).

Reads top to bottom in :meth:`Trainer.train_step`. An algorithm only changes which loss terms are on
(:data:`sdar_train.config.ALGORITHMS`):

    L = PPO-dual-clip(A) - entropy_coef * H + kl_coef * KL(pi || ref) + sdar_coef * L_SDAR(beta)

* turn score = the episode's training reward (reward_scale x won), minus invalid_penalty on that turn
  alone when it breaks the format rule;
* A = (score - mean) / (std + 1e-6) over all turn samples of the task's group (``advantage: turn``);
* log-probs of the sampling distribution: logits divided by the rollout temperature;
* mini-batches of ``mini_batch_size`` turn samples, several optimizer steps per training step, the
  ratio taken to the rollout-time policy (old log-probs scored before the first step).

Data parallel through Accelerate: every process runs its share of the B tasks (whole groups), and the
token-mean losses are normalised by the global token count, so the averaged gradient equals the
gradient of the full batch on one process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sdar_envs import EnvPool, env_class, env_name
from sdar_envs.env_worker import failure_summary
from sdar_train import checkpoints
from sdar_train.batching import MicroBatch, plan, right_padded_layout, shared_cost
from sdar_train.config import TrainConfig, resolve_reference_defaults
from sdar_train.errors import CheckpointError, ConfigError, TrainingError
from sdar_train.generation import HFGenerator, Sampling, copy_weights, make_generator
from sdar_train.losses import TOKEN_NORMALISED_TERMS, actor_loss, flat_groups, rlsd_lambda, turn_advantages
from sdar_train.policy import PromptCodec, load_policy, pack, response_logprobs
from sdar_train.precision import choose_bf16
from sdar_train.rollout import PromptSpec, Rollout, TurnSample, collect_rollout, default_memory, expert_rollout
from sdar_train.seeding import derive_seed
from sdar_train.sharding import (
    configure_deepspeed,
    deepspeed_backward,
    full_tensor,
    full_weights,
    is_sharded,
    shard_frozen,
    sharding_on_cpu,
    sharding_problem,
    uses_deepspeed,
)
from skills import SkillLibrary

__all__ = ["CheckpointError", "Trainer", "TurnBatch", "response_format"]


@dataclass
class TurnBatch:
    """This process's turn samples of one training step, as the update consumes them: one row each,
    indexed together (as CleanRL carries its ``b_*`` buffers). Log-prob tensors are response-aligned
    ``[n, R]``, scored with the rollout-time weights; ``old_logp=None`` means the update takes a single
    optimizer step, whose old log-probs are the current ones."""

    prompts: list[list[int]]
    responses: list[list[int]]
    advantages: torch.Tensor  # [n], one per turn sample, broadcast to its response tokens
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None  # the frozen reference (KL)
    teacher_logp: torch.Tensor | None = None  # the policy with skills in its prompt

    def __len__(self) -> int:
        return len(self.prompts)


def response_format(expert_action: str, format_valid: Callable[[str], bool] | None = None) -> str:
    """What the policy should emit for an expert action (SFT targets): a tagged action stays as it is, a bare
    command goes into ``<action>`` tags, and, where the env's format rule (``format_valid``) wants a
    ``<think>`` block too (ALFWorld, WebShop), an empty one goes first, so demonstrations are valid turns."""
    text = expert_action if expert_action.lstrip().startswith("<") else f"<action>{expert_action}</action>"
    if format_valid is not None and not format_valid(text):
        text = "<think></think>" + text
    return text


class _DropTiedWeightNotice(logging.Filter):
    """Accelerate reports on every save that the tied lm_head is stored once: expected, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_DropTiedWeightNotice())


def _launcher_processes() -> int | None:
    """``--num_processes N`` of the ``accelerate launch`` that started this process, if any (Linux)."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not any(a.endswith("accelerate") for a in argv) or "launch" not in argv:
        return None
    for flag in ("--num_processes", "--num-processes"):
        if flag in argv and argv.index(flag) + 1 < len(argv) and argv[argv.index(flag) + 1].isdigit():
            return int(argv[argv.index(flag) + 1])
    return None


class Trainer:
    """GRPO, SDAR and the baselines on one Accelerate set-up: the policy (HF model, optionally LoRA), its
    frozen reference, a generation back-end, this process's environments (an :class:`EnvPool`) and the
    skill memory. :meth:`train` runs :meth:`train_step` ``steps`` times with logging, evaluation and
    checkpoints; everything is built in ``__init__`` from a validated :class:`TrainConfig`."""

    def __init__(self, config: TrainConfig) -> None:
        self.cfg = resolve_reference_defaults(config)
        self._setup_accelerator()
        self._setup_output_dir()
        own_copy = self._setup_policy()
        self._setup_generator(own_copy)
        self._setup_environments()
        self._setup_skills()
        self._setup_logging()
        self.step = 0
        if self.cfg.resume:
            self._resume()

    def _setup_accelerator(self) -> None:
        """Accelerate (DDP, FSDP2 or DeepSpeed; bf16 autocast or fp32), refusing set-ups that would train wrongly."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        self.cpu = cpu = not torch.cuda.is_available()
        self.bf16, why = choose_bf16(cfg.bf16, cuda=not cpu, model=cfg.model)
        bf16 = self.bf16
        wandb = ["wandb"] if "wandb" in cfg.loggers else None  # TensorBoard has its own writer (_setup_logging)
        self.accelerator = acc = Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no", log_with=wandb)
        sharding_on_cpu(acc)  # an FSDP/DeepSpeed config launched on CPU (gloo): Accelerate alone would run DDP
        problem = sharding_problem(acc)
        if problem:  # refuse rather than train wrongly
            raise ConfigError(problem)
        self.sharded = is_sharded(acc)  # parameters sharded (FSDP2, ZeRO-3): every forward is a collective
        self.deepspeed = uses_deepspeed(acc)  # its engine steps the optimizer (sdar_train/sharding.py)
        # a shared prefix makes two forwards of one micro-batch: fine alone, not where forwards are
        # collectives (DDP's buffers, sharded parameters, DeepSpeed's engine), nor under gradient
        # checkpointing (which turns the KV cache off)
        self._share_in_update = (
            cfg.share_prefixes
            and acc.num_processes == 1
            and not self.sharded
            and not self.deepspeed
            and not cfg.gradient_checkpointing
        )
        if self.deepspeed:
            configure_deepspeed(acc, micro_batch_size=cfg.micro_batch_size, max_grad_norm=cfg.max_grad_norm)
        if cfg.tasks_per_step < acc.num_processes:  # a process without tasks would wait forever in the first all-reduce
            raise ConfigError(
                f"tasks_per_step ({cfg.tasks_per_step}) must be >= the number of processes ({acc.num_processes}): every process plays whole groups"
            )
        if acc.is_main_process:
            print(
                f"[sdar_train] {acc.num_processes} process(es), device {acc.device}, precision {'bf16' if bf16 else 'fp32'} ({why})"
                f"{f', {cfg.cpu_threads} torch threads' if cpu else ''}",
                file=sys.stderr,
                flush=True,
            )
            asked = _launcher_processes()
            if asked and asked > acc.num_processes:
                print(
                    f"[sdar_train] WARNING: accelerate launch asked for {asked} processes but {acc.num_processes} runs. "
                    "On CPU, --cpu starts one process; use: ACCELERATE_USE_CPU=true accelerate launch --multi_gpu "
                    f"--num_processes {asked} -m sdar_train ...",
                    file=sys.stderr,
                    flush=True,
                )
        if cpu:
            torch.set_num_threads(cfg.cpu_threads)
        set_seed(cfg.seed)
        self.world, self.rank = acc.num_processes, acc.process_index

    def _setup_output_dir(self) -> None:
        """``output_dir`` with this run's config.json; a previous run there is resumed or, asked to, removed."""
        cfg, acc = self.cfg, self.accelerator
        self.out = Path(cfg.output_dir)
        previous = [
            self.out / n
            for n in ("metrics.jsonl", "tensorboard", "checkpoints", "eval.json", "curves.png", "final")
            if (self.out / n).exists()
        ] + sorted(self.out.glob("eval-step*.json"))
        fresh = not cfg.resume or (cfg.resume == "auto" and checkpoints.latest(self.out) is None)
        if previous and fresh:
            if cfg.resume == "auto":  # nothing complete to resume: what is there is a run that never checkpointed
                self._warn(f"--resume auto: no complete checkpoint in {self.out}; starting fresh")
            elif not cfg.overwrite:  # appending would mix two runs in one metrics file
                raise ConfigError(
                    f"output_dir {self.out} already holds a run ({previous[0].name}); pass --resume true to continue it, "
                    "--overwrite true to start over, or another --output_dir"
                )
            acc.wait_for_everyone()
            if acc.is_main_process:
                for old in previous:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    def _setup_policy(self) -> bool:
        """The policy (LoRA adapters or all weights), its frozen reference, the optimizer, all prepared by
        Accelerate; returns whether generation needs its own full copy of the weights (under sharding)."""
        cfg, acc = self.cfg, self.accelerator
        # LoRA trains fp32 adapters over a frozen base: in bf16 that base costs half the memory and runs
        # 1.5-2x faster on a CPU with AVX512-BF16 (bench/). Full fine-tuning keeps fp32 master weights
        # under autocast: bf16 weights would round updates of lr 1e-5 away.
        base_dtype = torch.bfloat16 if self.bf16 and cfg.lora_r > 0 else torch.float32
        self.policy = load_policy(
            cfg.model, acc.device, dtype=base_dtype, gradient_checkpointing=cfg.gradient_checkpointing
        )
        model = self.policy.model
        # Under sharding HF generation runs on a full copy of the weights that every update refreshes
        # (sdar_train/sharding.py); vLLM holds its own copy anyway. LoRA over a bf16 base on a CPU does too:
        # there the adapters' small extra matmuls and casts cost a fifth of a decode step and a third of a
        # no-grad forward (measured on SmolLM2), so HF generation and the rollout-time teacher and old-policy
        # passes run on a merged copy (one more bf16 copy of the base, refreshed after every update).
        hf = cfg.spec.sft or cfg.generation_backend == "hf"
        self.merged_copy = not self.sharded and self.cpu and self.bf16 and cfg.lora_r > 0
        own_copy = (self.sharded or self.merged_copy) and hf  # HF generation runs on the copy
        if self.merged_copy and acc.is_main_process:
            passes = "generation and the teacher and old-policy passes" if hf else "the teacher and old-policy passes"
            print(f"[sdar_train] LoRA on CPU: {passes} run on a merged copy", file=sys.stderr, flush=True)
        generation_model = None
        if own_copy or self.merged_copy:
            generation_model = copy.deepcopy(model).eval().requires_grad_(False)
            if self.bf16 and not self.cpu:
                generation_model.to(torch.bfloat16)
        self.ref_model = None
        if cfg.lora_r > 0:  # the reference is the base model: the adapters switched off
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"),
            )
        elif cfg.kl_coef > 0 and not cfg.spec.sft:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if self.sharded and self.ref_model is not None:
            self.ref_model = shard_frozen(acc, self.ref_model)
        # generation and evaluation: DDP's wrapper has no generate(), a sharded model cannot generate
        self.policy.model = generation_model if generation_model is not None else acc.unwrap_model(self.model)
        self.codec = PromptCodec(self.policy.tokenizer)
        return own_copy

    def _setup_generator(self, own_copy: bool) -> None:
        """HF generate on the policy, or a vLLM engine holding a copy that ``sync()`` refreshes."""
        cfg = self.cfg
        self.sampling = Sampling(cfg.max_response_tokens, cfg.temperature, cfg.top_p, tuple(self.policy.stop_ids))
        # every log-prob (student, old, reference, teacher) is of the distribution the rollout sampled from,
        # logits / temperature, as the reference's actor computes them; SFT fits the demonstrations at 1
        self.logit_temperature = 1.0 if cfg.spec.sft else cfg.temperature
        prompt_budget = cfg.max_teacher_prompt_tokens if cfg.spec.student_skills else cfg.max_prompt_tokens
        self.generator = make_generator(
            "hf" if cfg.spec.sft else cfg.generation_backend,
            self.policy,
            model=cfg.model,  # SFT samples only to evaluate
            batch_size=cfg.generation_batch_size,
            own_copy=own_copy,
            max_model_len=prompt_budget + cfg.max_response_tokens,
            bf16=self.bf16,
            seed=cfg.seed,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            distributed=self.world > 1,
            share_prompts=cfg.share_prefixes,
            logprobs=cfg.rollout_logprobs and (cfg.spec.policy_gradient or cfg.spec.rlsd),
        )

    def _setup_environments(self) -> None:
        """This process's share of the B tasks, G episodes each (one each for demonstrations)."""
        cfg = self.cfg
        self.local_tasks = math.ceil(cfg.tasks_per_step / self.world)
        env_kwargs = dict(cfg.env_kwargs)
        if cfg.max_turns is not None:
            env_kwargs["max_steps"] = cfg.max_turns
        if cfg.spec.sft:  # what the env needs to demonstrate (declared by the env class)
            env_kwargs = {**getattr(env_class(cfg.env), "demonstration_kwargs", {}), **env_kwargs}
        slots = self.local_tasks * (1 if cfg.spec.sft else cfg.group_size)
        self.pool = EnvPool(cfg.env, slots, num_workers=cfg.env_workers, env_kwargs=env_kwargs)
        self.task_ids: list[str] = self.pool.call("task_ids")[0]

    def _setup_skills(self) -> None:
        """The skill memory, where the algorithm shows skills to anyone (and the log says which and where)."""
        cfg = self.cfg
        uses_skills = cfg.spec.teacher or cfg.spec.student_skills or (cfg.spec.sft and cfg.sft_skills_share > 0)
        self.memory = (
            default_memory(cfg.env, cfg.skill_tier, cfg.seed, cfg.skill_file, cfg.skill_dir) if uses_skills else None
        )
        if uses_skills and self.accelerator.is_main_process:
            source = (
                f"reference folder {cfg.skill_dir}"
                if cfg.skill_dir
                else (cfg.skill_file or f"seed banks, {cfg.skill_tier} retrieval")
            )
            where = (
                "student's user message"
                if cfg.spec.student_skills
                else f"teacher prompt, {cfg.teacher_placement}"
                + (f", {cfg.sft_skills_share:.0%} of demonstrations" if cfg.spec.sft else "")
            )
            print(f"[{cfg.algo}] skills: {source}; placement: {where}")
        self.prompts = PromptSpec(
            max_prompt_tokens=cfg.max_prompt_tokens,
            max_teacher_prompt_tokens=cfg.max_teacher_prompt_tokens,
            memory=self.memory,
            skills_k=cfg.skills_k,
            teacher=cfg.spec.teacher,
            student_skills=cfg.spec.student_skills,
            teacher_placement=cfg.teacher_placement,
        )

    def _setup_logging(self) -> None:
        """metrics.jsonl, and TensorBoard and/or Weights & Biases (``report_to``) under the same names, on the
        main process; progress bars only on a terminal (in a log file they are carriage returns and cursor codes)."""
        acc, cfg = self.accelerator, self.cfg
        self._bars = cfg.progress and acc.is_main_process and sys.stderr.isatty()
        self.metrics_file = self.out / "metrics.jsonl"
        self._tokens: Counter[str] = Counter()  # tokens a step's forwards computed: all, real, unmasked
        self._generation_s = 0.0
        self.tb = None
        if acc.is_main_process and "tensorboard" in cfg.loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        self._wandb = "wandb" in cfg.loggers
        if self._wandb:  # Accelerate's tracker (main process only); offline runs land in output_dir/wandb
            wandb_kwargs = {"dir": str(self.out), "name": self.out.name}
            acc.init_trackers(cfg.wandb_project, config=cfg.to_dict(), init_kwargs={"wandb": wandb_kwargs})

    # ------------------------------------------------------------------------------------------------
    def tasks_for_step(self, step: int) -> list[str]:
        """B tasks drawn from (seed, step) only, so a resumed run sees the same tasks; this rank's share."""
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "tasks", step))
        chosen = rng.choice(len(self.task_ids), size=min(self.cfg.tasks_per_step, len(self.task_ids)), replace=False)
        mine = [self.task_ids[i] for i in chosen][self.rank :: self.world]
        return mine

    def rollout(self, step: int) -> Rollout:
        cfg = self.cfg
        tasks = self.tasks_for_step(step)
        if cfg.spec.sft:
            return expert_rollout(
                self.pool,
                cfg.env,
                tasks,
                codec=self.codec,
                seed=derive_seed(cfg.seed, "demonstrations", step),
                response_format=lambda action: response_format(action, env_class(cfg.env).format_valid),
                prompts=self.prompts,
                skills_share=cfg.sft_skills_share,
            )
        bar = tqdm(desc=f"step {step} rollout", unit="turn", leave=False, disable=not self._bars)

        def gen(prompts: list[list[int]], seed: int) -> list[list[int]]:
            t = time.time()
            try:
                return self.generator(prompts, seed, self.sampling)
            finally:
                self._generation_s += time.time() - t

        try:
            return collect_rollout(
                self.pool,
                cfg.env,
                tasks,
                cfg.group_size,
                codec=self.codec,
                generate=gen,
                seed=derive_seed(cfg.seed, "rollout", step, self.rank),
                prompts=self.prompts,
                on_turn=lambda live: bar.update(1),
            )
        finally:
            bar.close()

    @torch.no_grad()
    def _score(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        responses: list[list[int]],
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        """Response-aligned log-probs ``[n, R]`` without grad, in micro-batches (of ``rows`` only, the others
        left NaN). Sharded, every process runs the same number of forwards (each gathers parameters): a
        process out of samples scores a pad token."""
        was_training = model.training
        model.eval()
        rmax = max(1, max((len(r) for r in responses), default=1))
        out = torch.zeros((len(prompts), rmax))
        if rows is None:
            rows = list(range(len(prompts)))
        else:
            out[sorted(set(range(len(prompts))) - set(rows))] = float("nan")
        # sharded, every forward gathers parameters: a shared prefix (two forwards) could not stay in step
        micros = self._micro_batches(
            prompts, responses, rows, share=self.cfg.share_prefixes and not self.sharded, no_grad=True
        )
        pad = self.policy.pad_id
        for c in range(self._agreed(len(micros)) if self.sharded else len(micros)):
            mb = micros[c] if c < len(micros) else MicroBatch([])
            batch = (
                pack(
                    [prompts[i] for i in mb.rows],
                    [responses[i] for i in mb.rows],
                    pad,
                    shared_prefix=mb.prefix,
                    right_padded=self._right_padded,
                )
                if mb.rows
                else pack([[pad]], [[pad]], pad)
            )
            with self.accelerator.autocast():
                logp, _ = response_logprobs(model, batch, self.accelerator.device, temperature=self.logit_temperature)
            if mb.rows:
                out[mb.rows, : logp.size(1)] = logp.float().cpu()
        model.train(was_training)
        return out

    def train_step(self, step: int) -> dict[str, float]:
        """One training step, top to bottom: rollout, turn scores and advantages, the no-grad passes
        (teacher, reference, old policy), the update, and the metrics averaged over processes."""
        cfg, spec, acc = self.cfg, self.cfg.spec, self.accelerator
        t0 = time.time()
        self._generation_s = 0.0
        # 1. rollout: B x G episodes, one sample per turn
        rollout = self.rollout(step)
        # a failed episode (its environment raised, its worker died or hung, a service stayed down) costs
        # that episode: dropped with the groups it leaves too small to compare (Rollout.without_failed)
        rollout, lost = rollout.without_failed(min_group=2 if cfg.group_size > 1 and not spec.sft else 1)
        failed = [e for e in lost if e.failed is not None]
        if failed:
            self._last_failure = failure_summary(failed[0].failed or "")
            self._warn(
                f"step {step}: {len(failed)} episode(s) failed and were dropped"
                + (
                    f", with {len(lost) - len(failed)} more from groups left too small"
                    if len(lost) > len(failed)
                    else ""
                )
                + ": "
                + "; ".join(sorted({f"{e.task_id}: {failure_summary(e.failed or '')}" for e in failed}))
            )
        grown = self.grow_skills(rollout) if cfg.grow_skills else 0
        t_rollout = time.time() - t0
        metrics = self.learn(rollout, step)
        if cfg.grow_skills:
            metrics["skills_grown"] = float(acc.reduce(torch.tensor(float(grown), device=acc.device), reduction="mean"))
        lost_counts = torch.tensor([float(len(failed)), float(len(lost))], device=acc.device)
        episodes_failed, episodes_dropped = (float(x) for x in acc.reduce(lost_counts, reduction="sum"))
        metrics.update(
            step=step,
            episodes_failed=episodes_failed,
            episodes_dropped=episodes_dropped,
            time_s=time.time() - t0,
            rollout_s=t_rollout,
            generation_s=self._generation_s,  # inside rollout_s; the rest of it is environments and prompts
        )
        return metrics

    def learn(self, rollout: Rollout, step: int) -> dict[str, float]:
        """Steps 2-5 of :meth:`train_step` on a collected ``rollout``: turn scores and advantages, the no-grad
        passes, the update and the metrics (benches time it alone, on one rollout, under several settings)."""
        cfg, spec, acc = self.cfg, self.cfg.spec, self.accelerator
        t0 = time.time()
        # of every forward over turn samples (padding_share; unmasked_share: computed with no attention mask)
        self._tokens = Counter()
        # 2. turn scores (episode reward, an invalid turn's own penalty) -> group-relative advantages
        use_won = cfg.train_reward == "won"
        assert cfg.reward_scale is not None and cfg.invalid_penalty is not None  # resolve_reference_defaults set them
        scores = torch.tensor(rollout.turn_scores(cfg.reward_scale, cfg.invalid_penalty, use_won, cfg.invalid_rule))
        groups = torch.tensor([rollout.episodes[s.episode].group for s in rollout.samples])
        episodes = torch.tensor([s.episode for s in rollout.samples])
        if spec.policy_gradient and len(scores):
            all_adv = turn_advantages(scores, groups, episodes, cross_steps=cfg.advantage == "turn")
            flat = flat_groups(all_adv, groups)
        else:
            all_adv = torch.zeros_like(scores)
            flat = torch.zeros(len(scores), dtype=torch.bool)
        keep = [j for j, s in enumerate(rollout.samples) if s.response_ids and not (cfg.skip_flat_groups and flat[j])]
        samples: list[TurnSample] = [rollout.samples[j] for j in keep]
        adv = all_adv[keep] if keep else torch.zeros(0)
        prompts, responses = [s.prompt_ids for s in samples], [s.response_ids for s in samples]
        # 3. no-grad passes with the rollout-time weights: teacher (skills + prompt), reference, and the
        # old policy whenever the update takes more than one optimizer step
        t1 = time.time()
        unwrapped = acc.unwrap_model(self.model)
        # (sharded, every process runs every pass, samples or not: the forwards meet in collectives)
        run = bool(samples) or self.sharded
        # the rollout-time policy: the merged copy generation ran on, where there is one (LoRA on a CPU)
        rollout_policy = self.policy.model if self.merged_copy else unwrapped
        teacher = (
            self._score(rollout_policy, [s.teacher_prompt_ids or [] for s in samples], responses)
            if spec.teacher and run
            else None
        )
        t_pass = {"teacher_pass_s": time.time() - t1}
        t = time.time()
        ref = None
        if run and self.ref_model is not None:
            ref = self._score(self.ref_model, prompts, responses)
        elif run and cfg.lora_r > 0 and cfg.kl_coef > 0:  # LoRA: the reference is the base model, adapters off
            with unwrapped.disable_adapter():
                ref = self._score(unwrapped, prompts, responses)
        t_pass["reference_pass_s"], t = time.time() - t, time.time()
        steps_per_update = cfg.ppo_epochs * self._agreed(math.ceil(len(samples) / cfg.mini_batch_size))
        # (only the PPO ratio and RLSD's gap read them: behaviour cloning and distillation alone need none)
        need_old = run and (spec.rlsd or (spec.policy_gradient and steps_per_update > 1))
        # the first mini-batch is updated with the rollout-time weights: its old log-probs are its own
        # forward's, detached (the update fills them in), so the old policy scores only the rest
        orders = self._update_orders(len(samples), step)
        first = set(orders[0][: cfg.mini_batch_size]) if orders and orders[0] else set()
        rest = [i for i in range(len(samples)) if i not in first]
        old = None
        if need_old:
            # the rest's as the sampler recorded them (rollout_logprobs), or scored where it recorded none
            old, missing = self._recorded_logprobs(samples, rest)
            if self._agreed(len(missing)):  # sharded, every process joins the pass
                scored = self._score(rollout_policy, prompts, responses, missing)
                old[missing] = scored[missing, : old.size(1)]
        t_pass["old_policy_pass_s"] = time.time() - t
        t_teacher = time.time() - t1
        # 4. update: token-mean losses normalised by the global token count of each mini-batch
        t = time.time()
        batch = TurnBatch(prompts, responses, adv, old_logp=old, ref_logp=ref, teacher_logp=teacher)
        stats = self.update(batch, step, orders=orders)
        t_pass["update_s"] = time.time() - t
        self._sync_rollout_weights()  # the next rollout samples from the updated weights
        # 5. metrics: rollout statistics and loss terms averaged over processes
        rewards = rollout.episode_rewards(cfg.reward_scale, use_won)
        outcomes = {**rollout.metrics(), "reward": float(np.mean(rewards)) if rewards else 0.0}
        if spec.sft:  # the episodes are the expert's demonstrations: label their outcomes as such
            outcomes = {f"demo_{k}": v for k, v in outcomes.items()}
        metrics = {**outcomes, **{k: float(np.mean(v)) for k, v in stats.items()}}
        if spec.policy_gradient:  # groups with no advantage: the share of a step's groups that teach nothing
            metrics["flat_group_share"] = len(set(groups[flat].tolist())) / max(len(set(groups.tolist())), 1)
        if spec.rlsd:
            metrics["rlsd_lambda"] = rlsd_lambda(step, cfg.rlsd_lambda, cfg.rlsd_warmdown_steps)
        metrics = {
            k: float(acc.reduce(torch.tensor(v, device=acc.device), reduction="mean"))
            for k, v in sorted(metrics.items())
        }
        metrics.update(
            samples=len(samples) * self.world,
            learn_s=time.time() - t0,  # steps 2-5: the passes and the update
            teacher_s=t_teacher,  # all the no-grad passes; each one below
            **t_pass,
            padding_share=1.0 - self._tokens["real"] / max(self._tokens["computed"], 1),
            unmasked_share=self._tokens["unmasked"] / max(self._tokens["computed"], 1),
            tokens_computed=float(
                self._tokens["computed"]
            ),  # by every forward over turn samples (a shared prefix once)
        )
        return metrics

    def _recorded_logprobs(self, samples: list[TurnSample], rows: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Old log-probs ``[n, R]`` as :meth:`_score` lays them out (rows outside ``rows`` NaN), filled from
        the log-probs generation recorded where ``rollout_logprobs`` is on; and the rows it recorded none for."""
        rmax = max(1, max((len(s.response_ids) for s in samples), default=1))
        out = torch.full((len(samples), rmax), float("nan"))
        missing = []
        for i in rows:
            recorded = samples[i].response_logprobs if self.cfg.rollout_logprobs else None
            if recorded is None or len(recorded) != len(samples[i].response_ids):
                missing.append(i)
                continue
            out[i] = 0.0
            out[i, : len(recorded)] = torch.tensor(recorded)
        return out, missing

    def grow_skills(self, rollout: Rollout) -> int:
        """Each won episode's commands become a skill in this process's memory (near-duplicates are
        skipped); returns how many were added. Reference-layout skill folders do not grow."""
        from skills import Trajectory, grow_from_trajectory

        if not isinstance(self.memory, SkillLibrary):
            return 0
        command_of, name = env_class(self.cfg.env).command_of, env_name(self.cfg.env)
        added = 0
        for ep in rollout.episodes:
            if ep.won:
                commands = [c for c in (command_of(a) for a in ep.actions) if c]
                added += (
                    grow_from_trajectory(
                        self.memory, Trajectory(name, ep.task, ep.task_type, commands, True, ep.task_id)
                    )
                    is not None
                )
        return added

    def _agreed(self, n: int) -> int:
        """The maximum of ``n`` over processes (every process must run the same number of passes)."""
        acc = self.accelerator
        return int(acc.reduce(torch.tensor(n, device=acc.device), reduction="max")) if self.world > 1 else n

    def _update_orders(self, n: int, step: int) -> list[list[int]]:
        """The order of this process's ``n`` samples in each of the ``ppo_epochs`` passes (seeded by step)."""
        order_rng = random.Random(derive_seed(self.cfg.seed, "order", step))
        orders = []
        for _ in range(self.cfg.ppo_epochs):
            order = list(range(n))
            order_rng.shuffle(order)
            orders.append(order)
        return orders

    def update(
        self,
        batch: TurnBatch,
        step: int,
        *,
        optimizer_step: bool = True,
        orders: list[list[int]] | None = None,
    ) -> dict[str, list[float]]:
        """``ppo_epochs`` passes of mini-batch updates over this process's turn samples (in ``orders``,
        by default :meth:`_update_orders`). Rows of ``batch.old_logp`` that are NaN are scored by the
        first forward over them, detached: only right for rows of the first mini-batch.

        Processes hold different numbers of samples (episodes differ in length), but DDP needs every
        process to run the same number of backward passes: the mini- and micro-batch counts are agreed
        on (the maximum), and a process that runs out joins with zero-loss passes.
        """
        cfg, acc = self.cfg, self.accelerator
        self.model.train()
        stats: dict[str, list[float]] = {}
        agreed = self._agreed
        lam = rlsd_lambda(step, cfg.rlsd_lambda, cfg.rlsd_warmdown_steps)
        for order in orders if orders is not None else self._update_orders(len(batch), step):
            n_mini = agreed(math.ceil(len(order) / cfg.mini_batch_size))
            for m in range(n_mini):
                mini = order[m * cfg.mini_batch_size : (m + 1) * cfg.mini_batch_size]
                # micro-batches of similar lengths (sdar_train/batching.py): each row is padded to its
                # micro-batch's longest prompt and reply, and the mini-batch's gradient is a sum
                micros = self._micro_batches(batch.prompts, batch.responses, mini, share=self._share_in_update)
                local_tokens = torch.tensor(float(sum(len(batch.responses[i]) for i in mini)), device=acc.device)
                global_tokens = acc.reduce(local_tokens, reduction="sum") if self.world > 1 else local_tokens
                normalizer = (global_tokens / self.world).clamp(min=1.0)
                n_micro = agreed(len(micros))
                parts: dict[str, list[float]] = {}
                for c in range(n_micro):
                    micro = micros[c] if c < len(micros) else MicroBatch([])  # (out of rows: a zero-loss pass for DDP)
                    boundary = optimizer_step and c == n_micro - 1
                    self._accumulate(batch, micro, normalizer, parts, lam, boundary=boundary)
                # the mini-batch's value of each term: token-normalised terms add up over its micro-batches
                # (so the logged loss does not depend on the micro-batch size), the others are averaged
                for k, v in parts.items():
                    stats.setdefault(k, []).append(sum(v) if k in TOKEN_NORMALISED_TERMS else sum(v) / len(v))
                if not optimizer_step:
                    continue
                if self.deepspeed:  # its engine clipped and stepped at the boundary
                    grad_norm = float(self.model.get_global_grad_norm())
                else:
                    grad_norm = float(full_tensor(acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)))
                    # a non-finite gradient (the norm is all-reduced: every process decides alike) never
                    # reaches the weights: this optimizer step is skipped, and said so with what was non-finite
                    skipped = not math.isfinite(grad_norm)
                    if skipped:
                        bad = sorted(k for k, v in stats.items() if v and not math.isfinite(v[-1])) or ["gradient"]
                        self._warn(f"step {step}: non-finite {', '.join(bad)}; this optimizer step is skipped")
                    else:
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    stats.setdefault("nonfinite_skipped", []).append(float(skipped))
                    if skipped:
                        continue  # its norm is not a number to average into the step's metrics
                stats.setdefault("grad_norm", []).append(grad_norm)
        return stats

    _last_failure = ""
    # rows without a shared prefix are scored right-padded, with causal attention and no mask
    # (sdar_train.policy.ScoredBatch); False: left-padded, as before it was built (bench/step_cost.py)
    _right_padded = True

    def _micro_batches(
        self,
        prompts: list[list[int]],
        responses: list[list[int]],
        rows: list[int],
        *,
        share: bool = False,
        no_grad: bool = False,
    ) -> list[MicroBatch]:
        """``rows`` cut into micro-batches of similar lengths, or of shared beginnings where that computes
        less (:func:`sdar_train.batching.plan`), counting the tokens each forward computes against those
        that are real (``padding_share``; a shared prefix counts once). ``no_grad``: the scoring passes'
        size (``score_micro_batch_size``)."""
        cfg = self.cfg
        max_rows = cfg.micro_batch_size
        if no_grad:
            max_rows = cfg.score_micro_batch_size or 4 * cfg.micro_batch_size
        cut = plan(
            prompts,
            responses,
            rows,
            max_rows=max_rows,
            max_tokens=cfg.micro_batch_tokens * max_rows // cfg.micro_batch_size,
            max_padding=cfg.max_padding,
            share_prefixes=share,
            right_padded=self._right_padded,
        )
        for mb in cut:
            lengths = [(len(prompts[i]), len(responses[i])) for i in mb.rows]
            computed, real = shared_cost(lengths, mb.prefix, right_padded=self._right_padded)
            self._tokens["computed"] += computed
            self._tokens["real"] += real
            if right_padded_layout(lengths, mb.prefix, right_padded=self._right_padded):
                self._tokens["unmasked"] += computed  # causal attention alone, no mask (policy.pack)
        return cut

    def _no_adapter_casts(self) -> contextlib.AbstractContextManager[Any]:
        """Under bf16 autocast, LoRA's casts of every adapter input to the adapters' fp32 (which autocast then
        casts back) switched off: the same numbers (tested), 4% of SmolLM2's update on an ALFWorld rollout.
        Only around autocast: generation on the adapters without it needs them."""
        if not (self.bf16 and self.cfg.lora_r > 0):
            return contextlib.nullcontext()
        try:
            from peft.helpers import disable_input_dtype_casting
        except ImportError:  # peft < 0.14
            return contextlib.nullcontext()
        return disable_input_dtype_casting(self.accelerator.unwrap_model(self.model))

    def _warn(self, message: str) -> None:
        if self.accelerator.is_main_process:
            print(f"[sdar_train] WARNING: {message}", file=sys.stderr, flush=True)

    def _accumulate(
        self,
        batch: TurnBatch,
        micro: MicroBatch,
        normalizer: torch.Tensor,
        stats: dict[str, list[float]],
        lam: float = 0.0,
        *,
        boundary: bool = False,
    ) -> None:
        """Forward, the loss, backward, for one micro-batch (rows ``micro`` of ``batch``); the optimizer
        steps later (DeepSpeed's engine at the mini-batch's last micro-batch, the ``boundary``)."""
        if not micro.rows:  # this process has no samples left: a zero-loss pass keeps DDP's collectives in step
            pad = self.policy.pad_id
            with self.accelerator.autocast():
                logp, _ = response_logprobs(self.model, pack([[pad]], [[pad]], pad), self.accelerator.device)
            self._backward(logp.sum() * 0.0, boundary)
            return
        rows = micro.rows
        packed = pack(
            [batch.prompts[i] for i in rows],
            [batch.responses[i] for i in rows],
            self.policy.pad_id,
            shared_prefix=micro.prefix,
            right_padded=self._right_padded,
        )
        mask = packed.mask.to(self.accelerator.device)
        rw = mask.size(1)

        def aligned(t: torch.Tensor) -> torch.Tensor:
            return t[rows][:, :rw].to(self.accelerator.device)

        with self.accelerator.autocast(), self._no_adapter_casts():
            logp, ent = response_logprobs(
                self.model, packed, self.accelerator.device, with_entropy=True, temperature=self.logit_temperature
            )
        logp = logp.float()
        assert ent is not None
        if batch.old_logp is not None and torch.isnan(batch.old_logp[rows, 0]).any():
            # not scored beforehand (the first mini-batch, before any optimizer step): this forward's own
            fresh = torch.isnan(batch.old_logp[rows, 0])
            width = min(rw, batch.old_logp.size(1))
            filled = batch.old_logp[rows]
            filled[fresh, :width] = logp.detach().float().cpu()[fresh, :width]
            batch.old_logp[rows] = filled
        old_logp = aligned(batch.old_logp) if batch.old_logp is not None else logp.detach()
        teacher_logp = aligned(batch.teacher_logp) if batch.teacher_logp is not None else None
        ref_logp = aligned(batch.ref_logp) if batch.ref_logp is not None else None
        token_adv = batch.advantages[rows].to(self.accelerator.device)[:, None].expand_as(logp)
        loss, terms = actor_loss(
            logp,
            mask,
            old_logp=old_logp,
            advantages=token_adv,
            ref_logp=ref_logp,
            teacher_logp=teacher_logp,
            entropy=ent,
            normalizer=normalizer,
            **self._loss_settings(lam),
        )
        for k, v in terms.items():
            stats.setdefault(k, []).append(float(v))
        self._backward(loss, boundary)

    def _loss_settings(self, rlsd_share: float) -> dict[str, Any]:
        """The algorithm as :func:`~sdar_train.losses.actor_loss` takes it: which terms are on, and their weights."""
        cfg, spec = self.cfg, self.cfg.spec
        return dict(
            policy_gradient=spec.policy_gradient,
            distill=spec.distill,
            sft=spec.sft,
            rlsd_share=rlsd_share if spec.rlsd else None,
            rlsd_eps=cfg.rlsd_eps,
            clip=cfg.clip_ratio,
            dual_clip=cfg.dual_clip,
            entropy_coef=0.0 if spec.sft else cfg.entropy_coef,
            kl_coef=cfg.kl_coef,
            sdar_coef=cfg.sdar_coef,
            sdar_beta=spec.force_beta if spec.force_beta is not None else cfg.sdar_beta,
        )

    def _backward(self, loss: torch.Tensor, boundary: bool) -> None:
        if self.deepspeed:
            deepspeed_backward(self.model, loss, boundary=boundary)
        else:
            self.accelerator.backward(loss)

    # ------------------------------------------------------------------------------------------------
    def train(self) -> list[dict[str, float]]:
        cfg = self.cfg
        history = []
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc=f"{cfg.algo} on {cfg.env}", unit="step", disable=not self._bars
        )
        bad_steps = failing_steps = 0
        while self.step < cfg.steps:
            metrics = self.train_step(self.step)
            # steps that lost episodes to failures: a few in a row mean an environment or service is broken
            failing_steps = failing_steps + 1 if metrics.get("episodes_failed", 0.0) > 0 else 0
            if failing_steps >= cfg.max_failed_steps:
                raise TrainingError(
                    f"{failing_steps} steps in a row (up to step {self.step}) lost episodes to failed environments; "
                    f"the last cause: {self._last_failure}"
                )
            # steps whose every update was skipped as non-finite: a few in a row mean the run is broken
            bad_steps = bad_steps + 1 if metrics.get("nonfinite_skipped", 0.0) == 1.0 else 0
            if bad_steps >= cfg.max_nonfinite_steps:
                raise TrainingError(
                    f"{bad_steps} steps in a row (up to step {self.step}) had only non-finite losses or gradients "
                    f"and changed no weight; metrics.jsonl names the terms (check lr, the data, bf16)"
                )
            history.append(metrics)
            self._log(metrics)
            bar.update(1)
            if cfg.spec.sft:  # what SFT rolls out are the demonstrations: their outcomes, not the model's
                bar.set_postfix(
                    loss=f"{metrics.get('sft_loss', 0):.3f}",
                    **({"eval_success": f"{metrics['eval_success']:.2f}"} if "eval_success" in metrics else {}),
                )
            else:
                bar.set_postfix(
                    reward=f"{metrics['reward']:.2f}",
                    success=f"{metrics['success']:.2f}",
                    loss=f"{metrics.get('loss', 0):.3f}",
                )
            self.step += 1
            if cfg.eval_every and cfg.eval_episodes and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                report = self.evaluate()
                if report is not None:
                    metrics.update(self.log_evaluation(self.step, report))  # x = steps done, as the final one
                    # every episode, as the final eval.json has them: paired comparisons at any evaluated step
                    from sdar_train.eval import write_report

                    write_report(self.out / f"eval-step{self.step}.json", report)
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        bar.close()
        return history

    def evaluate(self) -> dict[str, Any] | None:
        """The deterministic evaluation (:func:`sdar_train.eval.evaluate`) on the main process."""
        from sdar_train.eval import evaluate_repeats

        cfg, acc = self.cfg, self.accelerator
        report = None
        if acc.is_main_process:
            kwargs = {
                **cfg.env_kwargs,
                **cfg.eval_env_kwargs,
                **({"max_steps": cfg.max_turns} if cfg.max_turns else {}),
            }
            common: dict[str, Any] = dict(
                generator=self.generator,
                env_kwargs=kwargs,
                episodes=cfg.eval_episodes,
                temperature=cfg.eval_temperature,
                seed=cfg.seed,
                max_response_tokens=cfg.max_response_tokens,
                batch_size=cfg.generation_batch_size,
                repeats=cfg.eval_repeats,
            )
            report = evaluate_repeats(self.policy, cfg.env, prompts=PromptSpec(cfg.max_prompt_tokens), **common)
            if cfg.spec.student_skills:  # Skill-GRPO trained with skills in view: report both, as the reference does
                shown = PromptSpec(
                    cfg.max_prompt_tokens,
                    cfg.max_teacher_prompt_tokens,
                    memory=self.memory,
                    skills_k=cfg.skills_k,
                    student_skills=True,
                )
                report["with_skills"] = evaluate_repeats(self.policy, cfg.env, prompts=shown, **common)
        acc.wait_for_everyone()
        return report

    def log_evaluation(self, step: int, report: dict[str, Any]) -> dict[str, float]:
        """Log an evaluation's held-out success and return (a point of the plot's curve); returns them."""
        point = {"eval_success": float(report["success"]), "eval_return": float(report["return"])}
        if "success_ci95" in report:  # avg@k: the interval's half-width beside the mean
            point.update(eval_success_ci95=float(report["success_ci95"]), eval_return_ci95=float(report["return_ci95"]))
        self._log({"step": step, **point})
        return point

    def _log(self, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        named = {f"train/{k}": v for k, v in metrics.items() if k != "step"}  # one set of names for every logger
        if self.tb is not None:
            for k, v in named.items():
                self.tb.add_scalar(k, v, int(metrics["step"]))
            self.tb.flush()
        if self._wandb:
            self.accelerator.log(named, step=int(metrics["step"]))

    # ------------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Model, optimizer and RNG states (Accelerate), the step, and the skill memory's stats."""
        memory = self.memory if isinstance(self.memory, SkillLibrary) else None  # a reference folder is read-only
        return checkpoints.save(self.accelerator, self.out, self.step, memory, keep=self.cfg.keep_checkpoints)

    def _resume(self) -> None:
        latest = checkpoints.latest(self.out)
        if latest is None:
            return
        self.step = checkpoints.load(self.accelerator, latest, deepspeed=self.deepspeed, sharded=self.sharded)
        if self.accelerator.is_main_process:
            checkpoints.trim_metrics(self.metrics_file, self.step)
        if self.memory is not None and (latest / "skills.yaml").exists():
            self.memory = SkillLibrary.load(latest / "skills.yaml", tier=self.cfg.skill_tier, seed=self.cfg.seed)
        self._sync_rollout_weights()

    def _sync_rollout_weights(self) -> None:
        """The trained weights to where the next rollout reads them: the generator (HF's own copy, vLLM's
        engine) and, beside vLLM, the merged copy the no-grad passes run on."""
        model = self.accelerator.unwrap_model(self.model)
        self.generator.sync(model)
        if self.merged_copy and not isinstance(self.generator, HFGenerator):
            copy_weights(model, self.policy.model)

    def save_model(self, path: Path | None = None) -> Path:
        """The policy as one HF model folder (LoRA merged); sharded, gathered a tensor at a time."""
        path = path or self.out / "final"
        self.accelerator.wait_for_everyone()
        if self.sharded:
            main, model = self.accelerator.is_main_process, self.accelerator.unwrap_model(self.model)
            # every process iterates (each gather is a collective); the main one keeps the tensors
            weights = {n: t.cpu().clone() for n, t in full_weights(model) if main}
            if main:
                model = model.get_base_model() if hasattr(model, "get_base_model") else model
                if getattr(model.config, "tie_word_embeddings", False):  # stored once, as save_pretrained does
                    head = model.get_output_embeddings()
                    weights.pop(next(f"{n}.weight" for n, m in model.named_modules() if m is head), None)
                model.save_pretrained(path, state_dict=weights)
                self.policy.tokenizer.save_pretrained(path)
            self.accelerator.wait_for_everyone()
            return path
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "merge_and_unload"):
                model.save_pretrained(path / "adapter")  # the adapter alone (MBs), loadable over the base
                model = model.merge_and_unload()
            model.save_pretrained(path)
            self.policy.tokenizer.save_pretrained(path)
        return path

    def close(self) -> None:
        self.pool.close()
        if self.tb is not None:
            self.tb.close()
        if self.world > 1:
            self.accelerator.wait_for_everyone()
        self.generator.close()  # (a vLLM engine launched beside the trainer takes the process group down with it)
        if (self.world > 1 and torch.distributed.is_initialized()) or self._wandb:
            # a process group left to interpreter exit can abort it (gloo); a W&B run must be finished
            self.accelerator.end_training()
