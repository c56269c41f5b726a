"""Multi-turn group rollouts: B tasks x G episodes, batched generation over the live episodes only.

Each turn is one training sample: the step-wise prompt the environment's prompt builder makes (task,
the last H turns, the current observation, admissible actions) and the response the policy sampled.
Skills are retrieved once per episode from the skill memory in this (the trainer's) process, shown to
the teacher (or, for Skill-GRPO, to the student), and the episode's outcome is recorded back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdar_envs import EnvPool, Turn, prompt_builder
from skills import SkillLibrary, SkillQuery, fit_skills
from skills.base import SkillMemory

__all__ = ["Episode", "Rollout", "TurnSample", "collect_rollout", "expert_rollout"]


@dataclass
class TurnSample:
    episode: int
    prompt_ids: list[int]
    response_ids: list[int]
    teacher_prompt_ids: list[int] | None
    valid: bool


@dataclass
class Episode:
    group: int
    task_id: str
    task_type: str
    env_return: float = 0.0
    won: bool = False
    turns: int = 0
    invalid: int = 0
    skill_ids: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    reward: float = 0.0  # env_return - invalid_penalty * invalid: what the advantage is computed from


@dataclass
class Rollout:
    episodes: list[Episode]
    samples: list[TurnSample]

    def metrics(self) -> dict[str, float]:
        n = max(len(self.episodes), 1)
        turns = max(sum(e.turns for e in self.episodes), 1)
        return {
            "reward": sum(e.reward for e in self.episodes) / n,
            "success": sum(e.won for e in self.episodes) / n,
            "episode_length": sum(e.turns for e in self.episodes) / n,
            "invalid_rate": sum(e.invalid for e in self.episodes) / turns,
            "response_tokens": sum(len(s.response_ids) for s in self.samples) / max(len(self.samples), 1),
        }


Generate = Callable[[list[list[int]], int], list[list[int]]]  # (prompt ids, seed) -> response ids


def _prompt_args(st: dict[str, Any]) -> dict[str, Any]:
    """What the prompt builder needs from an episode's state: the task, the current observation, the
    history window's turns, the admissible actions and the step."""
    info = st["info"]
    return {"task": info["task"], "observation": st["obs"], "history": st["history"],
            "admissible_actions": info["admissible_actions"], "step": info["step"]}  # fmt: skip


def _env_name(env_id: str) -> str:
    return env_id.split("/")[-1].split("-")[0].lower()


def collect_rollout(
    pool: EnvPool,
    env_id: str,
    task_ids: Sequence[str],
    group_size: int,
    *,
    encode: Callable[[str, int], list[int]],
    decode: Callable[[list[int]], str],
    generate: Generate,
    seed: int,
    max_prompt_tokens: int,
    max_teacher_prompt_tokens: int,
    count_tokens: Callable[[str], int],
    memory: SkillMemory | None = None,
    skills_k: int = 3,
    teacher: bool = False,
    student_skills: bool = False,
    invalid_penalty: float = 0.0,
    on_turn: Callable[[int], None] | None = None,
) -> Rollout:
    """Run ``len(task_ids) * group_size`` episodes to the end (slot ``i`` plays ``task_ids[i // G]``)."""
    build = prompt_builder(env_id)
    n = len(task_ids) * group_size
    if n > pool.num_envs:
        raise ValueError(f"the pool has {pool.num_envs} environments, the rollout needs {n}")
    slots = list(range(n))
    resets = pool.reset(slots, seeds=[seed + i for i in slots], options=[{"task_id": task_ids[i // group_size]} for i in slots])
    episodes: list[Episode] = []
    state: dict[int, dict[str, Any]] = {}
    for i in slots:
        obs, info = resets[i]
        ep = Episode(group=i // group_size, task_id=info["task_id"], task_type=info["task_type"])
        state[i] = {"obs": obs, "info": info, "history": [], "skills": []}
        if memory is not None and (teacher or student_skills):
            query = SkillQuery(_env_name(env_id), info["task_id"], info["task"], info["task_type"])
            chosen = memory.retrieve(query, skills_k)
            ep.skill_ids, state[i]["skills"], state[i]["query"] = [s.id for s in chosen], [s.text for s in chosen], query
        episodes.append(ep)
    samples: list[TurnSample] = []
    live = list(slots)
    turn = 0
    while live:
        for i in live:
            st = state[i]
            kwargs = _prompt_args(st)
            text = build(**kwargs)
            if student_skills and st["skills"]:  # Skill-GRPO: the student's own prompt carries the skills
                text = build(**kwargs, skills=fit_skills(st["skills"], max_teacher_prompt_tokens - max_prompt_tokens, count_tokens))
            budget = max_teacher_prompt_tokens if student_skills else max_prompt_tokens
            st["prompt_ids"] = encode(text, budget)
            st["teacher_ids"] = None
            if teacher:
                # The teacher sees the whole prompt (even where the student's was cut to its budget) with
                # as many skills as fit; a few tokens of margin absorb BPE merges at the block's edge.
                full = encode(text, 1 << 30)
                room = max_teacher_prompt_tokens - len(full) - 4
                skills = fit_skills(st["skills"], room, count_tokens) if st["skills"] and room > 0 else []
                st["teacher_ids"] = encode(build(**kwargs, skills=skills), max_teacher_prompt_tokens) if skills else full[-max_teacher_prompt_tokens:]
        responses = generate([state[i]["prompt_ids"] for i in live], seed * 1_000_003 + turn * 7919)
        actions = {i: decode(r) for i, r in zip(live, responses, strict=True)}
        results = pool.step(actions)
        still = []
        for i, response in zip(live, responses, strict=True):
            obs, reward, terminated, truncated, info = results[i]
            st, ep = state[i], episodes[i]
            samples.append(TurnSample(i, st["prompt_ids"], response, st["teacher_ids"], bool(info["valid_action"])))
            ep.env_return += float(reward)
            ep.turns += 1
            ep.invalid += not info["valid_action"]
            ep.actions.append(actions[i])
            st["history"].append(Turn(st["obs"], actions[i].strip()))
            st["obs"], st["info"] = obs, info
            if terminated or truncated:
                ep.won = bool(info["won"])
                ep.reward = ep.env_return - invalid_penalty * ep.invalid
                if memory is not None and "query" in st:
                    memory.record_outcome(st["query"], ep.skill_ids, success=ep.won, reward=ep.env_return)
            else:
                still.append(i)
        live = still
        turn += 1
        if on_turn is not None:
            on_turn(len(live))
    return Rollout(episodes, samples)


def expert_rollout(pool: EnvPool, env_id: str, task_ids: Sequence[str], *, encode: Callable[[str, int], list[int]],
                   tokenize_response: Callable[[str], list[int]], max_prompt_tokens: int, seed: int,
                   response_format: Callable[[str], str]) -> Rollout:  # fmt: skip
    """Demonstrations for behaviour cloning: each environment's ``info["expert_action"]`` played to the end.

    ``response_format`` turns an expert action into the text the policy should emit (e.g. wraps an
    ALFWorld command in ``<action>`` tags; Search-QA's expert actions are already tagged).
    """
    build = prompt_builder(env_id)
    slots = list(range(len(task_ids)))
    resets = pool.reset(slots, seeds=[seed + i for i in slots], options=[{"task_id": t} for t in task_ids])
    episodes, samples = [], []
    state = {}
    for i in slots:
        obs, info = resets[i]
        episodes.append(Episode(group=i, task_id=info["task_id"], task_type=info["task_type"]))
        state[i] = {"obs": obs, "info": info, "history": []}
    live = [i for i in slots if state[i]["info"].get("expert_action")]
    while live:
        actions = {}
        for i in live:
            st = state[i]
            text = build(**_prompt_args(st))
            actions[i] = response_format(st["info"]["expert_action"])
            samples.append(TurnSample(i, encode(text, max_prompt_tokens), tokenize_response(actions[i]), None, True))
        results = pool.step(actions)
        still = []
        for i in live:
            obs, reward, terminated, truncated, info = results[i]
            ep, st = episodes[i], state[i]
            ep.env_return += float(reward)
            ep.turns += 1
            ep.actions.append(actions[i])
            st["history"].append(Turn(st["obs"], actions[i]))
            st["obs"], st["info"] = obs, info
            if terminated or truncated or not info.get("expert_action"):
                ep.won, ep.reward = bool(info["won"]), ep.env_return
            else:
                still.append(i)
        live = still
    return Rollout(episodes, samples)


def default_memory(env_id: str, tier: str, seed: int, skill_file: str | None) -> SkillLibrary:
    name = _env_name(env_id)
    if skill_file:
        return SkillLibrary.load(skill_file, tier=tier, seed=seed)
    from skills.store import SEED_BANKS

    return SkillLibrary.from_seed_banks([name] if name in SEED_BANKS else list(SEED_BANKS), tier=tier, seed=seed)
