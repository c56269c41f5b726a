"""Multi-turn rollout throughput with real environments vs bare ``generate`` on the same prompts.

    .venv/bin/python bench/rollout.py [--env SDAR/ALFWorld-v0] [--tasks 4] [--group 4] [--turns 6] [--tokens 32] [--backend hf]
    .venv-vllm/bin/python bench/rollout.py --backend vllm     # the same with the vLLM back-end

The rollout (prompt building, tokenisation, generation over the live episodes, environment steps,
skill retrieval off) is timed end to end; every generation call it makes is replayed right after it
with the same prompts and seeds, so the same tokens come out: the replays are the limit. Replays are
interleaved with the rollout so that machine noise hits both alike, and their time is taken out of
the rollout's. Target: the
rollout delivers >= 0.85 of the limit's tokens/s. Model: the tiny local Qwen2 on CPU (or --model).
"""

from __future__ import annotations

import argparse
import time

import torch

from sdar_envs import EnvPool
from sdar_train.generation import Sampling, make_generator
from sdar_train.policy import PromptCodec, load_policy
from sdar_train.rollout import PromptSpec, collect_rollout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="SDAR/ALFWorld-v0")
    p.add_argument("--split", default="valid_seen")
    p.add_argument("--model", default="tiny")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--env-workers", type=int, default=0)
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy = load_policy(args.model, device)
    tok = policy.tokenizer
    generator = make_generator(args.backend, policy, model=args.model, batch_size=256, max_model_len=2048 + args.tokens)
    sampling = Sampling(args.tokens, 1.0, 1.0, tuple(policy.stop_ids))
    gen_time, replay_time, replayed = [0.0], [0.0], [0]

    def cold() -> None:  # vLLM would serve the replay's prompts from its prefix cache: both calls start cold
        if hasattr(generator, "llm"):
            generator.llm.reset_prefix_cache()

    def gen(prompts: list[list[int]], seed: int) -> list[list[int]]:
        cold()
        t = time.perf_counter()
        out = generator(prompts, seed, sampling)
        gen_time[0] += time.perf_counter() - t
        cold()
        t = time.perf_counter()  # the limit: the same call again, bare
        again = generator(prompts, seed, sampling)
        replay_time[0] += time.perf_counter() - t
        replayed[0] += sum(len(o) for o in again)
        return out

    pool = EnvPool(
        args.env,
        args.tasks * args.group,
        num_workers=args.env_workers,
        env_kwargs={"split": args.split, "max_steps": args.turns},
    )
    task_ids = pool.call("task_ids")[0][: args.tasks]
    kw = dict(codec=PromptCodec(tok), generate=gen, prompts=PromptSpec(2048, 2048))
    collect_rollout(pool, args.env, task_ids, args.group, seed=1, **kw)  # warm-up: engine caches, kernels
    gen_time[0] = replay_time[0] = replayed[0] = 0
    t = time.perf_counter()
    rollout = collect_rollout(pool, args.env, task_ids, args.group, seed=0, **kw)
    t_rollout = time.perf_counter() - t - replay_time[0]
    t_limit = replay_time[0]
    pool.close()
    generator.close()
    tokens = sum(len(s.response_ids) for s in rollout.samples)
    assert replayed[0] == tokens, (replayed[0], tokens)
    print(
        f"{args.env} ({args.split}): {args.tasks} tasks x {args.group} episodes, <= {args.turns} turns, <= {args.tokens} tokens/turn, "
        f"{len(rollout.samples)} turns, {tokens} tokens, model {args.model} on {device}, {args.backend} back-end"
    )
    print("| | seconds | tokens/s | ratio |")
    print("|---|---|---|---|")
    print(f"| bare generate, same prompts and seeds (the limit) | {t_limit:.2f} | {tokens / t_limit:,.0f} | 1.00 |")
    print(
        f"| multi-turn rollout with the environments | {t_rollout:.2f} | {tokens / t_rollout:,.0f} | {t_limit / t_rollout:.2f} |"
    )
    print(f"(inside the rollout, generation took {gen_time[0]:.2f} s; environments, prompts and tokenisation the rest)")
    print(f"target >= 0.85: {'met' if t_limit / t_rollout >= 0.85 else 'MISSED'}")


if __name__ == "__main__":
    main()
