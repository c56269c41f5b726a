"""The CPU miniature (sdar_train.miniature.replicate), its demonstrator, the packaged warm start and the demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import sdar_envs  # noqa: F401  (registers the envs)
from sdar_envs import prompt_builder
from sdar_envs.core import Turn, evaluation_tasks
from sdar_train.miniature.demonstrator import habit_counts, play, play_prompts, read_prompt, webshop_action
from sdar_train.miniature.packaged_warmstart import WARMSTART, check_warmstart
from sdar_train.miniature.replicate import (
    RESPONSE,
    ReplicateConfig,
    collect_demonstrations,
    episode_mode,
    evaluate_policy,
    warm_start,
    write_report,
)
from sdar_train.policy import PromptCodec, load_policy
from skills.render import SKILLS_HEADER

ENV = "SDAR/WebShop-v0"


def play_goal(env: gym.Env, task_id: str, careful: bool) -> tuple[float, list[str]]:
    """The demonstrator on one goal, fed the very prompt the policy would see: its score and actions."""
    turns, info = play(env, task_id, careful=careful, response=RESPONSE)
    return float(info["score"]), [action for _, action in turns]


def test_demonstrator_acts_on_the_prompt_alone_and_care_pays():
    env = gym.make(ENV, split="test").unwrapped
    goals = evaluation_tasks(env.task_ids(), 30)
    careful = [play_goal(env, g, True) for g in goals]
    careless = [play_goal(env, g, False) for g in goals]
    # careful: search the instruction, first product, the instruction's options, buy
    score, actions = careful[0]
    assert actions[0].startswith("<think></think><action>search[") and actions[-1].endswith("click[buy now]</action>")
    assert all(env.format_valid(a) for _, acts in careful for a in acts)
    wins = sum(s == 1.0 for s, _ in careful)
    assert wins >= 9  # about half of the test goals are bought exactly
    assert sum(s for s, _ in careful) > sum(s for s, _ in careless) + 3
    assert all(len(acts) == 3 for _, acts in careless)  # search, product, buy: no options chosen
    env.close()


def test_habit_counts_tell_the_planted_careless_habit_from_the_careful_one():
    """The report's habit counts, on episodes the demonstrator really played: the vague careless habit
    searches without attributes and clicks no option; the careful one names them and clicks each; a small
    model's garbled product clicks and navigation buttons are not option clicks."""
    env = gym.make(ENV, split="test").unwrapped
    played = {g: play(env, g, careful=True, response=RESPONSE)[0] for g in evaluation_tasks(env.task_ids(), 20)}
    goals = [g for g, turns in played.items() if len(turns) > 3][:4]  # goals whose instruction names options
    careful = [played[g] for g in goals]
    vague = [
        play_prompts(env, g, lambda t: webshop_action(read_prompt(t), careful=False, vague_search=True))[0]
        for g in goals
    ]
    env.close()

    def results(episodes: list[list[tuple[str, str]]]) -> list[dict[str, list[str]]]:
        return [{"actions": [action for _, action in turns]} for turns in episodes]

    assert len(goals) == 4
    assert habit_counts(results(vague)) == {"episodes": 4, "vague_search": 4, "option_clicks": 0, "bought": 4}
    counts = habit_counts(results(careful))
    assert counts["vague_search"] == 0 and counts["bought"] == 4
    assert counts["option_clicks"] == sum(len(t) - 3 for t in careful)  # search, product, options, buy
    garbled = ["search[a red hat]", "click[b07-wine red]", "click[< prev]", "click[red]"]
    assert habit_counts([{"actions": [f"<action>{a}</action>" for a in garbled]}]) == {
        "episodes": 1,
        "vague_search": 1,
        "option_clicks": 1,
        "bought": 0,
    }


def test_read_prompt_ignores_a_skills_block_and_reads_the_last_action():
    build = prompt_builder(ENV)
    text = build(
        task="Find me a red hat, and price lower than 30.00 dollars",
        observation="Back to Search [SEP] < Prev [SEP] color [SEP] red [SEP] blue [SEP] Buy Now",
        history=[Turn("results", "<think></think><action>click[b000000001]</action>")],
        admissible_actions=["click[back to search]", "click[< prev]", "click[red]", "click[blue]", "click[buy now]"],
        step=2,
        skills=["click every option value the instruction names"],
    )
    view = read_prompt(text)
    assert view.task == "Find me a red hat, and price lower than 30.00 dollars"
    assert view.last_action == "click[b000000001]"
    assert view.admissible[-1] == "click[buy now]"
    assert webshop_action(view) == "click[buy now]"  # "red" is not named as "color: red"
    named = read_prompt(text.replace("a red hat", "a hat with color: red"))
    assert webshop_action(named) == "click[red]"
    assert webshop_action(named, careful=False) == "click[buy now]"


def test_demonstrations_show_skills_exactly_to_the_careful_half():
    policy = load_policy("tiny", torch.device("cpu"))
    codec = PromptCodec(policy.tokenizer)
    env = gym.make(ENV, split="train").unwrapped
    goals = env.task_ids()[:9]
    env.close()
    records = collect_demonstrations(codec, goals)
    modes = {r["mode"] for r in records}
    assert modes == {"careful_skills", "careless"}
    for r in records:
        prompt = codec.decode(r["prompt"])
        assert prompt.startswith(SKILLS_HEADER) == (r["mode"] == "careful_skills")  # before the chat text
        response = codec.decode(r["response"])
        assert response.startswith("<think></think><action>") and response.endswith("</action>")
    careless = [codec.decode(r["response"]) for r in records if r["mode"] == "careless"]
    assert careless and not any(
        "click[" in a and "click[b" not in a and "buy now" not in a for a in careless
    )  # never an option
    task = "Find me a hat"
    assert episode_mode(task, 0) == episode_mode(task, 0)  # fixed by the instruction and the seed


def test_a_vague_careless_habit_with_careful_episodes_shown_without_skills():
    """--careless vague: careless episodes search the product without its attributes; with
    --careful_without_skills, part of the episodes without skills are careful, so the student sometimes
    samples the habit its teacher knows (SDAR's distillation only reweights what the student samples)."""
    policy = load_policy("tiny", torch.device("cpu"))
    codec = PromptCodec(policy.tokenizer)
    env = gym.make(ENV, split="train").unwrapped
    goals = env.task_ids()[:40]
    env.close()
    records = collect_demonstrations(codec, goals, careless="vague", careful_without_skills=0.5)
    first = {}
    for r in records:
        first.setdefault(r["task_id"], (r["mode"], codec.decode(r["prompt"]), codec.decode(r["response"])))
    assert {m for m, _, _ in first.values()} == {"careful_skills", "careful", "careless"}
    for mode, prompt, response in first.values():
        assert prompt.startswith(SKILLS_HEADER) == (mode == "careful_skills")
        query = response.partition("search[")[2].partition("]")[0]
        task = read_prompt(prompt).task
        if mode == "careless":
            assert " with " not in query and task.startswith(query)
        else:
            assert " with " in query or " with " not in task
    assert sum(m == "careful_skills" for m, _, _ in first.values()) == sum(
        episode_mode(read_prompt(p).task, 0) == "careful_skills" for _, p, _ in first.values()
    )
    # share 0 is the recorded construction: the same goals careful with skills, the rest careless
    assert {episode_mode(t, 0) for t in ("a", "b", "c", "d", "e", "f")} <= {"careful_skills", "careless"}
    for bad in ({"careless": "sloppy"}, {"careful_without_skills": 1.0}):
        with pytest.raises(Exception, match=next(iter(bad))):
            ReplicateConfig(**bad)


def _fake_run(tmp: Path, cfg: ReplicateConfig) -> None:
    """What the stages leave behind, with made-up numbers, for the report."""
    (tmp / "warmstart").mkdir(parents=True)
    (tmp / "warmstart" / "curve.jsonl").write_text(
        '{"step": 0, "eval_score": 0.0, "eval_success": 0.0}\n{"step": 1, "loss": 2.0}\n'
        '{"step": 2, "loss": 1.0, "eval_score": 0.3, "eval_success": 0.1}\n'
    )
    (tmp / "warmstart" / "recipe.json").write_text(
        json.dumps({"demos": 100, "bc_steps": 10, "bc_batch": 4, "wall_s": 60})
    )
    habits = {"episodes": 10, "vague_search": 8, "option_clicks": 1, "bought": 7}
    student = [{"success": 0.2 + 0.02 * i, "score": 0.5, "invalid_rate": 0.0, "habits": habits} for i in range(3)]
    teacher = [{"success": 0.4 + 0.02 * i, "score": 0.7, "invalid_rate": 0.0} for i in range(3)]
    (tmp / "premise.json").write_text(json.dumps({"student": student, "teacher": teacher}))
    for arm, gain in (("grpo", 0.05), ("sdar", 0.1)):
        for seed in cfg.seeds:
            run = tmp / "arms" / f"{arm}-s{seed}"
            run.mkdir(parents=True)
            rows = [
                {
                    "step": 0,
                    "success": 0.2,
                    "gate_mean": 0.4,
                    "gap_negative": 0.6,
                    "gap_mean": -0.1,
                    "invalid_rate": 0.0,
                }
            ]
            rows.append({"step": 2, "eval_success": 0.2 + gain + 0.01 * seed, "eval_return": 0.6})
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            careful = ["search[a hat with color: red]", "click[b000000001]", "click[red]", "click[buy now]"]
            careless = ["search[a hat]", "click[b000000001]", "click[buy now]"]
            episodes = [careful, careful if arm == "sdar" else careless]
            results = [{"actions": [f"<action>{a}</action>" for a in acts]} for acts in episodes]
            (run / "eval.json").write_text(json.dumps({"results": results}))


def test_report_table_intervals_and_plots(tmp_path):
    cfg = ReplicateConfig(out=str(tmp_path), arms=["grpo", "sdar"], seeds=[0, 1, 2], rl_steps=2)
    _fake_run(tmp_path, cfg)
    report = write_report(cfg, tmp_path).read_text()
    # start: the warm start's evaluation of each seed (0.20, 0.22, 0.24: t(0.975, 2) x 0.02 / sqrt 3 = 0.0497);
    # end: 0.30, 0.31, 0.32 (0.0248); the score from 0.5 to 0.6 on every seed
    assert "| sdar | 3 | 0.220 ± 0.050 | 0.310 ± 0.025 | 0.500 ± 0.000 | 0.600 ± 0.000 | +0.100 ± 0.000 |" in report
    assert "| warm start + skills (the teacher) | 0.420 ±" in report
    assert "| sdar | 0.400 | 0.600 | -0.100 | 0.000 |" in report  # the diagnostics, averaged
    # habits: shares of episodes (option clicks per episode); the teacher's were not recorded
    assert "| warm start, no skills (start) | 3 | 0.80 | 0.10 | 0.70 |" in report
    assert "| grpo, end | 3 | 0.50 | 0.50 | 1.00 |" in report and "| sdar, end | 3 | 0.00 | 1.00 | 1.00 |" in report
    assert "with skills (the teacher)" not in report.partition("## What the policies do")[2]
    for png in ("curves.png", "diagnostics.png", "warmstart.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_config_refuses_what_cannot_work():
    from sdar_train.config import ConfigError

    with pytest.raises(ConfigError, match="arms must be RL algorithms"):
        ReplicateConfig(arms=["sft"])
    with pytest.raises(ConfigError, match="group_size"):
        ReplicateConfig(group_size=1)
    with pytest.raises(ConfigError, match="rl_temperature"):
        ReplicateConfig(rl_temperature=0)
    with pytest.raises(ConfigError, match="parallel"):
        ReplicateConfig(parallel=0)


def test_arms_sample_at_the_rl_temperature(tmp_path):
    from sdar_train.config import config_from_args
    from sdar_train.miniature.replicate import arm_args

    args = arm_args(ReplicateConfig(rl_temperature=0.5), "sdar", 1, WARMSTART, tmp_path / "run")
    cfg = config_from_args(args)
    assert cfg.temperature == 0.5 and cfg.eval_temperature == 0.4 and cfg.seed == 1
    assert (
        config_from_args(arm_args(ReplicateConfig(rl_temperature=1.0), "grpo", 0, WARMSTART, tmp_path)).temperature
        == 1.0
    )
    assert ReplicateConfig().rl_temperature == 0.5  # the default: at 1.0 most turns were inadmissible


def test_packaged_warm_start_matches_its_checksums(tmp_path):
    check_warmstart()
    recipe = json.loads((WARMSTART / "recipe.json").read_text())
    assert recipe["demos"] > 0 and recipe["bc_steps"] > 0
    copy = tmp_path / "warmstart"
    shutil.copytree(WARMSTART, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(ValueError, match="config.json does not match its sha256"):
        check_warmstart(copy)


@pytest.mark.slow
def test_packaged_recipe_shortened_beats_the_untrained_model(tmp_path):
    """The packaged warm start's recipe, shortened, still learns: held-out score above the untrained model's."""
    recipe = json.loads((WARMSTART / "recipe.json").read_text())
    names = (
        "vocab_size",
        "hidden_size",
        "layers",
        "bc_lr",
        "bc_batch",
        "bc_prompt_lm",
        "careless",
        "careful_without_skills",
    )
    fields = {k: recipe[k] for k in names}
    # shortened to 60 goals and 150 steps (length-sorted micro-batches made a step 1.7x cheaper): measured
    # here, the held-out score goes 0.0 -> 0.044 and invalid turns 100% -> 3.5% (83% at step 50, 2.4% at 100)
    cfg = ReplicateConfig(
        out=str(tmp_path), **fields, demo_goals=60, bc_steps=150, bc_eval_every=1000, eval_episodes=10
    )
    warm = warm_start(cfg, tmp_path)
    curve = [json.loads(line) for line in (warm / "curve.jsonl").read_text().splitlines()]
    untrained, trained = curve[0], curve[-1]
    assert untrained["eval_score"] == 0.0 and untrained["eval_invalid_rate"] > 0.9
    assert trained["eval_score"] > 0.02  # it buys things that partly fit
    assert trained["eval_invalid_rate"] < 0.2
    # (that a greedy evaluation repeats exactly is checked on the packaged warm start by the demo's test)


def test_skills_before_the_chat_text_give_the_student_the_teachers_prompt():
    """The premise measures the teacher: evaluating with ``student_placement="before_chat"`` must show the
    policy exactly the prompt the SDAR teacher scores."""
    from sdar_envs import EnvPool
    from sdar_train.rollout import PromptSpec, collect_rollout, default_memory

    policy = load_policy("tiny", torch.device("cpu"))
    codec = PromptCodec(policy.tokenizer)

    def demonstrate(prompts, _seed):
        return [codec.encode_response(RESPONSE.format(webshop_action(read_prompt(codec.decode(p))))) for p in prompts]

    with EnvPool(ENV, 2, num_workers=0, env_kwargs={"split": "test"}) as pool:
        tasks = pool.call("task_ids")[0][:2]
        common = dict(codec=codec, generate=demonstrate, seed=0)
        memory = default_memory(ENV, "keyword", 0, None)
        taught = collect_rollout(
            pool, ENV, tasks, 1, prompts=PromptSpec(4096, 4608, memory=memory, teacher=True), **common
        )
        shown_prompt = PromptSpec(4096, 4608, memory=memory, student_skills=True, student_placement="before_chat")
        shown = collect_rollout(pool, ENV, tasks, 1, prompts=shown_prompt, **common)
    assert len(taught.samples) == len(shown.samples) > 4
    for t, s in zip(taught.samples, shown.samples, strict=True):
        assert s.prompt_ids == t.teacher_prompt_ids
        assert codec.decode(s.prompt_ids).startswith(SKILLS_HEADER)


@pytest.mark.slow
def test_demo_trains_the_packaged_warm_start_and_reports_before_and_after(tmp_path, capsys):
    """``make demo`` end to end, shortened: the same held-out goals evaluated before and after, a table."""
    from sdar_train.miniature.demo import main as demo

    out = tmp_path / "demo"
    args = ["--out", str(out), "--steps", "1", "--episodes", "4", "--tasks_per_step", "1", "--eval_temperature", "0"]
    assert demo(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["warm start"], summary["after 1 SDAR steps"]
    assert set(before) == set(after) == {"success", "return", "invalid_rate"}
    assert json.loads((out / "before.json").read_text())["episodes"] == 4
    assert json.loads((out / "sdar" / "eval.json").read_text())["episodes"] == 4
    printed = capsys.readouterr().out
    assert "held-out WebShop test goals: 4" in printed and "after 1 SDAR steps" in printed
    # the plot shows what the demo claims: held-out score and success before and after, not one point
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {out / 'demo.png'}" in printed
    # greedy evaluation is exact: evaluating the warm start again gives the same score
    cfg = ReplicateConfig(eval_episodes=4, eval_temperature=0.0)
    again = evaluate_policy(load_policy(str(WARMSTART), torch.device("cpu")), cfg, seed=0)
    assert again["return"] == pytest.approx(before["return"])


def test_the_shopper_expert_is_the_demonstrator_on_the_prompt_and_never_reads_the_target():
    """``expert="shopper"`` (what behaviour cloning uses) acts on what the agent sees: at every step its
    action is the prompt-reading demonstrator's on the prompt the policy would get, and its search is the
    instruction's words, where the default target path searches a title the instruction never shows."""
    import gymnasium as gym

    from sdar_envs.core import Turn
    from sdar_envs.webshop.env import WebShopEnv
    from sdar_envs.webshop.shopper import search_query

    assert WebShopEnv.demonstration_kwargs == {"expert": "shopper"}
    with pytest.raises(ValueError, match="expert must be 'target', 'shopper' or 'checklist'"):
        WebShopEnv(expert="oracle")  # type: ignore[arg-type]
    shopper = gym.make(ENV, split="test", expert="shopper").unwrapped
    target = gym.make(ENV, split="test").unwrapped
    scores, differs = [], 0
    for task_id in shopper.task_ids()[:100:10]:
        obs, info = shopper.reset(options={"task_id": task_id})
        assert info["expert_action"] == f"search[{search_query(info['task'])}]"
        differs += target.reset(options={"task_id": task_id})[1]["expert_action"] != info["expert_action"]
        history: list[Turn] = []
        while info["expert_action"]:
            prompt = shopper.prompt_builder(
                task=info["task"], observation=obs, history=history,
                admissible_actions=info["admissible_actions"], step=info["step"],
            )  # fmt: skip
            assert info["expert_action"] == webshop_action(read_prompt(prompt))
            action = RESPONSE.format(info["expert_action"])
            history.append(Turn(obs, action))
            obs, _, terminated, truncated, info = shopper.step(action)
            assert info["valid_action"]
            if terminated or truncated:
                break
        assert terminated and info["expert_action"] is None  # it bought
        scores.append(info["score"])
    assert differs >= 8  # the target path's title search is not the instruction
    assert sum(scores) / len(scores) > 0.6  # a careful shopper: about 0.8 on the test goals
