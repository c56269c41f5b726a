"""The skill-memory hook end to end on real ALFWorld episodes."""

from __future__ import annotations

import gymnasium as gym

from sdar_envs import SkillHook, prompt_builder
from skills import SkillLibrary


def _play(env: SkillHook, task_id: str, expert: bool) -> dict:
    _, info = env.reset(options={"task_id": task_id})
    done = False
    while not done:
        action = info["expert_action"] if expert else "look"
        _, _, terminated, truncated, info = env.step(f"<action>{action}</action>")
        done = terminated or truncated
    return info


def test_skills_at_reset_and_outcome_once_at_the_end(valid_seen_tasks):
    memory = SkillLibrary.from_seed_banks(tier="keyword")
    heat = next(t for t in valid_seen_tasks if t.task_type_short == "heat")
    env = SkillHook(gym.make("SDAR/ALFWorld-v0", split="valid_seen", expert="walkthrough"), memory, k=2)
    assert env.env_name == "alfworld"
    obs, info = env.reset(options={"task_id": heat.task_id})
    assert info["skill_ids"] == ["alfworld/heat/microwave", "alfworld/general/search"]
    assert info["skills"][0] == memory.get("alfworld/heat/microwave").text
    teacher = prompt_builder("SDAR/ALFWorld-v0")(
        task=info["task"],
        observation=obs,
        history=[],
        admissible_actions=info["admissible_actions"],
        step=0,
        skills=info["skills"],
    )
    assert teacher.startswith('[Privileged Skill Information]\n- Take the object, "go to microwave 1"')
    info = _play(env, heat.task_id, expert=True)
    assert info["won"] and info["skill_ids"] == ["alfworld/heat/microwave", "alfworld/general/search"]
    assert memory.stats["alfworld/heat/microwave"].episodes == 1
    assert memory.stats["alfworld/heat/microwave"].successes == 1
    assert memory.stats["alfworld/cool/fridge"].retrieved == 0
    assert all(memory.stats[s.id].retrieved == 0 for s in memory.skills("webshop"))


def test_truncated_episode_is_recorded_as_a_failure(valid_seen_tasks):
    memory = SkillLibrary.from_seed_banks(tier="keyword")
    env = SkillHook(gym.make("SDAR/ALFWorld-v0", split="valid_seen", max_steps=2), memory, k=1)
    env.reset(options={"task_id": valid_seen_tasks[0].task_id})
    env.step("look")
    *_, truncated, info = env.step("look")
    assert truncated and not info["won"]
    (sid,) = info["skill_ids"]
    assert memory.stats[sid].episodes == 1 and memory.stats[sid].successes == 0


def test_ucb_learns_from_real_episodes_and_the_memory_persists(valid_seen_tasks, tmp_path):
    """Outcomes reach the UCB tier through the hook: after a won episode its skill is preferred."""
    memory = SkillLibrary.from_seed_banks(["alfworld"], tier="ucb", path=tmp_path / "memory.yaml")
    env = SkillHook(gym.make("SDAR/ALFWorld-v0", split="valid_seen", expert="walkthrough", max_steps=8), memory, k=1)
    cool = next(t for t in valid_seen_tasks if t.task_type_short == "cool")
    applicable = [s.id for s in memory.skills("alfworld") if s.applies_to("cool")]
    shown = []
    for i, _ in enumerate(applicable):  # each unused skill first; only the last episode is won
        info = _play(env, cool.task_id, expert=i == len(applicable) - 1)
        shown.append(info["skill_ids"][0])
    assert sorted(shown) == sorted(applicable)
    winner = shown[-1]
    assert memory.stats[winner].successes == 1
    _, info = env.reset(options={"task_id": cool.task_id})
    assert info["skill_ids"] == [winner], "the skill of the won episode now has the highest bound"
    memory.save()
    reloaded = SkillLibrary.load(tmp_path / "memory.yaml", tier="ucb")
    assert reloaded.stats[winner].successes == 1
    assert sum(st.episodes for st in reloaded.stats.values()) == len(applicable)
