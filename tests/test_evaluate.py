"""The deterministic evaluation command."""

from __future__ import annotations

import json

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
