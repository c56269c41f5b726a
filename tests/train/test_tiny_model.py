"""``--model tiny`` is built on first use into the cache; a distributed launch on a fresh cache reaches
that point in every process at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdar_train.errors import ConfigError
from sdar_train.models import resolve_model_path
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


def _lora(base: str, out, seed: int) -> dict[str, torch.Tensor]:
    """A LoRA adapter folder over ``base`` with random (non-zero) weights; returns each weight's delta."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(resolve_model_path(base)),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(config))
    merged = model.merge_and_unload().state_dict()
    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path(base)).state_dict()
    return {k: merged[k] - plain[k] for k in plain if not torch.equal(merged[k], plain[k])}


def test_an_adapter_trained_over_another_resolves_from_beside_it_in_any_working_directory(tmp_path, monkeypatch):
    """A packaged stack (an adapter whose base is ``../first``, another adapter folder) merges both, whatever
    the working directory; adapters that name each other as bases get one line, not a recursion."""
    monkeypatch.setenv("SDAR_CACHE_DIR", str(tmp_path / "cache"))
    first, second = tmp_path / "pack" / "first", tmp_path / "pack" / "second"
    first_delta = _lora("tiny", first, seed=0)
    second_delta = _lora(str(first), second, seed=1)
    config = json.loads((second / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "../first"  # relative to the adapter, not to where the user stands
    (second / "adapter_config.json").write_text(json.dumps(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    merged = Path(resolve_model_path(str(second)))
    assert json.loads((merged / "PROVENANCE.json").read_text())["base"] == resolve_model_path(str(first))
    from safetensors.torch import load_file

    weights = load_file(merged / "model.safetensors")
    tiny = load_file(Path(resolve_model_path("tiny")) / "model.safetensors")
    assert first_delta and set(second_delta) == set(first_delta)
    for name, delta in first_delta.items():
        torch.testing.assert_close(weights[name], tiny[name] + delta + second_delta[name], rtol=1e-5, atol=1e-6)

    config = json.loads((first / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "../second"
    (first / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "cache").rename(tmp_path / "old-cache")  # nothing merged yet: the chain is read afresh
    with pytest.raises(ConfigError, match="name each other as base models"):
        resolve_model_path(str(second))
