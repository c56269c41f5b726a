"""SDAR/ALFWorld-v0 through gymnasium.make: the suite's contract on the real engine."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import sdar_envs
from sdar_envs.alfworld.data import DataError, list_tasks
from sdar_envs.core import INFO_KEYS
from tests.helpers import sample_per_type

ENV_ID = "SDAR/ALFWorld-v0"


def _play_expert(env, task_id):
    obs, info = env.reset(options={"task_id": task_id})
    total, done, steps = 0.0, False, 0
    while not done:
        action = info["expert_action"]
        assert action in info["admissible_actions"]
        obs, reward, terminated, truncated, info = env.step(f"<think>plan</think>\n<action>{action}</action>")
        total, done, steps = total + reward, terminated or truncated, steps + 1
    return total, info, steps, terminated


@pytest.mark.parametrize("split", ["valid_seen", "valid_unseen"])
def test_expert_wins_a_sample_of_each_split(split):
    env = gym.make(ENV_ID, split=split, expert="walkthrough")
    tasks = sample_per_type(split, 2)
    assert len({t.task_type for t in tasks}) == 6
    for task in tasks:
        total, info, steps, terminated = _play_expert(env, task.task_id)
        assert terminated and info["won"] and total == 1.0, task.task_id
        assert info["step"] == steps and info["valid_action"]


def test_the_explained_expert_says_what_it_decides_on_then_plays_the_searchers_command():
    """expert="explained": every reply is a valid turn whose think names the task's object (and, once held,
    the instance in hand) before the searcher's own command, and it wins as the searcher does."""
    from sdar_envs.alfworld.searcher import parse_goal

    explained = gym.make(ENV_ID, split="valid_unseen", expert="explained")
    searcher = gym.make(ENV_ID, split="valid_unseen", expert="searcher")
    for task in sample_per_type("valid_unseen", 1):
        _, info = explained.reset(options={"task_id": task.task_id})
        _, plain = searcher.reset(options={"task_id": task.task_id})
        obj, done = parse_goal(info["task"]).obj, False
        while not done:
            reply = info["expert_action"]
            thought, command = re.fullmatch(r"<think>(.+)</think><action>(.+)</action>", reply).groups()
            assert command == plain["expert_action"] and command in info["admissible_actions"]
            assert obj in thought and len(reply.split()) <= 20
            if command.startswith("take "):
                assert f"I see {command[5:].split(' from ')[0]} here" in thought
            _, _, terminated, truncated, info = explained.step(reply)
            _, _, _, _, plain = searcher.step(f"<action>{command}</action>")
            assert info["format_valid"] and info["admissible"]
            done = terminated or truncated
        assert info["won"], task.task_id


def test_info_keys_and_types():
    env = gym.make(ENV_ID, split="valid_unseen")
    obs, info = env.reset(seed=3)
    assert set(INFO_KEYS) <= set(info)
    assert isinstance(obs, str) and obs.startswith("-= Welcome to TextWorld, ALFRED! =-")
    assert info["task"] and info["task"] in obs
    assert info["task_type"] in {"pick", "look", "clean", "heat", "cool", "pick_two"}
    assert info["step"] == 0 and info["valid_action"] and not info["won"]
    assert "look" in info["admissible_actions"]
    assert env.observation_space.contains(obs)


def test_same_task_id_same_task_and_seeds_reproduce_choice(valid_seen_tasks):
    a = gym.make(ENV_ID, split="valid_seen")
    b = gym.make(ENV_ID, split="valid_seen")
    task_id = valid_seen_tasks[17].task_id
    obs_a, info_a = a.reset(seed=1, options={"task_id": task_id})
    obs_b, info_b = b.reset(seed=99, options={"task_id": task_id})
    assert obs_a == obs_b and info_a["admissible_actions"] == info_b["admissible_actions"]
    assert info_a["task_id"] == info_b["task_id"] == task_id
    # The same seed picks the same task on a fresh environment; different seeds spread over tasks.
    picks = [a.reset(seed=s)[1]["task_id"] for s in range(6)]
    assert picks == [b.reset(seed=s)[1]["task_id"] for s in range(6)]
    assert len(set(picks)) > 1
    # An integer task_id indexes the split's fixed (sorted) task list.
    assert a.reset(options={"task_id": 17})[1]["task_id"] == task_id


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        " ",
        "x" * 10_000,
        "☃ ünïcödé 行动 \x00\x1b[31m",
        "go to the moon",
        "<action></action>",
        "<action>go to",
        None,
        42,
    ],
)
def test_garbage_actions_are_counted_no_ops(garbage):
    env = gym.make(ENV_ID, split="valid_seen")
    obs0, info0 = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(garbage)
    assert info["valid_action"] is False and reward == 0.0 and not terminated and not truncated
    assert obs == "Nothing happens."
    assert info["step"] == 1 and info["admissible_actions"] == info0["admissible_actions"]
    # The game is untouched: a valid action still works afterwards.
    obs, *_, info = env.step(f"<action>{info0['admissible_actions'][0]}</action>")
    assert info["valid_action"] is True


def test_action_projection_forms():
    env = gym.make(ENV_ID, split="valid_seen")
    _, info = env.reset(seed=0)
    target = info["admissible_actions"][1]
    for text in (
        target,  # a bare command
        f"  {target.upper()}.  ",  # case, spaces and a full stop do not matter
        f"<think>maybe <action>look</action>?</think><action>{target}</action>",  # the last tag wins
    ):
        env.reset(seed=0)
        obs, _, _, _, info = env.step(text)
        assert info["valid_action"], text
        assert obs != "Nothing happens."


def test_step_limit_truncates_and_episode_end_needs_reset():
    env = gym.make(ENV_ID, split="valid_seen", max_steps=3)
    env.reset(seed=0)
    results = [env.step("<action>look</action>") for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]
    assert not any(r[2] for r in results)
    with pytest.raises(gym.error.ResetNeeded):
        env.step("look")


def test_gymnasium_env_checker_passes():
    env = gym.make(ENV_ID, split="valid_seen").unwrapped
    check_env(env, skip_render_check=True)


def test_task_type_filter_and_bad_arguments():
    env = gym.make(ENV_ID, split="valid_unseen", task_types=["heat", "pick_cool_then_place_in_recep"])
    types = {env.reset(seed=s)[1]["task_type"] for s in range(10)}
    assert types <= {"heat", "cool"}
    assert len(env.unwrapped.tasks) == 23 + 21  # the published valid_unseen counts
    with pytest.raises(ValueError, match="unknown ALFWorld task type"):
        gym.make(ENV_ID, split="valid_unseen", task_types=["juggle"])
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        gym.make(ENV_ID, split="test")
    with pytest.raises(ValueError, match="unknown ALFWorld task_id"):
        env.reset(options={"task_id": "valid_unseen/nope"})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"taskid": 3})


def test_official_split_sizes():
    assert len(list_tasks("valid_seen")) == 140
    assert len(list_tasks("valid_unseen")) == 134
    assert len(list_tasks("valid_train")) == 200


@pytest.mark.slow
def test_full_train_split_unpacks_and_plays():
    tasks = list_tasks("train")
    assert len(tasks) == 3553
    env = gym.make(ENV_ID, split="train", expert="walkthrough")
    total, info, _, _ = _play_expert(env, tasks[1234].task_id)
    assert info["won"] and total == 1.0


def test_user_alfworld_data_folder(tmp_path, monkeypatch, valid_seen_tasks):
    # A user's own alfworld-download folder, found through $ALFWORLD_DATA.
    src = Path(valid_seen_tasks[5].game_file).parent
    dst = tmp_path / "json_2.1.1" / "valid_seen" / src.parent.name / src.name
    shutil.copytree(src, dst)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    env = gym.make(ENV_ID, split="valid_seen", expert="walkthrough")
    assert [t.task_id for t in env.unwrapped.tasks] == [valid_seen_tasks[5].task_id]
    assert env.unwrapped.tasks[0].game_file.startswith(str(tmp_path))
    total, info, _, _ = _play_expert(env, valid_seen_tasks[5].task_id)
    assert info["won"]
    with pytest.raises(DataError, match="no json_2.1.1/valid_unseen"):
        gym.make(ENV_ID, split="valid_unseen", data_dir=str(tmp_path))


def test_handcoded_expert_offers_admissible_actions(valid_seen_tasks):
    env = gym.make(ENV_ID, split="valid_seen", expert="handcoded")
    obs, info = env.reset(options={"task_id": valid_seen_tasks[0].task_id})
    for _ in range(4):
        action = info["expert_action"]
        assert action in info["admissible_actions"]
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            break


def test_prompt_builder_registered():
    builder = sdar_envs.prompt_builder(ENV_ID)
    assert builder.history_length == 2
