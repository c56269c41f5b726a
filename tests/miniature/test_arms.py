"""The real model's RL comparison (``real_model --stages arms``): every arm x seed runs from the warm start
with the paper's per-algorithm config, a finished run is not run again, and the report carries the
held-out table, curves and diagnostics. The tiny model stands in for the warm start (same code path)."""

from __future__ import annotations

import json

import pytest

from sdar_train.config import ConfigError, config_from_args
from sdar_train.miniature.arms import (
    ArmRun,
    ArmRunFailed,
    arm_difference_table,
    behaviour_table,
    evaluation_at,
    outcome_table,
    paired_goal_table,
    run_arms,
)
from sdar_train.miniature.real_model import SETTINGS, ArmSettings, arm_runs, main, premise_table


@pytest.mark.slow
def test_arms_from_the_warm_start_run_once_and_report(tmp_path):
    argv = ["--env", "webshop", "--out", str(tmp_path), "--stages", "arms", "--warm", "tiny"]
    argv += ["--arms", "grpo,sdar", "--seeds", "3", "--rl_steps", "1", "--rl_tasks_per_step", "1"]
    argv += ["--rl_group_size", "2", "--rl_eval_every", "1", "--rl_eval_episodes", "2", "--train_reward", "return"]
    argv += ["--threads", "1"]
    assert main(argv) == 0
    out = tmp_path / "webshop"
    start = json.loads((out / "arms" / "start-tiny.json").read_text())
    assert start["model"] == "tiny" and start["episodes"] == 2 and start["temperature"] == 0.0
    logs = {}
    for arm in ("grpo", "sdar"):
        run = out / "arms" / f"{arm}-s3"
        end = json.loads((run / "eval.json").read_text())
        assert end["episodes"] == 2 and end["temperature"] == 0.0
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "eval_success" in r] == [1]
        assert any("loss" in r for r in rows)
        logs[arm] = (run / "train.log").stat().st_mtime_ns
    report = (out / "report.md").read_text()
    for arm in ("grpo", "sdar"):
        assert f"| {arm} | 1 | {start['success']:.3f} | " in report  # one seed: no interval over seeds
    assert "| sdar | " in report.partition("SDAR's diagnostics")[2]
    for arm in ("grpo", "sdar"):  # each finished run against the start, goal by goal
        assert f"| {arm}, step 1 | 3 | 2 | {start['return']:.3f} -> " in report.partition("goal by goal")[2]
    assert "| sdar | 3 | 2 | " in report.partition("Each arm against GRPO of the same seed at step 1")[2]
    assert "| start | - | 2 | " in report.partition("what the policies do differently")[2]
    for png in ("curves.png", "diagnostics.png"):
        assert (out / png).stat().st_size > 10_000
    # a finished run is not run again: the same command only rewrites the report
    assert main(argv) == 0
    assert {arm: (out / "arms" / f"{arm}-s3" / "train.log").stat().st_mtime_ns for arm in logs} == logs


def test_the_paired_table_compares_each_run_with_the_start_goal_by_goal():
    def report(scores: list[float], actions: list[str]) -> dict:
        return {
            "results": [
                {"task_id": f"g{i}", "return": r, "actions": [a], "turns": 1 + i}
                for i, (r, a) in enumerate(zip(scores, actions, strict=True))
            ]
        }

    start = report([0.5, 0.2, 0.0, 1.0], ["a", "b", "c", "d"])
    end = report([0.7, 0.2, 0.0, 0.9], ["x", "b", "y", "z"])
    extra = {"results": [*end["results"], {"task_id": "other", "return": 1.0, "actions": [], "turns": 9}]}
    (row,) = paired_goal_table([("sdar", 0, start, extra)])[2:]  # a goal the start lacks is left out
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["sdar", "0", "4", "0.425 -> 0.450"]
    assert cells[4].startswith("+0.025 ± ") and float(cells[4].split("± ")[1]) > 0.1  # t-interval over 4 goals
    assert cells[5:] == ["3", "1 / 1", "2.50 -> 2.50"]  # actions changed on 3 goals, one higher, one lower


def test_each_run_is_compared_with_the_evaluation_of_the_model_it_started_from(tmp_path):
    """Runs resumed over sittings may have started from different exports of a warm start: each is paired
    with its own start's evaluation, and a run whose start was never evaluated says how to evaluate it."""
    out = tmp_path / "webshop"

    def evaluation(model: str | None, scores: list[float]) -> dict:
        rows = [
            {"task_id": f"g{i}", "return": r, "won": False, "turns": 3, "truncated": False, "actions": ["buy"]}
            for i, r in enumerate(scores)
        ]
        mean = sum(scores) / len(scores)
        return {**({"model": model} if model else {}), "success": 0.0, "return": mean, "results": rows}

    def run(arm: str, seed: int, model: str, scores: list[float]) -> None:
        d = out / "arms" / f"{arm}-s{seed}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model": model, "steps": 1}))
        (d / "eval.json").write_text(json.dumps(evaluation(model, scores)))
        row = {"step": 1, "loss": 0.1, "eval_success": 0.0, "eval_return": sum(scores) / len(scores)}
        (d / "metrics.jsonl").write_text(json.dumps(row) + "\n")

    (out / "arms").mkdir(parents=True)
    (out / "arms" / "start-export.json").write_text(json.dumps(evaluation("runs/export", [0.5, 0.5])))
    (out / "arms" / "start-adapter.json").write_text(json.dumps(evaluation("pkg/adapter", [0.6, 0.6])))
    (out / "arms" / "start.json").write_text(json.dumps(evaluation(None, [0.0, 0.0])))  # names no model: unused
    run("grpo", 0, "runs/export", [0.7, 0.5])
    run("grpo", 1, "pkg/adapter", [0.7, 0.5])
    run("sdar", 0, "elsewhere", [0.9, 0.9])
    argv = ["--env", "webshop", "--out", str(tmp_path), "--stages", "report", "--warm", "pkg/adapter"]
    argv += ["--arms", "grpo,sdar", "--seeds", "0,1", "--rl_steps", "1", "--rl_eval_every", "1"]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    goal_by_goal = report.partition("against its start on the same goals")[2]
    assert "| grpo, step 1 | 0 | 2 | 0.500 -> 0.600 | +0.100 ± " in goal_by_goal
    assert "| grpo, step 1 | 1 | 2 | 0.600 -> 0.600 | +0.000 ± " in goal_by_goal
    assert "| sdar, step 1 |" not in report  # never paired with a start it did not come from
    assert "- sdar seed 0 started from `elsewhere`, which has no evaluation" in report
    assert "--model elsewhere" in report and "start-elsewhere.json" in report
    assert "| grpo | 2 | 0.000 ± 0.000 | 0.000 ± 0.000 | 0.550 ± " in report  # step 0 of each seed is its own start
    for model, seeds in (("runs/export", "grpo seed 0"), ("pkg/adapter", "grpo seed 1")):
        assert f"- `{model}` (dtype not recorded): score " in report and f"start of {seeds}" in report
    behaviour = report.partition("what the policies do differently")[2]
    assert "| start `runs/export` | - | 2 |" in behaviour and "| start `pkg/adapter` | - | 2 |" in behaviour


def test_an_unreadable_start_evaluation_is_named(tmp_path):
    from sdar_train.errors import ConfigError
    from sdar_train.miniature.real_model import start_evaluations

    (tmp_path / "arms").mkdir()
    (tmp_path / "arms" / "start-x.json").write_text('{"model": "x", "return": 0.')
    with pytest.raises(ConfigError, match=r"start-x\.json: not a readable evaluation"):
        start_evaluations(tmp_path)


def _results(scores: list[float]) -> dict:
    return {"results": [{"task_id": f"g{i}", "return": r} for i, r in enumerate(scores)]}


def test_an_unfinished_run_is_compared_at_the_steps_it_was_evaluated(tmp_path):
    """Runs continue over sittings: every held-out evaluation is kept, so arms and seeds can be compared at
    an intermediate step before any of them ends."""
    runs = {("grpo", 0): tmp_path / "grpo-s0", ("sdar", 0): tmp_path / "sdar-s0", ("sdar", 1): tmp_path / "sdar-s1"}
    for run in runs.values():
        run.mkdir()
    for (arm, seed), scores in {
        ("grpo", 0): [0.5, 0.5, 0.2],
        ("sdar", 0): [0.7, 0.5, 0.1],
        ("sdar", 1): [0.6, 0.6, 0.6],
    }.items():
        (runs[arm, seed] / "eval-step10.json").write_text(json.dumps(_results(scores)))
    assert evaluation_at(tmp_path / "grpo-s0", 20) is None and evaluation_at(tmp_path / "nothing") is None
    assert evaluation_at(runs["sdar", 0]) == (10, _results([0.7, 0.5, 0.1]))
    # done: eval.json is the evaluation at the run's last step (its config's steps) and the latest one
    (runs["grpo", 0] / "config.json").write_text(json.dumps({"steps": 20}))
    (runs["grpo", 0] / "eval.json").write_text(json.dumps(_results([0.9, 0.9, 0.9])))
    assert evaluation_at(runs["grpo", 0]) == (20, _results([0.9, 0.9, 0.9]))
    assert evaluation_at(runs["grpo", 0], 10) == (10, _results([0.5, 0.5, 0.2]))
    # SDAR seed 0 against GRPO seed 0 at step 10, goal by goal; seed 1 has no GRPO run to compare with
    (row,) = arm_difference_table(runs, "grpo", 10)[2:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["sdar", "0", "3"] and cells[3].startswith("+0.033 ± ") and cells[4] == "1 / 1"
    assert arm_difference_table(runs, "grpo", 20)[2:] == []  # SDAR was not evaluated at step 20
    # over seeds: the seeds evaluated at step 10, start to step 10, whichever is each run's last step
    start = {"step": 0, "eval_success": 0.0, "eval_return": 0.4}
    curves = {
        "sdar": {
            0: [start, {"step": 10, "eval_success": 0.0, "eval_return": 0.5}, {"step": 11, "loss": 1.0}],
            1: [start, {"step": 10, "eval_success": 0.1, "eval_return": 0.7}],
        }
    }
    (row,) = outcome_table(curves, 10)[2:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["sdar", "2"] and cells[5].startswith("0.600 ± ") and cells[6].startswith("+0.200 ± ")
    assert outcome_table(curves, 20)[2:] == []


def test_each_arm_runs_the_papers_config_sized_for_a_cpu(tmp_path):
    runs = arm_runs(SETTINGS["webshop"], ArmSettings(seeds=(0, 1)), "tiny", tmp_path)
    assert [(r.arm, r.seed) for r in runs] == [(a, s) for s in (0, 1) for a in ("grpo", "sdar", "opsd")]
    by_arm = {r.arm: config_from_args(list(r.args)) for r in runs if r.seed == 1}
    assert by_arm["sdar"].sdar_coef == 0.01 and by_arm["sdar"].kl_coef == 0.01  # webshop_sdar.yaml's values
    for cfg in by_arm.values():
        assert cfg.seed == 1 and cfg.lora_r == 16 and cfg.eval_temperature == 0.0 and cfg.temperature == 1.0
        assert cfg.env == "SDAR/WebShop-v0" and cfg.max_response_tokens == SETTINGS["webshop"].max_response_tokens
    assert {r.run_dir.name for r in runs} == {f"{a}-s{s}" for a in ("grpo", "sdar", "opsd") for s in (0, 1)}
    assert all(cfg.micro_batch_size == 2 and cfg.generation_backend == "hf" for cfg in by_arm.values())
    assert not any(cfg.skip_flat_groups for cfg in by_arm.values())  # the paper's configs keep every group
    (skipping,) = arm_runs(
        SETTINGS["searchqa"], ArmSettings(arms=("grpo",), seeds=(0,), skip_flat_groups=True), "tiny", tmp_path
    )
    assert config_from_args(list(skipping.args)).skip_flat_groups


def test_the_comparison_resizes_for_a_gpu(tmp_path):
    """bench/gpu_real.py runs the same comparison on a GPU: bigger micro-batches and groups, vLLM rollouts."""
    a = ArmSettings(
        arms=("sdar",), seeds=(0,), tasks_per_step=8, group_size=8, micro_batch_size=16, generation_backend="vllm"
    )
    (run,) = arm_runs(SETTINGS["webshop"], a, "tiny", tmp_path)
    cfg = config_from_args(list(run.args))
    assert (cfg.micro_batch_size, cfg.group_size, cfg.tasks_per_step, cfg.generation_backend) == (16, 8, 8, "vllm")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("arms", ("sft",), "arms must be RL algorithms"),
        ("group_size", 1, "group_size"),
        ("train_reward", "score", "train_reward"),
        ("seeds", (), "seeds"),
        ("eval_every", 0, "eval_every"),
        ("micro_batch_size", 0, "micro_batch_size"),
        ("generation_backend", "sglang", "generation_backend"),
    ],
)
def test_arm_settings_refuse_what_cannot_work(field, value, match):
    with pytest.raises(ConfigError, match=match):
        ArmSettings(**{field: value})


def test_a_failed_run_is_named_with_its_status_and_nothing_queued_starts_after_it(tmp_path, capsys):
    """A run the out-of-memory killer ends must not pass silently while the queue moves on (seen on the
    real-model comparison: three runs killed, the log saying only which started next)."""
    bad = ArmRun("grpo", 0, tmp_path / "grpo-s0", ("--algo", "no-such-algo"))  # sdar_train exits 2
    queued = ArmRun("sdar", 0, tmp_path / "sdar-s0", ("--algo", "sdar"))
    with pytest.raises(ArmRunFailed, match="grpo seed 0 failed \\(exit status 2\\)"):
        run_arms([bad, queued], parallel=1)
    err = capsys.readouterr().err
    assert "grpo seed 0 FAILED after" in err and str(bad.run_dir / "train.log") in err
    assert "sdar seed 0 not started: a run before it failed" in err
    assert not queued.run_dir.exists()
    assert "no-such-algo" in (bad.run_dir / "train.log").read_text()  # the trainer's own error, kept


def test_the_premise_table_pairs_the_teacher_with_the_student_or_says_it_was_not_measured(tmp_path):
    assert premise_table(tmp_path) == [f"Not measured in `{tmp_path}` (`--stages premise` measures it)."]

    def report(scores: list[float], actions: list[str]) -> dict:
        rows = [
            {"task_id": f"g{i}", "return": r, "actions": [a]}
            for i, (r, a) in enumerate(zip(scores, actions, strict=True))
        ]
        summary = {"episodes": len(rows), "success": 0.0, "return": sum(scores) / len(scores), "invalid_rate": 0.0}
        return {**summary, "inadmissible_rate": 0.1, "response_limit_rate": 0.0, "episode_length": 4.0, "results": rows}

    (tmp_path / "premise-warm-none.json").write_text(json.dumps(report([0.5, 0.2, 0.0, 1.0], ["a", "b", "c", "d"])))
    (tmp_path / "premise-warm-teacher.json").write_text(json.dumps(report([0.7, 0.2, 0.0, 0.9], ["x", "b", "y", "z"])))
    table = premise_table(tmp_path)
    assert table[2].startswith("| warm start | student (no skills) | 4 | 0.000 | 0.425 | 1.000 | 0.900 |")
    assert table[3].startswith("| warm start | teacher (skills before the chat) | 4 | 0.000 | 0.450 |")
    (paired,) = [line for line in table if line.startswith("- warm start:")]
    assert paired.startswith("- warm start: the skills add +0.025 ± ")
    assert paired.endswith("over 4 goals (actions changed on 3; higher on 1, lower on 1)")


def test_the_behaviour_table_tells_finishing_more_often_from_choosing_better():
    def report(rows: list[tuple[float, int, list[str], bool | None]]) -> dict:
        out = []
        for i, (score, turns, actions, truncated) in enumerate(rows):
            row = {"task_id": f"g{i}", "return": score, "turns": turns, "won": False, "actions": actions}
            out.append(row if truncated is None else {**row, "truncated": truncated})
        return {"results": out}

    loop = ["search[x]", "click[a]", "click[a]", "click[a]"]
    # an evaluation written before rows carried "truncated": 4 turns of a 4-turn limit without a win is cut
    start = report([(0.5, 3, ["search[x]", "click[a]", "buy"], None), (0.0, 4, loop, None)])
    end = report([(0.4, 3, ["search[x]", "click[a]", "buy"], False), (0.4, 2, ["search[x]", "buy"], False)])
    header, _, first, second = behaviour_table([("start", "-", start), ("sdar, step 20", 0, end)], max_turns=4)
    assert header.startswith("| arm | seed | goals | ended by the agent | score when it ended |")
    assert first == "| start | - | 2 | 1 | 0.500 | 0.286 | 3.50 |"  # 2 repeats in 7 turns
    assert second == "| sdar, step 20 | 0 | 2 | 2 | 0.400 | 0.000 | 2.50 |"


@pytest.mark.parametrize("env", sorted(SETTINGS))
def test_each_environments_turn_limit_is_the_one_the_environment_uses(env):
    import inspect

    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    import sdar_envs  # noqa: F401 - registers the environments

    creator = load_env_creator(gym.spec(SETTINGS[env].env_id).entry_point)
    assert inspect.signature(creator).parameters["max_steps"].default == SETTINGS[env].max_turns
