"""The deterministic evaluation command."""

from __future__ import annotations

import json

import pytest
import torch

from sdar_envs.alfworld.evaluate import evaluate, main


def test_expert_scores_all_and_random_repeats_exactly(tmp_path):
    expert = evaluate("valid_seen", "expert", episodes=5, seed=0, workers=0, max_steps=50)
    assert expert["episodes"] == 5 and expert["success_rate"] == 1.0
    runs = [evaluate("valid_seen", "random", episodes=4, seed=3, workers=0, max_steps=8)["results"] for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(r["steps"] == 8 for r in runs[0] if not r["won"])
    out = tmp_path / "report.json"
    assert (
        main(["--split", "valid_seen", "--policy", "expert", "--episodes", "2", "--workers", "0", "--out", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["success_rate"] == 1.0 and [r["index"] for r in report["results"]] == [0, 1]


def test_evaluation_repeats_report_the_mean_and_a_95_interval_and_the_rambling_share(local_searcher, tmp_path):
    """avg@k: k seeded passes over the same tasks, their mean and 95% interval, each pass kept; and the
    share of turns cut at the response limit (the tiny untrained model never stops within 6 tokens)."""
    from sdar_train.eval import evaluate_repeats
    from sdar_train.eval import main as eval_main
    from sdar_train.policy import load_policy
    from sdar_train.report import mean_interval

    policy = load_policy("tiny", torch.device("cpu"))
    kwargs = dict(env_kwargs={"split": "test", "max_steps": 2}, episodes=4, temperature=1.0, max_response_tokens=6)
    report = evaluate_repeats(policy, "SDAR/SearchQA-v0", repeats=3, seed=7, **kwargs)
    assert report["repeats"] == 3 and report["seeds"] == [7, 8, 9] and len(report["passes"]) == 3
    returns = [p["return"] for p in report["passes"]]
    assert (report["return"], report["return_ci95"]) == pytest.approx(mean_interval(returns))
    assert len({json.dumps([r["actions"] for r in p["results"]]) for p in report["passes"]}) == 3  # seeds differ
    assert report["response_limit_rate"] == pytest.approx(1.0)
    # it never answers, so every episode is ended by the turn limit, and each row says so
    assert all(r["truncated"] and r["turns"] == 2 for p in report["passes"] for r in p["results"])
    out = tmp_path / "report.json"
    args = ["--env", "SDAR/SearchQA-v0", "--model", "tiny", "--split", "test", "--episodes", "2", "--max_turns", "1"]
    assert eval_main([*args, "--temperature", "0", "--repeats", "2", "--out", str(out)]) == 0
    greedy = json.loads(out.read_text())
    assert greedy["repeats"] == 2 and greedy["success_ci95"] == 0.0 and greedy["return_ci95"] == 0.0
    assert (greedy["model"], greedy["dtype"]) == ("tiny", "float32")  # the report says what it measured


def test_a_failed_report_write_keeps_the_previous_report(tmp_path, monkeypatch):
    """RL runs are paired with a start evaluation on disk: a write cut off halfway (a killed process, a full
    disk) must leave the file it was replacing whole, and leave no stray file behind."""
    import pathlib

    from sdar_train.eval import write_report

    path = write_report(tmp_path / "start.json", {"model": "a", "success": 0.5})
    real_write_text = pathlib.Path.write_text

    def cut_off(self, data, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", cut_off)
    with pytest.raises(OSError, match="No space"):
        write_report(path, {"model": "b", "success": 0.6})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"model": "a", "success": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["start.json"]
    write_report(path, {"model": "b", "success": 0.6})
    assert json.loads(path.read_text())["model"] == "b"


def test_the_eval_command_passes_env_kwargs_to_the_environment(tmp_path):
    """A WebShop model cloned on `text_rich` pages is evaluated on them: --env_kwargs reaches gymnasium.make,
    the report records it, and what the env refuses is refused before any episode runs."""
    from sdar_train.eval import main as eval_main

    args = ["--env", "SDAR/WebShop-v0", "--model", "tiny", "--split", "test", "--episodes", "1", "--max_turns", "1"]
    out = tmp_path / "rich.json"
    rich = '{"observation_mode": "text_rich", "split": "train"}'
    assert eval_main([*args, "--env_kwargs", rich, "--temperature", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["env_kwargs"] == {"observation_mode": "text_rich", "split": "test", "max_steps": 1}  # --split wins
    with pytest.raises(ValueError, match="observation_mode must be"):
        eval_main([*args, "--env_kwargs", '{"observation_mode": "html"}'])
    for bad in ("{observation_mode: text_rich}", '["text_rich"]'):
        with pytest.raises(SystemExit) as exit_:
            eval_main([*args, "--env_kwargs", bad])
        assert exit_.value.code == 2
