"""The ALFWorld side of the miniature: the prompt-only demonstrator and its demonstrations."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

import sdar_envs  # noqa: F401  (registers the envs)
from sdar_envs.alfworld.data import list_tasks
from sdar_envs.core import Turn, evaluation_tasks
from sdar_train.config import ConfigError
from sdar_train.miniature.alfworld_demonstrator import (
    alfworld_action,
    alfworld_command,
    parse_goal,
    read_alfworld_prompt,
)
from sdar_train.miniature.alfworld_warmstart import RESPONSE, AlfworldWarmStartConfig, demonstrate, policy_states
from sdar_train.miniature.demonstrator import play_prompts
from sdar_train.policy import PromptCodec, load_policy
from skills.render import SKILLS_HEADER

ENV = "SDAR/ALFWorld-v0"


def play(env: gym.Env, task_id: str, skills: list[str] | None = None) -> tuple[bool, list[str]]:
    """The demonstrator on one game, fed the very prompt the policy (or, with skills, the teacher) sees."""
    turns, info = play_prompts(env, task_id, alfworld_command, response=RESPONSE, skills=skills)
    return bool(info["won"]), [action for _, action in turns]


def test_the_envs_searcher_is_the_demonstrator_the_prompt_shows():
    """``expert="searcher"`` (what behaviour cloning in the harness uses) gives, turn by turn, the command the
    demonstrator reads off the very prompt the policy sees, and wins every game it is given."""
    env = gym.make(ENV, split="valid_unseen", expert="searcher").unwrapped
    for tid in evaluation_tasks(env.task_ids(), 12):
        _, info = env.reset(options={"task_id": tid})
        commands, done = [], False
        while not done:
            commands.append(info["expert_action"])
            _, _, won, truncated, info = env.step(RESPONSE.format(commands[-1]))
            done = won or truncated
        assert info["won"], tid
        assert play(env, tid) == (True, [RESPONSE.format(c) for c in commands])
    env.close()


def test_every_valid_unseen_instruction_parses_into_its_task_type():
    kinds = {"pick": "pick", "pick_two": "two", "look": "look", "clean": "clean", "heat": "heat", "cool": "cool"}
    env = gym.make(ENV, split="valid_unseen").unwrapped
    for tid in env.task_ids():
        _, info = env.reset(options={"task_id": tid})
        goal = parse_goal(info["task"])
        assert goal.kind == kinds[info["task_type"]], info["task"]
        assert goal.obj in info["task"] and goal.target in info["task"]
    env.close()
    with pytest.raises(ValueError, match="not an ALFWorld task"):
        parse_goal("buy a red hat")


def test_demonstrator_wins_held_out_games_of_every_type_from_the_prompt_alone():
    env = gym.make(ENV, split="valid_unseen").unwrapped
    games = evaluation_tasks(env.task_ids(), 12)  # evenly spaced: every task type, twice
    results = {tid: play(env, tid) for tid in games}
    assert all(won for won, _ in results.values()), [t for t, (w, _) in results.items() if not w]
    assert all(env.format_valid(a) for _, acts in results.values() for a in acts)
    types = {t.task_type for t in list_tasks("valid_unseen") if t.task_id in games}
    assert len(types) == 6
    # a skills block before the prompt changes nothing: the demonstrator reads the chat text only
    tid = games[0]
    assert play(env, tid, skills=["Search receptacles in order."]) == results[tid]
    env.close()


def test_read_alfworld_prompt_reads_history_observation_and_admissible_actions():
    build = gym.make(ENV).unwrapped.prompt_builder
    text = build(
        task="put a clean apple in fridge.",
        observation="You arrive at sinkbasin 1. On the sinkbasin 1, you see nothing.",
        history=[
            Turn(
                "You arrive at countertop 1. On the countertop 1, you see a apple 1.",
                RESPONSE.format("take apple 1 from countertop 1"),
            ),
        ],
        admissible_actions=["clean apple 1 with sinkbasin 1", "go to fridge 1", "move apple 1 to sinkbasin 1"],
        step=2,
        skills=["Clean at the sink basin."],
    )
    assert SKILLS_HEADER in text
    view = read_alfworld_prompt(text)
    assert view.task == "put a clean apple in fridge."
    assert view.actions == ["take apple 1 from countertop 1"]
    assert view.observations[-1].startswith("You arrive at sinkbasin 1")
    assert view.admissible == ["clean apple 1 with sinkbasin 1", "go to fridge 1", "move apple 1 to sinkbasin 1"]
    assert alfworld_action(view) == "clean apple 1 with sinkbasin 1"  # holding it, at the sink, not yet clean


def test_demonstrations_are_the_rollouts_prompts_and_the_demonstrators_actions():
    policy = load_policy("tiny", torch.device("cpu"))
    codec = PromptCodec(policy.tokenizer)
    games = [t.task_id for t in list_tasks("train")][::900][:3]
    records = demonstrate(codec, games)
    assert {r["task_id"] for r in records} == set(games)
    assert all(r["won"] for r in records)
    for r in records[:5]:
        view = read_alfworld_prompt(codec.decode(r["prompt"]))
        assert codec.decode(r["response"]).startswith(RESPONSE.format(alfworld_action(view)))


def test_config_refuses_an_evaluation_smaller_than_the_issue_allows():
    with pytest.raises(ConfigError, match="at least 60"):
        AlfworldWarmStartConfig(eval_games=30)


def test_dagger_labels_the_states_the_policy_reaches_with_the_demonstrators_commands():
    """DAgger's data: the untrained policy wanders (its prompts carry its own actions, none admissible),
    and every prompt it met gets the command the demonstrator would give there."""
    policy = load_policy("tiny", torch.device("cpu"))
    codec = PromptCodec(policy.tokenizer)
    game = [t.task_id for t in list_tasks("train")][::900][0]
    cfg = AlfworldWarmStartConfig(max_response_tokens=8)
    records = policy_states(policy, codec, [game], cfg, seed=0)
    shown = demonstrate(codec, [game])
    assert len(records) > len(shown)  # more turns than the demonstrator needs to win
    assert records[0]["prompt"] == shown[0]["prompt"] and records[0]["response"] == shown[0]["response"]
    assert not records[0]["won"]
    texts = [codec.decode(r["prompt"]) for r in records]
    assert all(read_alfworld_prompt(t).task == read_alfworld_prompt(texts[0]).task for t in texts)
    assert records[-1]["prompt"] != shown[-1]["prompt"]  # the policy's own path, not the demonstrator's
    for r, text in zip(records, texts, strict=True):
        assert codec.decode(r["response"]).startswith(RESPONSE.format(alfworld_command(text)))
    with pytest.raises(ConfigError, match="dagger"):
        AlfworldWarmStartConfig(dagger_rounds=-1)


def test_warm_start_with_a_dagger_round_runs_end_to_end_and_resumes_without_redoing_a_stage(tmp_path):
    """``run``: cloning, one DAgger round on the policy's own states, the curve and report; run again, it
    finds every stage's output and changes nothing."""
    from sdar_train.miniature.alfworld_warmstart import run
    from sdar_train.miniature.replicate import read_records

    tiny = load_policy("tiny", torch.device("cpu"))  # stands in for the BPE stage, which is slow to build
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    cfg = AlfworldWarmStartConfig(
        out=str(tmp_path),
        demo_games=2,
        bc_steps=2,
        bc_batch=2,
        eval_every=2,
        threads=1,
        max_response_tokens=8,
        dagger_rounds=1,
        dagger_games=1,
        dagger_steps=2,
    )
    cfg.eval_games = 2  # past the config's guard on purpose: the loop, not the held-out number, is tested
    final = run(cfg)
    assert final == tmp_path / "dagger1" and (final / "config.json").is_file()
    assert (tmp_path / "warmstart" / "config.json").is_file()
    curve = (tmp_path / "curve.jsonl").read_text()
    points = [json.loads(line) for line in curve.splitlines()]
    assert [p["step"] for p in points if "success" in p] == [0, 2, 4]  # untrained, cloned, after DAgger
    assert [p["step"] for p in points if "loss" in p] == [1, 2, 3, 4]
    labels = read_records(tmp_path / "dagger1.jsonl.gz")
    assert labels and all(
        PromptCodec(tiny.tokenizer).decode(r["response"]).startswith("<think></think><action>") for r in labels
    )
    assert "1 DAgger round(s)" in (tmp_path / "report.md").read_text()
    assert run(cfg) == final and (tmp_path / "curve.jsonl").read_text() == curve
