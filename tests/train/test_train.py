"""The training harness end to end on CPU with the tiny local model: every algorithm on the three real
environments, the response-only mask, exact resume, and learning on a toy task."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from sdar_train import checkpoints
from sdar_train.config import ALGORITHMS, ConfigError, TrainConfig, config_from_args, load_config
from sdar_train.policy import encode_prompt, load_policy, pack, response_logprobs
from sdar_train.trainer import Trainer
from tests.helpers import DATA, ROOT, launch_two_processes, response_logit_grads, run_args

if "Test/LetterY-v0" not in gym.registry:
    gym.register("Test/LetterY-v0", entry_point="tests.train.toy_env:LetterEnv")
if "Test/FlakyLetter-v0" not in gym.registry:
    gym.register("Test/FlakyLetter-v0", entry_point="tests.train.toy_env:FlakyLetterEnv")

SMALL = dict(
    model="tiny",
    steps=1,
    tasks_per_step=1,
    group_size=2,
    max_turns=2,
    max_response_tokens=8,
    max_prompt_tokens=512,
    max_teacher_prompt_tokens=768,
    mini_batch_size=8,
    micro_batch_size=4,
    lr=1e-4,
    progress=False,
    save_every=100,
)
ENVS = {
    "SDAR/ALFWorld-v0": {"split": "valid_seen"},
    "SDAR/SearchQA-v0": {"split": "test"},
    "SDAR/WebShop-v0": {"split": "test"},
}


def demonstrations(tmp_path, env: str, env_kwargs: dict, **overrides):
    """One ``--algo sft`` rollout of the harness on ``env`` (the env's ``demonstration_kwargs`` expert), and
    the policy tokenizer's ``decode``."""
    cfg = TrainConfig(env=env, env_kwargs=env_kwargs, algo="sft", output_dir=str(tmp_path), **{**SMALL, **overrides})
    trainer = Trainer(cfg)
    try:
        return trainer.rollout(0), trainer.policy.tokenizer.decode
    finally:
        trainer.close()


def test_behaviour_cloning_on_webshop_demonstrates_what_the_agent_can_see(tmp_path):
    """``--algo sft`` on WebShop clones the instruction-only shopper (the env's ``demonstration_kwargs``),
    not the target path, whose search is the target's title: a warm start cloned from that searched
    "buy now" and "<your query>" and scored 0 (docs/real_model/webshop/)."""
    from sdar_envs.core import command_text
    from sdar_envs.webshop.shopper import search_query

    rollout, _ = demonstrations(tmp_path, "SDAR/WebShop-v0", {"split": "test"})
    assert rollout.episodes
    for episode in rollout.episodes:
        assert command_text(episode.actions[0]) == f"search[{search_query(episode.task)}]"


def test_behaviour_cloning_from_the_checklist_shopper_trains_its_whole_reply(tmp_path):
    """``--env_kwargs '{"expert": "checklist"}'``: the demonstrated replies are the expert's own, thought
    included, token for token (not re-wrapped in an empty ``<think>``)."""
    rollout, decode = demonstrations(
        tmp_path, "SDAR/WebShop-v0", {"split": "test", "expert": "checklist"}, tasks_per_step=2, max_turns=6
    )
    replies = [decode(s.response_ids, skip_special_tokens=True) for s in rollout.samples]
    planned = [r for r in replies if r.startswith("<think>Options to click: ")]
    assert planned and all(r.count("<think>") == 1 for r in replies)
    assert any(r.startswith("<think>Options to click: none.</think><action>click[buy now]</action>") for r in planned)


def test_behaviour_cloning_on_alfworld_demonstrates_what_the_agent_can_see(tmp_path):
    """``--algo sft`` on ALFWorld clones the searcher, whose every command follows from the prompt the
    policy is shown (the miniature's demonstrator reads it off that text), not the walkthrough, which
    goes straight to where the object lies: SmolLM2 cloned from it won 2 of 20 held-out games, guessing
    a receptacle and then taking and putting back the object (docs/real_model/alfworld/)."""
    from sdar_envs.core import command_text
    from sdar_train.miniature.alfworld_demonstrator import alfworld_command

    rollout, decode = demonstrations(
        tmp_path,
        "SDAR/ALFWorld-v0",
        {"split": "valid_unseen"},
        tasks_per_step=3,
        max_turns=6,
        max_prompt_tokens=2048,
        max_teacher_prompt_tokens=3072,
    )
    assert len(rollout.samples) >= 3 * 4
    for sample in rollout.samples:
        prompt = decode(sample.prompt_ids, skip_special_tokens=True)
        assert command_text(decode(sample.response_ids, skip_special_tokens=True)) == alfworld_command(prompt)


def test_behaviour_cloning_on_searchqa_demonstrates_only_answers_it_retrieved(tmp_path, local_searcher):
    """``--algo sft`` on Search-QA clones the grounded expert: every demonstrated answer is in the passages
    of the prompt it answers, and a question whose search grounds nothing demonstrates the search alone.
    The gold expert answered the gold answer whatever the passages held, and its clone guessed
    (docs/real_model/)."""
    from sdar_envs.searchqa.env import parse_action
    from sdar_envs.searchqa.metrics import normalize_answer

    rollout, decode = demonstrations(
        tmp_path,
        "SDAR/SearchQA-v0",
        {"split": "train"},
        tasks_per_step=12,
        max_prompt_tokens=2048,
        max_teacher_prompt_tokens=3072,
    )
    kinds = {"search": 0, "answer": 0}
    for sample in rollout.samples:
        kind, content = parse_action(decode(sample.response_ids, skip_special_tokens=True))
        kinds[kind] += 1
        if kind == "answer":
            prompt = normalize_answer(decode(sample.prompt_ids, skip_special_tokens=True))
            assert f" {normalize_answer(content)} " in f" {prompt} " or normalize_answer(content) in ("yes", "no")
    assert kinds["search"] == 12 and 0 < kinds["answer"] < 12  # some questions ground nothing
    assert sum(ep.won for ep in rollout.episodes) == kinds["answer"]


@pytest.mark.parametrize("algo", list(ALGORITHMS))
@pytest.mark.parametrize("env_id", list(ENVS))
def test_every_algorithm_runs_on_the_real_environments(tmp_path, env_id, algo, local_searcher):
    cfg = TrainConfig(env=env_id, env_kwargs=ENVS[env_id], algo=algo, output_dir=str(tmp_path), **SMALL)
    trainer = Trainer(cfg)
    try:
        (metrics,) = trainer.train()
    finally:
        trainer.close()
    assert metrics["samples"] > 0
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert math.isfinite(metrics["loss"])
    if ALGORITHMS[algo].distill:
        assert {"gate_mean", "gate_active", "gap_mean", "gap_negative", "sdar_loss"} <= set(metrics)
        if algo == "opsd":  # ungated; opsd_only is gated (beta 5), as the reference runs it
            assert metrics["gate_mean"] == pytest.approx(0.5)
    if ALGORITHMS[algo].policy_gradient:
        assert {"pg_loss", "kl", "entropy", "reward", "success", "invalid_rate", "episode_length"} <= set(metrics)
    if ALGORITHMS[algo].sft:  # the demonstrations' outcomes, labelled as such
        assert {"demo_success", "demo_reward", "sft_loss"} <= set(metrics) and "success" not in metrics
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["step"] == 0 and (tmp_path / "checkpoints").is_dir()


def test_only_response_tokens_get_gradient(valid_seen_tasks):
    """Real multi-turn ALFWorld prompts (task, history, observation, admissible actions): the loss reaches
    only the logits that predict response tokens, and the targets are exactly the responses."""
    policy = load_policy("tiny", torch.device("cpu"))
    env = gym.make("SDAR/ALFWorld-v0", split="valid_seen", expert="walkthrough")
    from sdar_envs import Turn, prompt_builder

    build = prompt_builder("SDAR/ALFWorld-v0")
    obs, info = env.reset(options={"task_id": valid_seen_tasks[0].task_id})
    history, prompts = [], []
    for _ in range(3):
        prompts.append(
            encode_prompt(
                policy.tokenizer,
                build(
                    task=info["task"],
                    observation=obs,
                    history=history,
                    admissible_actions=info["admissible_actions"],
                    step=info["step"],
                ),
                1024,
            )
        )
        action = info["expert_action"]
        history.append(Turn(obs, action))
        obs, *_, info = env.step(action)
    assert history[0].observation.split()[0] in policy.tokenizer.decode(prompts[2])  # observations are in the prompt
    responses = [policy.tokenizer(f"<action>{t.action}</action>", add_special_tokens=False).input_ids for t in history]
    responses[1] = responses[1][:3]  # rows of different lengths: padding must not count either
    all_turns = prompts, responses
    # right-padded: the later two turns (the first turn's prompt, without history, is too much shorter
    # to share right-padded rows with them: batching.right_padding_fits); left-padded: all three
    for right_padded, turns in ((True, slice(1, 3)), (False, slice(0, 3))):
        prompts, responses = all_turns[0][turns], all_turns[1][turns]
        batch = pack(prompts, responses, policy.pad_id, right_padded=right_padded)
        assert (batch.starts is not None) == right_padded
        assert len({len(p) for p in prompts}) == len(prompts) and len({len(r) for r in responses}) == len(responses)
        for i, r in enumerate(responses):
            assert batch.targets[i, : len(r)].tolist() == r
            assert batch.mask[i].tolist() == [1.0] * len(r) + [0.0] * (batch.mask.size(1) - len(r))
        # logits exist only for the columns that predict some row's response: [n, R + 1] left-padded; from
        # the earliest response start to the latest one's end, right-padded (rows start apart)
        grad, firsts = response_logit_grads(policy.model, batch)
        assert right_padded or grad.size(1) == batch.mask.size(1) + 1
        assert not right_padded or grad.size(1) <= max(firsts) + batch.mask.size(1)
        for i, r in enumerate(responses):
            first = firsts[i]
            assert (grad[i, first : first + len(r)] > 0).all(), "every response token is trained"
            assert (grad[i, :first] == 0).all(), "no prompt token is"
            assert (grad[i, first + len(r) :] == 0).all(), "padding and the position after the response are not"


def test_resume_continues_exactly(tmp_path):
    base = dict(
        SMALL, env="SDAR/SearchQA-v0", env_kwargs={"split": "test"}, algo="sdar", steps=3, tasks_per_step=2, lr=1e-3
    )
    straight = Trainer(TrainConfig(output_dir=str(tmp_path / "a"), **base))
    try:
        full = straight.train()
    finally:
        straight.close()
    first = Trainer(TrainConfig(output_dir=str(tmp_path / "b"), **{**base, "steps": 2, "save_every": 1}))
    try:
        first.train()
    finally:
        first.close()
    resumed = Trainer(TrainConfig(output_dir=str(tmp_path / "b"), resume=True, **base))
    try:
        assert resumed.step == 2
        (last,) = resumed.train()
    finally:
        resumed.close()
    for key in ("loss", "reward", "sdar_loss", "pg_loss", "kl", "gate_mean"):
        assert last[key] == pytest.approx(full[2][key], rel=1e-5, abs=1e-7), key


def _letter_run(tmp_path, algo: str, skill_file: str | None = None) -> list[dict]:
    cfg = TrainConfig(
        env="Test/LetterY-v0",
        algo=algo,
        model="tiny",
        output_dir=str(tmp_path / algo),
        steps=30,
        tasks_per_step=4,
        group_size=8,
        max_response_tokens=4,
        max_prompt_tokens=64,
        max_teacher_prompt_tokens=256,
        lr=5e-3,
        kl_coef=0.0,
        mini_batch_size=32,
        micro_batch_size=32,
        progress=False,
        save_every=1000,
        skill_file=skill_file,
        sdar_coef=0.01,
    )
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


@pytest.mark.slow
def test_grpo_learns_a_toy_task_and_sdar_is_not_slower(tmp_path):
    skills = tmp_path / "skills.yaml"
    skills.write_text(
        "env: lettery\nskills:\n  - id: y\n    title: Use the letter y\n"
        "    text: Answer with a word that contains y, such as yes, you, year, yellow or day.\n"
    )
    grpo = _letter_run(tmp_path, "grpo")
    early = sum(m["success"] for m in grpo[:5]) / 5
    late = sum(m["success"] for m in grpo[-5:]) / 5
    assert late >= early + 0.25, (early, late)
    sdar = _letter_run(tmp_path, "sdar", str(skills))
    # learning speed = mean success over the run (the area under the curve); same seeds, same tasks
    grpo_auc, sdar_auc = (sum(m["success"] for m in run) / len(run) for run in (grpo, sdar))
    assert sdar_auc >= grpo_auc - 0.02, (grpo_auc, sdar_auc)
    assert all(0.0 <= m["gate_mean"] <= 1.0 for m in sdar)


def test_configs_load_and_validate(tmp_path):
    for env in ("alfworld", "searchqa", "webshop"):
        for algo in ALGORITHMS:
            cfg = load_config(f"{env}_{algo}.yaml")
            assert cfg.algo == algo and cfg.env.startswith("SDAR/")
    assert load_config("alfworld_sdar.yaml").lr == 1e-6 and load_config("searchqa_grpo.yaml").kl_coef == 0.001
    cfg = config_from_args(
        ["--config", "alfworld_sdar.yaml", "--lr", "1e-4", "--env_kwargs", "{split: valid_seen}", "--steps", "3"]
    )
    assert cfg.lr == 1e-4 and cfg.env_kwargs == {"split": "valid_seen"} and cfg.steps == 3 and cfg.sdar_beta == 5.0
    with pytest.raises(ValueError, match="algo must be one of"):
        TrainConfig(algo="ppo")
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        TrainConfig(group_size=1)
    with pytest.raises(ValueError, match="max_teacher_prompt_tokens"):
        TrainConfig(max_prompt_tokens=4096, max_teacher_prompt_tokens=1024)
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: sdar\nlearning_rate: 1e-6\n")
    with pytest.raises(ValueError, match="unknown config field"):
        load_config(bad)


def test_tiny_model_tokenizer_round_trips_and_chats():
    policy = load_policy("tiny", torch.device("cpu"))
    tok = policy.tokenizer
    text = "Your task is to: put a hot apple in fridge. <action>go to countertop 1</action> Röntgen"
    assert tok.decode(tok(text).input_ids) == text
    ids = encode_prompt(tok, "hello", 64)
    assert tok.decode(ids).startswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
    assert 0.5e6 < sum(p.numel() for p in policy.model.parameters()) < 2e6


@pytest.mark.slow
def test_two_cpu_processes_average_to_the_full_batch_gradient(tmp_path):
    """Accelerate DDP over gloo with two CPU processes vs one process on the whole batch."""
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true"}
    subprocess.run(
        [sys.executable, "-m", "tests.train.grad_check", "--out", str(tmp_path / "one.pt")],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    two = launch_two_processes(["tests.train.grad_check", "--out", str(tmp_path / "two.pt")], timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["grads"].keys() == two["grads"].keys() and one["grads"]
    for name, g in one["grads"].items():
        assert torch.allclose(g, two["grads"][name], atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
def test_two_cpu_processes_train_evaluate_and_save_end_to_end(tmp_path):
    """The whole loop under DDP: rollouts generate with the unwrapped model, the ranks' updates stay in
    step, the periodic evaluation runs on the main process, and the final model is saved once."""
    args = run_args(algo="sdar", eval_every=1, eval_episodes=2, output_dir=tmp_path)
    done = launch_two_processes(["sdar_train", *args])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [0, 1] and all(math.isfinite(r["loss"]) and r["samples"] > 0 for r in train)
    assert any("eval_success" in r for r in rows) and (tmp_path / "final" / "config.json").exists()


def test_lora_trains_only_adapters_and_keeps_a_kl_to_the_base_model(tmp_path):
    cfg = TrainConfig(
        env="SDAR/SearchQA-v0",
        env_kwargs={"split": "test"},
        algo="sdar",
        output_dir=str(tmp_path),
        lora_r=4,
        **{**SMALL, "lr": 1e-2, "steps": 2},
    )
    trainer = Trainer(cfg)
    try:
        base = {
            k: v.clone()
            for k, v in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
            if "lora" not in k
        }
        history = trainer.train()
        after = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
        assert all(torch.equal(base[k], after[k]) for k in base), "base weights stay frozen"
        assert history[1]["kl"] > 0 and all(math.isfinite(m["loss"]) for m in history)
        final = trainer.save_model()
    finally:
        trainer.close()
    merged = load_policy(str(final), torch.device("cpu"))  # adapters merged into a plain model
    assert not any("lora" in k for k, _ in merged.model.named_parameters())


def test_lora_under_bf16_autocast_skips_the_adapters_input_casts_and_computes_the_same_update(tmp_path):
    """LoRA's fp32 adapters over a bf16 base, under autocast: peft's cast of every adapter input to fp32
    (which autocast casts back) is switched off in the update's forward, and the gradient is bit for bit
    the one with the casts."""
    from accelerate.state import AcceleratorState
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdar_train.trainer import TurnBatch

    AcceleratorState._reset_state(True)  # Accelerate keeps one precision per process: this test's is bf16
    cfg = TrainConfig(env="Test/LetterY-v0", algo="grpo", output_dir=str(tmp_path), lora_r=4, bf16=True,
                      kl_coef=0.0, tasks_per_step=1, group_size=2, mini_batch_size=4, micro_batch_size=2, progress=False)  # fmt: skip
    trainer = Trainer(cfg)
    try:
        model = trainer.accelerator.unwrap_model(trainer.model)
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        seen: list[bool] = []
        hook = layers[0].register_forward_pre_hook(lambda m, i: seen.append(m.cast_input_dtype_enabled))
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(10, 4000, (n,), generator=gen).tolist() for n in (7, 12, 9, 5)]
        responses = [torch.randint(10, 4000, (n,), generator=gen).tolist() for n in (3, 5, 2, 4)]
        batch = TurnBatch(prompts, responses, torch.tensor([1.0, -1.0, 0.5, -0.5]))
        grads = []
        for casts in (False, True):
            if casts:
                trainer._no_adapter_casts = contextlib.nullcontext  # type: ignore[method-assign]
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.update(batch, step=0, optimizer_step=False)
            grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        hook.remove()
    finally:
        trainer.close()
        AcceleratorState._reset_state(True)
    assert seen and not any(seen[: len(seen) // 2]) and all(seen[len(seen) // 2 :])  # off, then on
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True)) and any(g.abs().sum() > 0 for g in grads[0])


def test_the_command_line_trains_evaluates_periodically_and_plots(tmp_path):
    from sdar_train.__main__ import main

    out = tmp_path / "run"
    args = run_args(algo="grpo", tasks_per_step=1, max_turns=4, eval_every=1, eval_episodes=3, output_dir=out)
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # after 1 of 2 steps, and the final one (also in eval.json): both at the number of steps done
    assert [r["step"] for r in rows if "eval_success" in r] == [1, 2]
    # the periodic evaluation keeps every episode, as the final one does: goal-by-goal comparisons at step 1
    at_1 = json.loads((out / "eval-step1.json").read_text())
    assert at_1["episodes"] == 3 and len(at_1["results"]) == 3
    assert at_1["return"] == next(r["eval_return"] for r in rows if r.get("step") == 1 and "eval_return" in r)
    report = json.loads((out / "eval.json").read_text())
    # Search-QA evaluates greedy (T=0), the reference's setting
    assert (
        report["episodes"] == 3
        and report["temperature"] == 0.0
        and set(report["per_task_type"]) <= {"nq", "hotpotqa", "musique"}
    )
    assert (out / "curves.png").stat().st_size > 1000 and (out / "final" / "config.json").exists()
    assert list((out / "tensorboard").iterdir())


@pytest.mark.parametrize("placement", ["before_chat", "in_user"])
def test_teacher_prompts_add_skills_within_budget_and_never_cut_the_prompt(valid_seen_tasks, placement):
    from sdar_envs import EnvPool
    from sdar_train.policy import PromptCodec
    from sdar_train.rollout import PromptSpec, collect_rollout, default_memory

    policy = load_policy("tiny", torch.device("cpu"))
    tok = policy.tokenizer
    memory = default_memory("SDAR/ALFWorld-v0", "keyword", 0, None)
    with EnvPool("SDAR/ALFWorld-v0", 2, num_workers=0, env_kwargs={"split": "valid_seen", "max_steps": 2}) as pool:
        for budget in (300, 4096):  # 300: the student's prompt is cut; the teacher still sees it whole
            rollout = collect_rollout(
                pool,
                "SDAR/ALFWorld-v0",
                [valid_seen_tasks[0].task_id],
                2,
                codec=PromptCodec(tok),
                generate=lambda prompts, seed: [[tok.convert_tokens_to_ids("<|im_end|>")]] * len(prompts),
                seed=0,
                prompts=PromptSpec(
                    min(budget, 2048), budget + 400, memory=memory, teacher=True, teacher_placement=placement
                ),
            )
            for sample in rollout.samples:
                teacher = tok.decode(sample.teacher_prompt_ids)
                student = tok.decode(sample.prompt_ids)
                assert len(sample.teacher_prompt_ids) <= budget + 400
                assert "[Privileged Skill Information]" in teacher and "[Privileged Skill Information]" not in student
                assert teacher.endswith(student[-200:])  # the same prompt tail, the same response follows
                if placement == "before_chat":  # the reference's: the block, then the whole chat-formatted prompt
                    assert teacher.startswith("[Privileged Skill Information]\n") and "\n\n<|im_start|>" in teacher
                else:
                    assert "<|im_start|>user\n[Privileged Skill Information]\n- " in teacher
                if budget == 300:
                    assert len(sample.prompt_ids) == 300 and "Your task is to:" in teacher


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    runs = []
    for flag in (False, True):
        cfg = TrainConfig(
            env="SDAR/SearchQA-v0",
            env_kwargs={"split": "test"},
            algo="grpo",
            output_dir=str(tmp_path / str(flag)),
            gradient_checkpointing=flag,
            **SMALL,
        )
        trainer = Trainer(cfg)
        try:
            model = trainer.accelerator.unwrap_model(trainer.model)
            state = getattr(
                model, "is_activation_checkpointing", None
            )  # transformers 5; 4.x: is_gradient_checkpointing
            assert (model.is_gradient_checkpointing if state is None else state) == flag
            runs.append(trainer.train()[0])
        finally:
            trainer.close()
    for key in ("loss", "pg_loss", "kl", "grad_norm", "reward"):
        assert runs[1][key] == pytest.approx(runs[0][key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_bf16_autocast_path_runs_and_stays_close_to_float32(tmp_path):
    """The GPU's bf16 path, checked on CPU: scores under autocast stay near float32 ones, and a training
    run with ``--bf16 true`` (its own process: Accelerate fixes mixed precision once per process) gives
    finite losses and SDAR statistics near those of the float32 run."""
    policy = load_policy("tiny", torch.device("cpu"))
    tasks = [
        "put a clean mug in coffeemachine",
        "heat some egg and put it in garbagecan",
        "find two pencil",
        "examine the book",
    ]
    prompts = [
        encode_prompt(policy.tokenizer, f"Your task is to: {t}. You are in the middle of a room.", 512) for t in tasks
    ]
    responses = [encode_prompt(policy.tokenizer, "go to countertop 1", 32)[-8:] for _ in prompts]
    batch = pack(prompts, responses, policy.pad_id)
    with torch.no_grad():
        fp32, _ = response_logprobs(policy.model, batch, torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = response_logprobs(policy.model, batch, torch.device("cpu"))
    assert not torch.equal(bf16.float(), fp32) and (bf16.float() - fp32).abs().max() < 0.1
    runs = {}
    for flag in ("true", "false"):
        out = tmp_path / flag
        cmd = [sys.executable, "-m", "sdar_train", *run_args(algo="sdar", steps=1, bf16=flag, output_dir=out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[flag] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert all(math.isfinite(v) for v in runs["true"].values()), runs["true"]
    assert runs["true"]["reward"] == runs["false"]["reward"]  # same rollout: sampling stays float32 on the HF back-end
    for key in ("gate_mean", "gap_mean", "entropy"):
        assert runs["true"][key] == pytest.approx(runs["false"][key], abs=0.05), key
    assert runs["true"]["gap_mean"] != runs["false"]["gap_mean"], "autocast was on"


def test_several_optimizer_steps_per_training_step_use_the_rollout_time_policy(tmp_path):
    """Mini-batches smaller than the batch: every optimizer step after the first sees a ratio to the
    rollout-time (old) policy that is not 1; one mini-batch: the ratio is exactly 1."""
    runs = {}
    for mini in (2, 64):
        cfg = TrainConfig(
            env="SDAR/SearchQA-v0",
            env_kwargs={"split": "test"},
            algo="grpo",
            output_dir=str(tmp_path / str(mini)),
            **{**SMALL, "mini_batch_size": mini, "micro_batch_size": 2, "lr": 1e-2, "group_size": 3},
        )
        trainer = Trainer(cfg)
        try:
            runs[mini] = trainer.train()[0]
        finally:
            trainer.close()
    assert runs[64]["ppo_kl"] == 0.0
    assert runs[2]["ppo_kl"] != 0.0 and runs[2]["samples"] > 2


def test_skill_grpo_evaluates_with_and_without_skills(tmp_path):
    cfg = TrainConfig(
        env="SDAR/SearchQA-v0",
        env_kwargs={"split": "test"},
        algo="skill_grpo",
        output_dir=str(tmp_path),
        eval_episodes=2,
        **SMALL,
    )
    trainer = Trainer(cfg)
    try:
        report = trainer.evaluate()
    finally:
        trainer.close()
    assert report["skills_in_prompt"] is False and report["with_skills"]["skills_in_prompt"] is True
    assert report["temperature"] == 0.0 and report["with_skills"]["episodes"] == 2


def test_a_reference_skill_folder_feeds_the_teacher(valid_seen_tasks):
    from sdar_envs import EnvPool
    from sdar_train.policy import PromptCodec
    from sdar_train.rollout import PromptSpec, collect_rollout, default_memory

    folder = DATA / "reference_skills" / "alfworld"
    policy = load_policy("tiny", torch.device("cpu"))
    tok = policy.tokenizer
    task = next(t for t in valid_seen_tasks if "pick_and_place_simple" in t.game_file)
    with EnvPool("SDAR/ALFWorld-v0", 1, num_workers=0, env_kwargs={"split": "valid_seen", "max_steps": 1}) as pool:
        rollout = collect_rollout(
            pool,
            "SDAR/ALFWorld-v0",
            [task.task_id],
            1,
            codec=PromptCodec(tok),
            generate=lambda prompts, seed: [[tok.convert_tokens_to_ids("<|im_end|>")]] * len(prompts),
            seed=0,
            prompts=PromptSpec(
                1024, 1536, memory=default_memory("SDAR/ALFWorld-v0", "keyword", 0, None, str(folder)), teacher=True
            ),
        )
    teacher = tok.decode(rollout.samples[0].teacher_prompt_ids)
    general, pick = ((folder / f).read_text().strip() for f in ("general_skills.md", "pick_and_place.md"))
    assert teacher.startswith(f"[Privileged Skill Information]\n{general}\n\n{pick}\n\n<|im_start|>")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "sdar_train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-0.001"], "lr must be > 0, got -0.001"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--steps", "abc"], "steps must be an integer, got 'abc'"),
        (["--model", "/nonexistent/model"], "model '/nonexistent/model': no such folder"),
        (["--model", "nobody/no-such-model-here"], "neither a folder nor in the local Hugging Face cache"),
        (["--config", "nope.yaml"], "config file nope.yaml not found"),
        (["--teacher_placement", "system"], "teacher_placement must be one of before_chat, in_user"),
        (["--report_to", "mlflow"], "report_to names unknown logger(s) ['mlflow']"),
        (["--resume", "maybe"], "resume must be true, false or auto, got 'maybe'"),
        (["--algo", "sft", "--skip_flat_groups", "true"], "skip_flat_groups needs a policy-gradient algorithm"),
    ],
)
def test_bad_settings_fail_in_one_line_before_loading_a_model(args, message):
    done = _cli(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_folder_without_a_model_is_named(tmp_path):
    done = _cli("--model", str(tmp_path))
    assert done.returncode == 2 and f"model folder {tmp_path} holds no model (no config.json" in done.stderr


_ONE_STEP = {"tasks_per_step": 1, "max_turns": 1, "max_response_tokens": 4, "max_prompt_tokens": 256}


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory) -> Path:
    """One GRPO step through the command line, checkpoint saved: trained once, copied by each test."""
    out = tmp_path_factory.mktemp("one_step") / "run"
    done = _cli(*run_args(algo="grpo", max_teacher_prompt_tokens=256, output_dir=out, **_ONE_STEP), "--steps", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("random_states_0.pkl", "random_states_0.pkl: missing, so the resume would not be exact"),
        ("random_states_0.pkl:garbage", "random_states_0.pkl: unreadable"),
        ("optimizer.bin:garbage", "optimizer.bin: unreadable"),
        ("model.safetensors:half", "model.safetensors: truncated"),
        ("trainer_state.json:garbage", "trainer_state.json: unreadable"),
    ],
)
@pytest.mark.slow
def test_a_damaged_checkpoint_is_refused_with_the_file_named(tmp_path, one_step_run, damage, message):
    out = tmp_path / "run"
    shutil.copytree(one_step_run, out)  # a whole checkpoint of its own to damage
    common = run_args(algo="grpo", max_teacher_prompt_tokens=256, output_dir=out, **_ONE_STEP)
    (ckpt,) = (out / "checkpoints").iterdir()
    name, _, how = damage.partition(":")
    target = ckpt / name
    if not how:
        target.unlink()
    elif how == "half":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.write_bytes(b"\x80\x04garbage" * 10)
    done = _cli(*common, "--steps", "2", "--resume", "true")
    assert done.returncode == 2 and message in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "weights_only=False" not in done.stderr


@pytest.mark.slow
def test_fewer_tasks_than_processes_is_refused_instead_of_hanging(tmp_path):
    done = launch_two_processes(
        [
            "sdar_train",
            "--env",
            "SDAR/SearchQA-v0",
            "--env_kwargs",
            "{split: test}",
            "--model",
            "tiny",
            "--tasks_per_step",
            "1",
            "--output_dir",
            str(tmp_path),
        ],
        timeout=300,
    )
    assert done.returncode != 0
    assert "tasks_per_step (1) must be >= the number of processes (2)" in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_a_cpu_launch_that_starts_one_process_says_so(tmp_path):
    args = [
        "sdar_train",
        "--env",
        "SDAR/SearchQA-v0",
        "--env_kwargs",
        "{split: test}",
        "--algo",
        "grpo",
        "--preset",
        "cpu",
    ]
    args += ["--steps", "1", "--max_turns", "1", "--eval_episodes", "0", "--output_dir", str(tmp_path)]
    done = launch_two_processes(args, cpu=False, flags=("--cpu",))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[sdar_train] 1 process(es), device cpu" in done.stderr
    assert "WARNING: accelerate launch asked for 2 processes but 1 runs" in done.stderr


def test_an_existing_run_is_not_appended_to(tmp_path):
    common = dict(SMALL, env="SDAR/SearchQA-v0", env_kwargs={"split": "test"}, algo="grpo", output_dir=str(tmp_path))
    trainer = Trainer(TrainConfig(**common))
    try:
        trainer.train()
    finally:
        trainer.close()
    with pytest.raises(ConfigError, match="already holds a run .*--resume true.*--overwrite true"):
        Trainer(TrainConfig(**common))
    again = Trainer(TrainConfig(**common, overwrite=True))
    try:
        again.train()
    finally:
        again.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]


def test_the_cpu_preset_sizes_any_config():
    cfg = config_from_args(["--config", "alfworld_sdar.yaml", "--preset", "cpu", "--steps", "2"])
    assert (cfg.model, cfg.tasks_per_step, cfg.group_size, cfg.max_response_tokens, cfg.steps) == ("tiny", 2, 4, 32, 2)
    assert cfg.algo == "sdar" and cfg.env == "SDAR/ALFWorld-v0" and cfg.lr == 1e-6  # the config's own fields stay


def test_won_episodes_grow_the_skill_memory_and_the_checkpoint_keeps_it(tmp_path, valid_seen_tasks):
    from sdar_train.rollout import Episode, Rollout

    env = gym.make("SDAR/ALFWorld-v0", split="valid_seen", expert="walkthrough")
    _, info = env.reset(options={"task_id": valid_seen_tasks[0].task_id})
    actions = []
    while info["expert_action"]:
        actions.append(f"<think>next</think><action>{info['expert_action']}</action>")
        *_, info = env.step(actions[-1])
    assert info["won"]
    cfg = TrainConfig(
        env="SDAR/ALFWorld-v0",
        env_kwargs={"split": "valid_seen"},
        algo="sdar",
        output_dir=str(tmp_path),
        grow_skills=True,
        **SMALL,
    )
    trainer = Trainer(cfg)
    try:
        before = len(trainer.memory)
        ep = Episode(
            group=0,
            task_id=valid_seen_tasks[0].task_id,
            task_type="pick",
            task="put a book on the sidetable",
            won=True,
            actions=actions,
        )
        lost = Episode(group=0, task_id="x", task_type="pick", task="x", won=False, actions=actions)
        assert trainer.grow_skills(Rollout([ep, lost], [])) == 1
        assert trainer.grow_skills(Rollout([ep], [])) == 0  # a near-duplicate is not added twice
        assert len(trainer.memory) == before + 1
        path = trainer.save_checkpoint()
        from skills import load_skills

        saved = [s.id for s, _ in load_skills(path / "skills.yaml")]
        assert any("/learned/" in sid for sid in saved)
    finally:
        trainer.close()


def test_every_pass_scores_the_distribution_the_rollout_sampled_from(tmp_path):
    """At rollout temperature T the old, teacher and reference log-probs and the update's own are all of
    softmax(logits / T), as the reference's actor computes them: before any optimizer step the PPO ratio
    is exactly 1 (ppo_kl 0), which it would not be if one pass used the raw logits."""
    from sdar_train.trainer import TurnBatch

    cfg = TrainConfig(env="Test/LetterY-v0", algo="sdar", model="tiny", output_dir=str(tmp_path), temperature=0.5,
                      kl_coef=0.01, tasks_per_step=1, group_size=2, mini_batch_size=2, micro_batch_size=1, progress=False)  # fmt: skip
    trainer = Trainer(cfg)
    try:
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(10, 4000, (n,), generator=gen).tolist() for n in (7, 12, 9, 5)]
        responses = [torch.randint(10, 4000, (n,), generator=gen).tolist() for n in (3, 5, 2, 4)]
        model = trainer.accelerator.unwrap_model(trainer.model)
        scored = trainer._score(model, prompts, responses)
        batch = pack(prompts, responses, trainer.policy.pad_id)
        with torch.no_grad():
            at_half, _ = response_logprobs(model, batch, torch.device("cpu"), temperature=0.5)
            at_one, _ = response_logprobs(model, batch, torch.device("cpu"))
        mask = batch.mask.bool()
        assert torch.allclose(scored[mask], at_half[mask], atol=1e-5)
        assert not torch.allclose(scored[mask], at_one[mask], atol=1e-2)
        stats = trainer.update(
            TurnBatch(
                prompts,
                responses,
                torch.tensor([1.0, -1.0, 0.5, -0.5]),
                old_logp=scored,
                ref_logp=scored,
                teacher_logp=scored,
            ),  # fmt: skip
            step=0,
            optimizer_step=False,
        )
        assert max(abs(v) for v in stats["ppo_kl"]) < 1e-6 and max(abs(v) for v in stats["kl"]) < 1e-6
    finally:
        trainer.close()


def test_a_non_finite_loss_never_reaches_the_weights_and_stops_the_run_when_it_persists(tmp_path, local_searcher):
    """A NaN injected into the loss: the optimizer step is skipped (weights unchanged, said in the
    metrics and the log), and steps in a row with nothing but NaN stop the run, naming it."""
    from sdar_train.errors import TrainingError

    cfg = TrainConfig(
        env="SDAR/SearchQA-v0", env_kwargs={"split": "test"}, algo="grpo", output_dir=str(tmp_path),
        max_nonfinite_steps=2, **{**SMALL, "steps": 3},
    )  # fmt: skip
    trainer = Trainer(cfg)
    settings = trainer._loss_settings
    trainer._loss_settings = lambda share: {**settings(share), "kl_coef": float("nan")}  # type: ignore[method-assign]
    try:
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        metrics = trainer.train_step(0)
        assert metrics["nonfinite_skipped"] == 1.0 and math.isnan(metrics["loss"])
        assert all(torch.equal(v, dict(trainer.model.named_parameters())[k]) for k, v in before.items())
        with pytest.raises(TrainingError, match="2 steps in a row"):
            trainer.train()
        trainer._loss_settings = settings  # type: ignore[method-assign]
        healthy = trainer.train_step(5)
        assert healthy["nonfinite_skipped"] == 0.0 and math.isfinite(healthy["grad_norm"])
    finally:
        trainer.close()


def test_logged_losses_and_the_gradient_do_not_depend_on_the_micro_batch_size(tmp_path, local_searcher):
    """Micro-batches are cut from length-sorted mini-batches and only accumulate: the step's gradient and
    its logged loss terms are those of the whole mini-batch, whatever the micro-batch size, and whether the
    rows' shared prompt beginning is computed once (its KV cache reused) or in every row, whatever the
    size of the no-grad passes' forwards, and whether rows are right-padded (causal attention, no mask) or
    left-padded (a padding mask)."""
    runs = {}
    cuts = {
        "1": dict(micro_batch_size=1, score_micro_batch_size=1),
        "8": dict(micro_batch_size=8, score_micro_batch_size=8, max_padding=1.0, share_prefixes=False),
    }
    cuts["8-tight"] = dict(micro_batch_size=8, score_micro_batch_size=8, max_padding=0.05, micro_batch_tokens=600)
    cuts["8-shared"] = dict(micro_batch_size=8, score_micro_batch_size=8, max_padding=1.0, share_prefixes=True)
    cuts["2-score-32"] = dict(micro_batch_size=2, max_padding=1.0, share_prefixes=False, score_micro_batch_size=32)
    cuts["8-left-padded"] = cuts["8"]
    for name, cut in cuts.items():
        cfg = TrainConfig(
            env="SDAR/SearchQA-v0", env_kwargs={"split": "test"}, algo="sdar", output_dir=str(tmp_path / name),
            **{**SMALL, **cut, "tasks_per_step": 2, "group_size": 2},
        )  # fmt: skip
        trainer = Trainer(cfg)
        trainer._right_padded = name != "8-left-padded"
        try:
            runs[name] = trainer.train_step(0)
        finally:
            trainer.close()
    assert runs["1"]["samples"] > 4  # several micro-batches of 1
    assert runs["1"]["padding_share"] == 0.0 and runs["8-tight"]["padding_share"] < runs["8"]["padding_share"]
    # the G copies of a group's first prompt (and every prompt's instructions) are computed once
    assert runs["8-shared"]["tokens_computed"] < 0.9 * runs["8"]["tokens_computed"]
    # which layout ran, as logged: right-padded rows with no mask, unless a shared prefix or the flag says not
    assert runs["8-left-padded"]["unmasked_share"] == 0.0 and runs["1"]["unmasked_share"] == 1.0
    assert 0.0 < runs["8-tight"]["unmasked_share"] <= 1.0 and runs["8-shared"]["unmasked_share"] < 1.0
    for name in (
        "1",
        "8-tight",
        "8-shared",
        "2-score-32",
        "8-left-padded",
    ):  # (2-score-32: no-grad forwards of 32 rows)
        for key in ("loss", "pg_loss", "kl", "sdar_loss", "grad_norm"):
            assert runs[name][key] == pytest.approx(runs["8"][key], rel=1e-4, abs=1e-6), (name, key)


def test_the_first_mini_batch_takes_its_old_log_probs_from_its_own_forward(tmp_path, local_searcher, monkeypatch):
    """Before the first optimizer step the policy is still the rollout's: the old-policy pass (here the
    recomputing one, ``rollout_logprobs`` off) scores only the later mini-batches, and the step is what
    scoring every row beforehand gives."""
    runs, scored = {}, {}
    for name in ("reused", "scored"):
        cfg = TrainConfig(
            env="SDAR/SearchQA-v0", env_kwargs={"split": "test"}, algo="grpo", output_dir=str(tmp_path / name),
            rollout_logprobs=False,
            **{**SMALL, "tasks_per_step": 3, "group_size": 2, "mini_batch_size": 2, "micro_batch_size": 2},
        )  # fmt: skip
        trainer = Trainer(cfg)
        score = trainer._score

        def counting(model, prompts, responses, rows=None, _name=name, _score=score):
            rows = None if _name == "scored" else rows  # "scored": every row, as before
            scored.setdefault(_name, []).append(len(prompts) if rows is None else len(rows))
            return _score(model, prompts, responses, rows)

        monkeypatch.setattr(trainer, "_score", counting)
        try:
            runs[name] = trainer.train_step(0)
        finally:
            trainer.close()
    samples = int(runs["reused"]["samples"])
    assert samples > 2  # several mini-batches: the old policy is needed
    assert scored["reused"][-1] == samples - 2 and scored["scored"][-1] == samples  # (the last pass is the old one)
    for key in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm"):
        assert runs["reused"][key] == pytest.approx(runs["scored"][key], rel=1e-4, abs=1e-6), key


def test_the_old_policy_log_probs_are_the_ones_generation_recorded(tmp_path, local_searcher, monkeypatch):
    """rollout_logprobs (the default): the later mini-batches' old log-probs are those HF generation
    recorded from the logits it sampled from, so no pass scores them, and the step is the recomputing
    step's (fp32). A back-end whose replies carry none (vLLM's) has them scored instead."""
    runs, old_rows = {}, {}
    for name in ("recorded", "recomputed", "plain replies"):
        cfg = TrainConfig(
            env="SDAR/SearchQA-v0", env_kwargs={"split": "test"}, algo="grpo", output_dir=str(tmp_path / name),
            rollout_logprobs=name != "recomputed", temperature=0.7,
            **{**SMALL, "tasks_per_step": 3, "group_size": 2, "mini_batch_size": 2, "micro_batch_size": 2},
        )  # fmt: skip
        trainer = Trainer(cfg)
        score, generator = trainer._score, trainer.generator
        calls: list[int | None] = []
        monkeypatch.setattr(trainer, "_score", lambda m, p, r, rows=None, _c=calls, _s=score: _c.append(
            None if rows is None else len(rows)) or _s(m, p, r, rows))  # fmt: skip
        if name == "plain replies":
            trainer.generator = lambda prompts, seed, sampling, _g=generator: [
                list(r) for r in _g(prompts, seed, sampling)
            ]
            trainer.generator.sync = generator.sync  # type: ignore[attr-defined]
            trainer.generator.close = generator.close  # type: ignore[attr-defined]
        try:
            rollout = trainer.rollout(0)
            recorded = [s.response_logprobs for s in rollout.samples]
            if name == "recorded":
                assert all(
                    r is not None and len(r) == len(s.response_ids)
                    for r, s in zip(recorded, rollout.samples, strict=True)
                )
            else:
                assert all(r is None for r in recorded)
            runs[name] = trainer.learn(rollout, 0)
            old_rows[name] = [n for n in calls if n is not None]  # the old pass names its rows; ref scores all
        finally:
            trainer.close()
    samples = int(runs["recorded"]["samples"])
    assert samples > 2  # several mini-batches: the old policy is needed
    assert old_rows["recorded"] == [] and old_rows["recomputed"] == old_rows["plain replies"] == [samples - 2]
    for name in ("recomputed", "plain replies"):
        for key in ("loss", "pg_loss", "kl", "clip_frac", "ppo_kl", "grad_norm"):
            assert runs["recorded"][key] == pytest.approx(runs[name][key], rel=1e-4, abs=1e-6), (name, key)


def test_flat_groups_are_left_out_of_every_pass_when_asked(tmp_path, monkeypatch):
    """skip_flat_groups: the samples of a group whose episodes all scored the same (no advantage) are
    left out of the teacher, reference and old-policy passes and the update, and a step where every
    group is flat scores nothing and leaves the weights as they were. Without it they are trained."""
    from sdar_train.losses import flat_groups

    assert flat_groups(torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1, 2])).tolist() == [
        False, False, True, True, True,
    ]  # fmt: skip
    results = {}
    for skip in (True, False):
        cfg = TrainConfig(
            env="Test/LetterY-v0", algo="sdar", output_dir=str(tmp_path / str(skip)), skip_flat_groups=skip,
            **{**SMALL, "tasks_per_step": 2, "group_size": 2, "kl_coef": 0.01},
        )  # fmt: skip
        trainer = Trainer(cfg)
        scored: list[int] = []
        score = trainer._score

        def counting(m, p, r, rows=None, _scored=scored, _score=score):
            return _scored.append(len(p)) or _score(m, p, r, rows)

        monkeypatch.setattr(trainer, "_score", counting)
        try:
            rollout = trainer.rollout(0)
            assert sorted(e.group for e in rollout.episodes) == [0, 0, 1, 1]
            for s in rollout.samples:
                s.format_valid = s.admissible = True
            first_of_group_0 = next(i for i, e in enumerate(rollout.episodes) if e.group == 0)
            for i, e in enumerate(rollout.episodes):
                e.won = i == first_of_group_0  # group 0: one win, one loss; group 1: two losses (flat)
            mixed = trainer.learn(rollout, 0)
            results[skip] = (mixed, list(scored))
            if skip:
                for e in rollout.episodes:
                    e.won = False  # every group flat
                scored.clear()
                before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
                flat = trainer.learn(rollout, 1)
                assert flat["samples"] == 0 and flat["flat_group_share"] == 1.0 and scored == []
                assert all(torch.equal(v, dict(trainer.model.named_parameters())[k]) for k, v in before.items())
        finally:
            trainer.close()
    (kept, kept_scored), (every, every_scored) = results[True], results[False]
    group_0 = sum(rollout.episodes[s.episode].group == 0 for s in rollout.samples)
    assert kept["samples"] == group_0 < every["samples"] == len(rollout.samples)
    assert kept["flat_group_share"] == every["flat_group_share"] == 0.5
    assert kept_scored and all(n == group_0 for n in kept_scored[:2])  # the teacher and reference passes
    assert every_scored and all(n == len(rollout.samples) for n in every_scored[:2])


def test_behaviour_cloning_over_several_mini_batches_scores_no_old_policy(tmp_path, monkeypatch):
    """Behaviour cloning reads no old log-probs (no ratio), so several optimizer steps per training step
    cost no old-policy pass: it took 26 s of a 120 s step of SmolLM2's WebShop warm start."""
    cfg = TrainConfig(
        env="SDAR/WebShop-v0", env_kwargs={"split": "test"}, algo="sft", output_dir=str(tmp_path),
        **{**SMALL, "tasks_per_step": 2, "max_turns": 6, "max_response_tokens": 64, "mini_batch_size": 2, "micro_batch_size": 2},
    )  # fmt: skip
    trainer = Trainer(cfg)
    passes: list[int] = []
    score = trainer._score
    monkeypatch.setattr(trainer, "_score", lambda *a, **k: passes.append(1) or score(*a, **k))
    try:
        metrics = trainer.train_step(0)
    finally:
        trainer.close()
    assert metrics["samples"] > 2 * cfg.mini_batch_size and math.isfinite(metrics["sft_loss"])  # several updates
    assert passes == []


def test_a_failed_episode_costs_that_episode_and_failing_steps_in_a_row_stop_the_run(tmp_path, capsys):
    """Task letter-1's environment raises on every step (a service down past its retries): its group is
    dropped from the step, counted and logged with the cause, the other groups train, and steps that
    keep losing episodes stop the run naming the cause."""
    from sdar_train.errors import TrainingError

    cfg = TrainConfig(
        env="Test/FlakyLetter-v0", env_kwargs={"raise_on": 1}, algo="grpo", output_dir=str(tmp_path),
        max_failed_steps=2, **{**SMALL, "steps": 3, "tasks_per_step": 4, "group_size": 2},
    )  # fmt: skip
    trainer = Trainer(cfg)
    try:
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
        metrics = trainer.train_step(0)
        assert metrics["episodes_failed"] == 2.0 and metrics["episodes_dropped"] == 2.0
        assert metrics["samples"] == 6  # three groups of two one-turn episodes trained
        assert any(not torch.equal(v, dict(trainer.model.named_parameters())[k]) for k, v in before.items())
        assert "2 episode(s) failed and were dropped" in capsys.readouterr().err
        with pytest.raises(TrainingError, match="2 steps in a row .* lost episodes .*injected"):
            trainer.train()
    finally:
        trainer.close()


def test_a_group_left_with_one_episode_is_dropped_whole():
    from sdar_train.rollout import Episode, Rollout, TurnSample

    episodes = [Episode(group=g, task_id=f"t{g}", task_type="x") for g in (0, 0, 1, 1, 1)]
    episodes[0].failed = "worker 0 died"
    episodes[2].failed = "environment 2 raised"
    samples = [TurnSample(i, [1], [2], None, True, True) for i in range(5)]
    kept, dropped = Rollout(episodes, samples).without_failed(min_group=2)
    assert [e.group for e in kept.episodes] == [1, 1] and [s.episode for s in kept.samples] == [0, 1]
    assert [e.task_id for e in dropped] == ["t0", "t0", "t1"]
    assert Rollout(episodes, samples).without_failed(min_group=1)[0].episodes == [episodes[1], episodes[3], episodes[4]]


@pytest.mark.slow
def test_kill_9_while_saving_a_checkpoint_and_resume_auto_continues_from_the_last_whole_one(tmp_path):
    """A training process SIGKILLed in the middle of a checkpoint save (a preempted node): the previous
    checkpoint stays the latest and loads, ``--resume auto`` finishes the run from it, and metrics.jsonl
    ends with every step once. ``--resume auto`` on an empty folder starts fresh."""
    import signal

    out = tmp_path / "run"
    args = [sys.executable, "-m", "sdar_train", *run_args(steps=8, save_every=1, output_dir=out, resume="auto")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _attempt in range(5):  # the kill must land inside a save; a save takes a fraction of a step
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ckpts = out / "checkpoints"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            partial = list(ckpts.glob(".step_*.partial")) if ckpts.exists() else []
            if partial and list(ckpts.glob("step_*")):  # a save in progress, with a whole one before it
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        if list(ckpts.glob(".step_*.partial")):
            break  # killed mid-save
    else:
        pytest.fail("could not land a kill inside a checkpoint save in 5 attempts")
    killed_in = int(next(ckpts.glob(".step_*.partial")).name.split("_")[1].split(".")[0])
    whole = checkpoints.latest(out)
    assert whole is not None and int(whole.name.split("_")[1]) == killed_in - 1
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "time_s" in r] == list(range(8))
    assert checkpoints.latest(out).name == "step_000008" and not list(ckpts.glob(".step_*"))
    assert (out / "final" / "config.json").is_file()
    fresh = tmp_path / "fresh"
    (fresh / "metrics.jsonl").parent.mkdir()
    (fresh / "metrics.jsonl").write_text('{"step": 0, "time_s": 1.0}\n')  # a run that died before checkpointing
    args = [sys.executable, "-m", "sdar_train", *run_args(steps=1, output_dir=fresh, resume="auto")]
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "no complete checkpoint" in done.stderr, done.stderr[-3000:]
    assert len((fresh / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_weights_and_biases_offline_logs_the_same_metric_names_as_tensorboard(tmp_path):
    """``--report_to tensorboard,wandb`` with WANDB_MODE=offline (no network): a W&B run in output_dir/wandb
    holding every metric of metrics.jsonl under the names TensorBoard has."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = run_args(output_dir=out, report_to="tensorboard,wandb", eval_every=1, eval_episodes=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "sdar_train", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logged = {
        f"train/{k}"
        for line in (out / "metrics.jsonl").read_text().splitlines()
        for k in json.loads(line)
        if k != "step"
    }
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    in_wandb = set(re.findall(rb"train/[a-z0-9_]+", run_file.read_bytes()))
    assert {k.encode() for k in logged} == in_wandb  # the run's records hold each metric by its name
    tb = EventAccumulator(str(out / "tensorboard")).Reload()
    assert set(tb.Tags()["scalars"]) == logged and "train/eval_success" in logged
