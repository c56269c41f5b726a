"""The skill-memory hook on a real ALFWorld episode."""

from __future__ import annotations

import gymnasium as gym

from sdar_envs import SkillHook
from skills import InMemorySkillMemory, Skill

SKILLS = [
    Skill("alf-general", "Search systematically", "Visit each receptacle once; open closed ones.", "alfworld"),
    Skill("alf-heat", "Heat", "Take the object to the microwave and heat it there.", "alfworld", ("heat",)),
    Skill("alf-cool", "Cool", "Cool the object with the fridge.", "alfworld", ("cool",)),
    Skill("web-general", "Shop", "Search, then click the best match.", "webshop"),
]


def test_skills_at_reset_and_outcome_once_at_the_end(valid_seen_tasks):
    memory = InMemorySkillMemory()
    memory.add(SKILLS)
    heat = next(t for t in valid_seen_tasks if t.task_type_short == "heat")
    env = SkillHook(gym.make("SDAR/ALFWorld-v0", split="valid_seen", expert="walkthrough"), memory, k=2)
    assert env.env_name == "alfworld"
    obs, info = env.reset(options={"task_id": heat.task_id})
    assert info["skill_ids"] == ["alf-heat", "alf-general"]  # the task type's skill first, then general
    assert info["skills"][0].startswith("Take the object to the microwave")
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(info["expert_action"])
        done = terminated or truncated
        assert info["skill_ids"] == ["alf-heat", "alf-general"]
    assert info["won"]
    assert memory.stats["alf-heat"].episodes == 1 and memory.stats["alf-heat"].successes == 1
    assert "alf-cool" not in memory.stats and "web-general" not in memory.stats


def test_truncated_episode_is_recorded_as_a_failure(valid_seen_tasks):
    memory = InMemorySkillMemory()
    memory.add(SKILLS)
    env = SkillHook(gym.make("SDAR/ALFWorld-v0", split="valid_seen", max_steps=2), memory, k=1)
    env.reset(options={"task_id": valid_seen_tasks[0].task_id})
    env.step("look")
    *_, truncated, info = env.step("look")
    assert truncated and not info["won"]
    (sid,) = info["skill_ids"]
    assert memory.stats[sid].episodes == 1 and memory.stats[sid].successes == 0
