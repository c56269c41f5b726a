"""``--model tiny`` is built on first use into the cache; a distributed launch on a fresh cache reaches
that point in every process at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def test_processes_that_ask_for_the_tiny_model_at_once_all_get_one_whole_model(tmp_path):
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from sdar_train.tiny_model import tiny_model_path\n"
        "p = tiny_model_path()\n"
        "for _ in range(20):  # keep reading while the others may still be building\n"
        "    AutoModelForCausalLM.from_pretrained(p); AutoTokenizer.from_pretrained(p)\n"
        "print(p)\n"
    )
    env = {**os.environ, "SDAR_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for rc, _, err in results if rc]
    assert len({out.strip().splitlines()[-1] for _, out, _ in results}) == 1
    models = [d for d in (tmp_path / "models").iterdir() if d.is_dir()]
    assert len(models) == 1 and (models[0] / "config.json").is_file()  # built once, no staging left behind


@pytest.mark.slow
def test_a_distributed_launch_on_a_fresh_cache_builds_what_it_needs_once(tmp_path, monkeypatch):
    """Both ranks reach the tiny model (and the Search-QA index) at once; transformers writes model files
    from rank 0 only, so whichever rank builds must still write them."""
    from tests.helpers import launch_two_processes, run_args

    monkeypatch.setenv("SDAR_CACHE_DIR", str(tmp_path / "cache"))
    done = launch_two_processes(["sdar_train", *run_args(algo="grpo", steps=1, output_dir=tmp_path / "run")])
    assert done.returncode == 0, done.stderr[-3000:]
    model = tmp_path / "cache" / "models"
    assert [d.name for d in model.iterdir() if d.is_dir()] == [next(model.glob("tiny-qwen2-*")).name]
    assert list(next(model.glob("tiny-qwen2-*")).glob("*.safetensors"))
