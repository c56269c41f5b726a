"""Multi-turn group rollouts: B tasks x G episodes, batched generation over the live episodes only.

Each turn is one training sample: the step-wise prompt the environment's prompt builder makes (task,
the last H turns, the current observation, admissible actions) and the response the policy sampled.
Skills come from a skill memory (retrieved once per episode in this, the trainer's, process, with
the episode's outcome recorded back) or from a reference-layout skills folder (chosen per turn by the
reference's rules); they are shown to the teacher (or, for Skill-GRPO, to the student).

Turn scores (:meth:`Rollout.turn_scores`) follow the reference: every turn sample of an episode scores
the episode's training reward, and only an invalid turn's own score is lowered by the penalty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sdar_envs import EnvFailure, EnvPool, EpisodeSkills, Turn, env_name, prompt_builder
from sdar_train.policy import PromptCodec
from sdar_train.seeding import derive_seed
from skills import ReferenceSkills, SkillLibrary, fit_skills, privileged_prefix
from skills.base import SkillMemory

__all__ = ["Episode", "EpisodeSlot", "PromptSpec", "Rollout", "TurnSample", "collect_rollout", "expert_rollout"]


@dataclass
class TurnSample:
    """One turn of one episode as a training sample: the student's prompt, the sampled response, the
    teacher's prompt (when there is a teacher) and the turn's two validity flags."""

    episode: int  # index into Rollout.episodes
    prompt_ids: list[int]
    response_ids: list[int]
    teacher_prompt_ids: list[int] | None
    format_valid: bool  # info["format_valid"]: the reference's format rule
    admissible: bool  # info["admissible"]: the environment accepted the action
    # the sampling policy's log-prob of each response token, where generation recorded them (Reply.logprobs)
    response_logprobs: list[float] | None = None


@dataclass
class Episode:
    """One finished episode: its task and group (the G episodes of a task), outcome, length and
    invalid-turn counts, the skills its teacher saw, and the actions it took."""

    group: int
    task_id: str
    task_type: str
    task: str = ""  # the instruction
    env_return: float = 0.0
    won: bool = False
    turns: int = 0
    invalid: int = 0  # turns breaking the format rule
    inadmissible: int = 0  # turns whose action the environment did not accept
    skill_ids: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    truncated: bool = False  # ended by the environment's turn limit, not by the agent
    failed: str | None = None  # why the episode could not be played to its end (its environment or worker failed)


@dataclass
class Rollout:
    episodes: list[Episode]
    samples: list[TurnSample]

    def without_failed(self, min_group: int = 2) -> tuple[Rollout, list[Episode]]:
        """The rollout without its failed episodes, and what was dropped. A group that lost episodes is
        scored over those that remain while at least ``min_group`` do; with fewer it is dropped whole: a
        lone survivor's group-relative advantage is 0, so it would train nothing but the distillation
        and KL terms on a group that no longer compares anything."""
        alive: dict[int, int] = {}
        for e in self.episodes:
            alive[e.group] = alive.get(e.group, 0) + (e.failed is None)
        kept = [i for i, e in enumerate(self.episodes) if e.failed is None and alive[e.group] >= min_group]
        if len(kept) == len(self.episodes):
            return self, []
        new_index = {old: new for new, old in enumerate(kept)}
        samples = [dataclasses.replace(s, episode=new_index[s.episode]) for s in self.samples if s.episode in new_index]
        dropped = [e for i, e in enumerate(self.episodes) if i not in new_index]
        return Rollout([self.episodes[i] for i in kept], samples), dropped

    def episode_rewards(self, reward_scale: float = 1.0, use_won: bool = True) -> list[float]:
        """Each episode's training reward: ``reward_scale x won`` (the reference's) or x its env return."""
        return [reward_scale * (float(e.won) if use_won else e.env_return) for e in self.episodes]

    def turn_scores(
        self, reward_scale: float = 1.0, penalty: float = 0.0, use_won: bool = True, rule: str = "format"
    ) -> list[float]:
        """One score per turn sample, as the reference scores them: the episode's training reward, lowered by
        ``penalty`` on that turn alone when it is invalid (``rule``: ``format`` or ``admissible``)."""
        rewards = self.episode_rewards(reward_scale, use_won)
        ok = (lambda s: s.format_valid) if rule == "format" else (lambda s: s.admissible)
        return [rewards[s.episode] - (0.0 if ok(s) else penalty) for s in self.samples]

    def metrics(self) -> dict[str, float]:
        n = max(len(self.episodes), 1)
        turns = max(sum(e.turns for e in self.episodes), 1)
        return {
            "env_return": sum(e.env_return for e in self.episodes) / n,
            "success": sum(e.won for e in self.episodes) / n,
            "episode_length": sum(e.turns for e in self.episodes) / n,
            "invalid_rate": sum(e.invalid for e in self.episodes) / turns,
            "inadmissible_rate": sum(e.inadmissible for e in self.episodes) / turns,
            "response_tokens": sum(len(s.response_ids) for s in self.samples) / max(len(self.samples), 1),
        }


Generate = Callable[[list[list[int]], int], list[list[int]]]  # (prompt ids, seed) -> response ids
Skills = SkillMemory | ReferenceSkills  # a retrieving memory, or a reference-layout skills folder


@dataclass(frozen=True)
class PromptSpec:
    """What each turn's prompts hold: their token budgets, the skills, who sees them and where."""

    max_prompt_tokens: int = 2048  # the student's prompt; a longer one keeps its last tokens
    max_teacher_prompt_tokens: int | None = None  # skills are cut to fit it, never the prompt (None: the student's)
    memory: Skills | None = None  # a retrieving skill memory or a reference-layout folder
    skills_k: int = 3
    teacher: bool = False  # every turn also gets the teacher's prompt (the student's with the skills)
    student_skills: bool = False  # Skill-GRPO: the student's own prompt shows the skills
    teacher_placement: str = "before_chat"  # the reference's block before the whole chat text, or in_user
    student_placement: str = "in_user"  # in_user (the reference's Skill-GRPO) or before_chat (= the teacher's)

    def __post_init__(self) -> None:
        for name in ("teacher_placement", "student_placement"):
            if getattr(self, name) not in ("before_chat", "in_user"):
                raise ValueError(f"{name} must be before_chat or in_user, got {getattr(self, name)!r}")
        if self.max_prompt_tokens < 1 or self.skills_k < 0:
            raise ValueError("max_prompt_tokens must be >= 1 and skills_k >= 0")

    @property
    def teacher_budget(self) -> int:
        return self.max_teacher_prompt_tokens or self.max_prompt_tokens


@dataclass
class EpisodeSlot:
    """One episode slot of a rollout: the episode's record (kept in the result) and what the live episode
    carries from turn to turn: its observation, info, history, skills and this turn's prompts."""

    episode: Episode
    obs: str
    info: dict[str, Any]
    history: list[Turn] = field(default_factory=list)
    skills: EpisodeSkills | None = None  # retrieved once per episode from a skill memory
    prompt_ids: list[int] = field(default_factory=list)  # this turn's student prompt
    teacher_prompt_ids: list[int] | None = None  # this turn's teacher prompt

    def prompt_args(self) -> dict[str, Any]:
        """What the prompt builder needs: the task, the current observation, the history window's
        turns, the admissible actions and the step."""
        return {
            "task": self.info["task"],
            "observation": self.obs,
            "history": self.history,
            "admissible_actions": self.info["admissible_actions"],
            "step": self.info["step"],
        }


def _turn_skills(source: Skills | None, st: EpisodeSlot, text: str, codec: PromptCodec | None = None) -> list[str]:
    """The skill texts of one turn: a memory's retrieval for the episode, or a reference folder's text for
    this turn, chosen as the reference chooses it: for the teacher (``codec`` given) from the game file,
    data source or chat-formatted prompt; for the Skill-GRPO student (no ``codec``) from the prompt's
    keywords alone."""
    if isinstance(source, ReferenceSkills):
        if codec is None:
            return [source.text_for(prompt_text=text)]
        game_file, data_source = st.info.get("game_file"), st.info.get("data_source")
        return [source.text_for(prompt_text=codec.chat_text(text), game_file=game_file, data_source=data_source)]
    return st.skills.texts if st.skills else []


def collect_rollout(
    pool: EnvPool,
    env_id: str,
    task_ids: Sequence[str],
    group_size: int,
    *,
    codec: PromptCodec,
    generate: Generate,
    seed: int,
    prompts: PromptSpec,
    on_turn: Callable[[int], None] | None = None,
) -> Rollout:
    """Run ``len(task_ids) * group_size`` episodes to the end (slot ``i`` plays ``task_ids[i // G]``).

    ``prompts.teacher``: every turn also gets the teacher's prompt, the same prompt with the skills as
    much as fit in ``max_teacher_prompt_tokens`` (skills are cut, never the prompt):
    ``teacher_placement="before_chat"`` puts the reference's block ``[Privileged Skill Information]\n<skills>\n\n``
    before the whole chat-formatted text; ``"in_user"`` at the start of the user message.
    ``prompts.student_skills`` (Skill-GRPO): the student's own user message starts with that block
    (``student_placement="in_user"``, the reference's Skill-GRPO) or the block goes before the chat text as
    the teacher's does (``"before_chat"``: the student's prompt is then the teacher's, e.g. to measure the teacher).
    """
    spec, memory = prompts, prompts.memory
    build = prompt_builder(env_id)
    n = len(task_ids) * group_size
    if n > pool.num_envs:
        raise ValueError(f"the pool has {pool.num_envs} environments, the rollout needs {n}")
    resets = pool.reset(
        list(range(n)),
        seeds=[derive_seed(seed, "reset", i) for i in range(n)],
        options=[{"task_id": task_ids[i // group_size]} for i in range(n)],
        isolate=True,  # a failed environment costs its episode (Episode.failed), not the rollout
    )
    retrieving = isinstance(memory, SkillMemory) and (spec.teacher or spec.student_skills)  # a folder is not one
    slots: list[EpisodeSlot] = []
    for i in range(n):
        slot = _start_slot(resets[i], i // group_size, task_ids[i // group_size])
        slots.append(slot)
        if slot.episode.failed is None and retrieving:
            slot.skills = EpisodeSkills.retrieve(cast(SkillMemory, memory), env_name(env_id), slot.info, spec.skills_k)
            slot.episode.skill_ids = list(slot.skills.ids)
    samples: list[TurnSample] = []
    live = [i for i in range(n) if slots[i].episode.failed is None]
    turn = 0
    while live:
        for i in live:
            slot = slots[i]
            text = build(**slot.prompt_args())
            full = codec.encode(text, 1 << 30)  # the whole prompt; a budget keeps its end
            budget = spec.max_prompt_tokens
            if spec.student_skills and memory is not None:  # Skill-GRPO: the student's own message starts with them
                room = spec.teacher_budget - len(full) - 4
                shown = (
                    fit_skills(_turn_skills(memory, slot, text), room, codec.count, privileged_prefix)
                    if room > 0
                    else []
                )
                budget = spec.teacher_budget
                if shown and spec.student_placement == "before_chat":
                    full = codec.encode_with_prefix(privileged_prefix(shown), text, 1 << 30)
                elif shown:
                    text = privileged_prefix(shown) + text
                    full = codec.encode(text, 1 << 30)
            slot.prompt_ids = full[-budget:]
            slot.teacher_prompt_ids = (
                _teacher_prompt(codec, build, slot, text, full, memory, spec.teacher_placement, spec.teacher_budget)
                if spec.teacher
                else None
            )
        responses = generate([slots[i].prompt_ids for i in live], derive_seed(seed, "generate", turn))
        actions = {i: codec.decode(r) for i, r in zip(live, responses, strict=True)}
        results = pool.step(actions, isolate=True)
        still = []
        for i, response in zip(live, responses, strict=True):
            slot = slots[i]
            ep = slot.episode
            if isinstance(results[i], EnvFailure):
                ep.failed = results[i].cause
                continue
            obs, reward, terminated, truncated, info = results[i]
            fmt, ok = (
                bool(info.get("format_valid", info["valid_action"])),
                bool(info.get("admissible", info["valid_action"])),
            )
            logprobs = getattr(response, "logprobs", None)
            samples.append(TurnSample(i, slot.prompt_ids, list(response), slot.teacher_prompt_ids, fmt, ok, logprobs))
            ep.env_return += float(reward)
            ep.turns += 1
            ep.invalid += not fmt
            ep.inadmissible += not ok
            ep.actions.append(actions[i])
            slot.history.append(Turn(slot.obs, actions[i].strip()))
            slot.obs, slot.info = obs, info
            if terminated or truncated:
                ep.won, ep.truncated = bool(info["won"]), bool(truncated and not terminated)
                if slot.skills is not None:
                    slot.skills.record(won=ep.won, episode_return=ep.env_return)
            else:
                still.append(i)
        live = still
        turn += 1
        if on_turn is not None:
            on_turn(len(live))
    return Rollout([slot.episode for slot in slots], samples)


def _start_slot(reset: Any, group: int, task_id: str) -> EpisodeSlot:
    """An episode slot from a reset's ``(obs, info)``, or a failed one from its :class:`EnvFailure`."""
    if isinstance(reset, EnvFailure):
        return EpisodeSlot(Episode(group=group, task_id=task_id, task_type="", failed=reset.cause), "", {})
    obs, info = reset
    return EpisodeSlot(
        Episode(group=group, task_id=info["task_id"], task_type=info["task_type"], task=info["task"]), obs, info
    )


def _teacher_prompt(
    codec: PromptCodec,
    build: Any,
    st: EpisodeSlot,
    text: str,
    full: list[int],
    memory: Skills | None,
    placement: str,
    budget: int,
) -> list[int]:
    """The teacher's prompt ids: the whole student prompt (``full``, even where the student's was cut to
    its budget) with as many skills as fit; a few tokens of margin absorb BPE merges at the block's edge."""
    room = budget - len(full) - 4
    skills = _turn_skills(memory, st, text, codec) if memory is not None and room > 0 else []
    if placement == "before_chat":
        fitted = fit_skills(skills, room, codec.count, privileged_prefix) if skills else []
        return codec.encode_with_prefix(privileged_prefix(fitted), text, budget) if fitted else full[-budget:]
    fitted = fit_skills(skills, room, codec.count) if skills else []
    return codec.encode(build(**st.prompt_args(), skills=fitted), budget) if fitted else full[-budget:]


def expert_rollout(
    pool: EnvPool,
    env_id: str,
    task_ids: Sequence[str],
    *,
    codec: PromptCodec,
    seed: int,
    response_format: Callable[[str], str],
    prompts: PromptSpec,
    skills_share: float = 0.0,
) -> Rollout:
    """Demonstrations for behaviour cloning: each environment's ``info["expert_action"]`` played to the end.

    ``response_format`` turns an expert action into the text the policy should emit (e.g. wraps an
    ALFWorld command in ``<action>`` tags; Search-QA's expert actions are already tagged).
    ``skills_share``: that share of the episodes (drawn from ``seed``) is shown with the teacher's prompt
    (``prompts.memory``'s skills placed as ``prompts.teacher_placement``), so that a warm start has read
    the privileged block before RL asks it to score with it.
    """
    import random

    spec, memory = prompts, prompts.memory
    build = prompt_builder(env_id)
    n = len(task_ids)
    resets = pool.reset(
        list(range(n)),
        seeds=[derive_seed(seed, "reset", i) for i in range(n)],
        options=[{"task_id": t} for t in task_ids],
        isolate=True,
    )
    draw = random.Random(derive_seed(seed, "skills_share"))
    with_skills = {i for i in range(n) if memory is not None and draw.random() < skills_share}
    samples: list[TurnSample] = []
    slots: list[EpisodeSlot] = []
    for i in range(n):
        slot = _start_slot(resets[i], i, task_ids[i])
        slots.append(slot)
        if slot.episode.failed is None and i in with_skills and isinstance(memory, SkillMemory):
            slot.skills = EpisodeSkills.retrieve(memory, env_name(env_id), slot.info, spec.skills_k)
            slot.episode.skill_ids = list(slot.skills.ids)
    live = [i for i in range(n) if slots[i].info.get("expert_action")]
    while live:
        actions = {}
        for i in live:
            slot = slots[i]
            text = build(**slot.prompt_args())
            actions[i] = response_format(slot.info["expert_action"])
            prompt = codec.encode(text, spec.max_prompt_tokens)
            if i in with_skills:
                full = codec.encode(text, 1 << 30)
                prompt = _teacher_prompt(
                    codec, build, slot, text, full, memory, spec.teacher_placement, spec.teacher_budget
                )
            samples.append(TurnSample(i, prompt, codec.encode_response(actions[i]), None, True, True))
        results = pool.step(actions, isolate=True)
        still = []
        for i in live:
            slot = slots[i]
            ep = slot.episode
            if isinstance(results[i], EnvFailure):
                ep.failed = results[i].cause
                continue
            obs, reward, terminated, truncated, info = results[i]
            ep.env_return += float(reward)
            ep.turns += 1
            ep.actions.append(actions[i])
            slot.history.append(Turn(slot.obs, actions[i]))
            slot.obs, slot.info = obs, info
            if terminated or truncated or not info.get("expert_action"):
                ep.won = bool(info["won"])
            else:
                still.append(i)
        live = still
    return Rollout([slot.episode for slot in slots], samples)


def default_memory(env_id: str, tier: str, seed: int, skill_file: str | None, skill_dir: str | None = None) -> Skills:
    """``skill_dir``: a reference-layout folder (:class:`skills.ReferenceSkills`); ``skill_file``: a saved
    skill memory; else the packaged seed banks of the environment."""
    if skill_dir:
        return ReferenceSkills(skill_dir)
    name = env_name(env_id)
    if skill_file:
        return SkillLibrary.load(skill_file, tier=tier, seed=seed)
    from skills.store import SEED_BANKS

    return SkillLibrary.from_seed_banks([name] if name in SEED_BANKS else list(SEED_BANKS), tier=tier, seed=seed)
