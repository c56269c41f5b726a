"""The policy: a causal LM and its tokenizer, chat-formatted prompts, batched generation, and
per-token log-probabilities of response tokens (student, teacher and reference passes)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdar_train.batching import SharedPrefill, common_prefix_len, plan_prefill, right_padded_layout
from sdar_train.kv_cache import growing_cache
from sdar_train.losses import selective_log_softmax, token_entropy
from sdar_train.models import resolve_model_path

__all__ = [
    "Policy",
    "PromptCodec",
    "Reply",
    "ScoredBatch",
    "common_prefix_len",
    "cut_at_stop",
    "encode_prompt",
    "load_policy",
    "pack",
]


@dataclass
class Policy:
    model: Any  # a transformers causal LM (torch.nn.Module with generate())
    tokenizer: Any  # a transformers tokenizer
    device: torch.device

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def stop_ids(self) -> list[int]:
        ids = {int(self.tokenizer.eos_token_id)}
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(ids)


def load_policy(
    name: str, device: torch.device, *, dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False
) -> Policy:
    """``name``: anything :func:`sdar_train.models.resolve_model_path` resolves (a folder, a cached hub
    name, a ``.gguf`` file, ``smollm2-135m-instruct``, ``tiny``); nothing is downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = resolve_model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True, dtype=dtype)
    if gradient_checkpointing:  # transformers 5 renamed it; 4.x has only the old name
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model.config.use_cache = False
    return Policy(model.to(device), tokenizer, device)  # type: ignore[arg-type]  # PreTrainedModel.to


def encode_prompt(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The chat-formatted user turn plus the assistant header; over-long prompts keep their end."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    ids = list(ids)
    return ids[-max_tokens:]


@dataclass(frozen=True)
class PromptCodec:
    """The tokenizer as rollouts use it: chat-formatted prompts (one user turn plus the assistant
    header), a privileged prefix placed before the whole chat text, decoding and token counts."""

    tokenizer: Any

    def chat_text(self, user_text: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False
        )

    def encode(self, user_text: str, budget: int) -> list[int]:
        """The chat-formatted prompt; an over-long one keeps its last ``budget`` tokens."""
        return encode_prompt(self.tokenizer, user_text, budget)

    def encode_with_prefix(self, prefix: str, user_text: str, budget: int) -> list[int]:
        """``prefix`` + the chat-formatted prompt, tokenised as one text (the SDAR reference's teacher
        prompt: its privileged block goes before the system turn); keeps the last ``budget`` tokens."""
        return list(self.tokenizer(prefix + self.chat_text(user_text), add_special_tokens=False).input_ids)[-budget:]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode_response(self, text: str) -> list[int]:
        """A reply as the policy should emit it (behaviour-cloning targets): its tokens and the end of turn."""
        tok = self.tokenizer
        eos = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
        return list(tok(text, add_special_tokens=False).input_ids) + [int(eos)]

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)


class Reply(list[int]):
    """A sampled reply's token ids (a list, as every caller reads it) and, where generation recorded them,
    the sampling policy's log-prob of each token under ``softmax(logits / T)``: the old policy's log-probs
    for the PPO ratio, which then need no pass that scores the reply again."""

    def __init__(self, ids: Sequence[int], logprobs: Sequence[float] | None = None) -> None:
        super().__init__(ids)
        self.logprobs = None if logprobs is None else list(logprobs)


class _Sampler:
    """A logits processor that draws each row's next token itself and hands ``generate`` (run greedy) a
    one-hot choice. It samples ``softmax(logits / T)`` after top-p, as generate's temperature and top-p
    warpers and ``torch.multinomial`` would, but by inverse CDF: one uniform number a row instead of
    multinomial's exponential draw for every vocabulary entry (for 8 rows of SmolLM2's 49k on this CPU:
    0.2 ms against 7 ms, a seventh of a decode step). Draws come from its own ``torch.Generator``, so a seed
    repeats. With ``record``, it keeps each drawn token's log-prob under ``softmax(logits / T)`` (before
    top-p, as every pass scores it): :meth:`result`."""

    def __init__(self, temperature: float, top_p: float, seed: int, *, record: bool) -> None:
        from transformers import TopPLogitsWarper

        self.temperature, self.seed, self.record = temperature, seed, record
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None
        self.generator: torch.Generator | None = None
        self.steps: list[torch.Tensor] = []  # [rows] per decoding step: the drawn tokens' log-probs

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        logits = scores.float() / self.temperature
        warped = self.top_p(input_ids, logits) if self.top_p is not None else logits
        tokens = self._draw(torch.softmax(warped, dim=-1), self.generator)
        if self.record:
            self.steps.append(torch.log_softmax(logits, dim=-1).gather(-1, tokens).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens, 0.0)

    @staticmethod
    def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[rows, 1]`` one token a row drawn from ``probs``: the first whose cumulative probability passes
        a uniform number (zero-probability tokens never do)."""
        cdf = probs.double().cumsum(-1)
        u = torch.rand((cdf.size(0), 1), generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)

    def result(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """``[rows, new]`` log-probs of the ``new_tokens`` generate returned."""
        return torch.stack(self.steps[: new_tokens.size(1)], 1).cpu()


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """Tokens up to and including the first stop token."""
    stops = set(stop_ids)
    return next((list(tokens[: j + 1]) for j, t in enumerate(tokens) if t in stops), list(tokens))


@torch.no_grad()
def generate(
    policy: Policy,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    generator_seed: int,
    batch_size: int,
    stop_ids: Sequence[int] | None = None,
    share_prompts: bool = True,
    logprobs: bool = False,
) -> list[Reply]:
    """Sampled continuations (stop tokens kept, padding removed), batched with left padding; a
    temperature below 1e-5 is greedy. ``stop_ids`` default to the tokenizer's end-of-turn tokens.
    Prompts are batched in order of length (each batch is padded to its longest prompt) and the
    continuations returned in the prompts' order. ``share_prompts``: the beginning that a batch's prompts
    of one family share (a group's copies of its first prompt, whole; at later turns its instructions,
    task and first observation) is prefilled once (:func:`sdar_train.batching.plan_prefill`; fewer tokens
    computed; in fp32 the same replies, while in bf16 a cache computed in a smaller batch rounds
    differently, so a sampled token can flip, as under vLLM's prefix caching). ``logprobs``: each sampled
    reply carries its tokens' log-probs under ``softmax(logits / temperature)`` (:class:`Reply`), recorded
    from the logits it was sampled from (none when greedy)."""
    from transformers import LogitsProcessorList

    model = policy.model
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    prompts = [prompts[i] for i in order]
    out: list[Reply] = []
    stop_list = list(stop_ids) if stop_ids else policy.stop_ids
    greedy = temperature < 1e-5
    # generate runs greedy either way: when sampling, _Sampler draws the token and hands it a one-hot choice.
    # A model's own generation_config fills what is not passed (Qwen2.5-Instruct's: repetition_penalty
    # 1.05, top_k 20, temperature 0.7): rollouts sample softmax(logits / T), the distribution every pass trains
    sampling: dict[str, Any] = dict(
        do_sample=False, temperature=None, top_p=None, top_k=None, repetition_penalty=1.0, no_repeat_ngram_size=0,
        min_p=None, typical_p=None,
    )  # fmt: skip
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            shared = plan_prefill(chunk) if share_prompts else None
            ids, mask = _layout(chunk, shared, policy.pad_id)
            width = ids.size(1)
            ids, mask = ids.to(policy.device), mask.to(policy.device)
            # sampling depends on (seed, step, chunk) only
            sampler = None if greedy else _Sampler(temperature, top_p, generator_seed + start, record=logprobs)
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                **(_prefilled(model, ids, mask, shared) if shared is not None else _empty_cache(model)),
                **sampling,
                max_new_tokens=max_new_tokens,
                eos_token_id=stop_list,
                pad_token_id=policy.pad_id,
                **({"logits_processor": LogitsProcessorList([sampler])} if sampler is not None else {}),
            )
            rows = gen[:, width:]
            recorded = sampler.result(rows).tolist() if sampler is not None and logprobs else [None] * len(rows)
            for row, logp in zip(rows.tolist(), recorded, strict=True):
                reply = cut_at_stop(row, stop_list)
                out.append(Reply(reply, None if logp is None else logp[: len(reply)]))
    finally:
        model.train(was_training)
    restored: list[Reply] = [Reply([]) for _ in out]
    for position, i in enumerate(order):
        restored[i] = out[position]
    return restored


def _layout(chunk: Sequence[list[int]], shared: SharedPrefill | None, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of a generation batch. Unshared: left-padded rows. Shared: each row is
    its family's prefix left-padded to the longest prefix, then the rest of its prompt left-padded to the
    longest rest; the padding in the middle is masked, and generation counts positions over real tokens."""
    heads = [0] * len(chunk) if shared is None else [shared.prefix[f] for f in shared.family]
    width_head = max(heads)
    width_rest = max(len(p) - h for p, h in zip(chunk, heads, strict=True))
    ids = torch.full((len(chunk), width_head + width_rest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, h) in enumerate(zip(chunk, heads, strict=True)):
        ids[i, width_head - h : width_head] = torch.tensor(p[:h], dtype=torch.long)
        ids[i, ids.size(1) - (len(p) - h) :] = torch.tensor(p[h:], dtype=torch.long)
        mask[i, width_head - h : width_head] = 1
        mask[i, ids.size(1) - (len(p) - h) :] = 1
    return ids, mask


def _prefilled(model: Any, ids: torch.Tensor, mask: torch.Tensor, shared: SharedPrefill) -> dict[str, Any]:
    """``generate`` kwargs that prefill each family's shared prefix once (the first ``max(prefix)`` columns
    of :func:`_layout`'s rows): one forward over one row per family, its KV cache copied to every row of
    the family. ``generate`` then computes only the rest of each prompt, from the cache."""
    width = max(shared.prefix)
    first = [shared.family.index(f) for f in range(len(shared.prefix))]
    pick = torch.tensor(first, device=ids.device)
    head, head_mask = ids[pick, :width], mask[pick, :width]
    positions = (head_mask.cumsum(-1) - 1).clamp(min=0)  # as generate counts them: real tokens only
    with torch.no_grad():
        # only the cache is used: one logit column, not a [rows, width, vocab] tensor (49k wide for SmolLM2)
        out = model(
            input_ids=head,
            attention_mask=head_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **_empty_cache(model),
        )
    cache = _returned_cache(out)
    cache.batch_select_indices(torch.tensor(shared.family, device=ids.device))  # row i takes its family's cache
    return {_cache_kwarg(model): cache}


def _empty_cache(model: Any) -> dict[str, Any]:
    """``generate``/forward kwargs with a KV cache that grows in place (:mod:`sdar_train.kv_cache`), or
    none where transformers cannot build one (it then uses its own)."""
    cache = growing_cache(model)
    return {} if cache is None else {_cache_kwarg(model): cache}


@dataclass
class ScoredBatch:
    """Rows of (prompt, response) token ids to score, laid out one of two ways; results are
    response-aligned ``[n, R]`` either way, and only the logit columns that predict response tokens are
    computed, so prompt tokens (task, observations, history, skills) have no logits and no loss can train them.

    - **Right-padded** (``starts`` set; no shared prefix): each row is its prompt then its response,
      padding after. No attention mask is passed: causal attention alone keeps every real token from the
      padding that follows it, so attention runs its causal kernel, which skips the masked half instead of
      adding a padding mask (17-19% of a SmolLM2 forward or forward and backward of two 800-token rows on
      this CPU; on GPUs it is what lets SDPA pick flash attention). ``starts[i]`` is row i's prompt length.
    - **Left-padded** (``starts`` None): ``[pad] prompt | response [pad]``, every response starting at
      column ``P``. With a ``prefix`` (the rows' common first tokens, packed with ``shared_prefix``), the
      rows hold only what follows it: the prefix is computed once and its KV cache reused by every row."""

    input_ids: torch.Tensor  # [n, width]
    attention_mask: torch.Tensor  # [n, width] 1 on real tokens (passed to the model in the left-padded layout only)
    position_ids: torch.Tensor  # [n, width] positions count real tokens only, after the prefix
    targets: torch.Tensor  # [n, R] the response tokens
    mask: torch.Tensor  # [n, R] 1.0 on real response tokens, 0.0 on padding
    prefix: torch.Tensor | None = None  # [1, L] the rows' shared first prompt tokens, or None
    starts: torch.Tensor | None = None  # [n] where each row's response starts (right-padded), or None


def pack(
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    pad_id: int,
    *,
    shared_prefix: int = 0,
    right_padded: bool = True,
) -> ScoredBatch:
    """Token ids of (prompt, response) pairs as one :class:`ScoredBatch`: right-padded whole rows, or
    prompts left-padded so every response starts at the same column and responses right-padded (with
    ``right_padded=False``, a ``shared_prefix``, or prompts too far apart in length for the first:
    :func:`~sdar_train.batching.right_padding_fits`). ``mask`` is 1 on response tokens only.
    ``shared_prefix`` L > 0 (at most :func:`common_prefix_len`): the first L prompt tokens, common to
    every row, become the batch's ``prefix`` and the rows hold the rest."""
    if shared_prefix > 0 and shared_prefix > common_prefix_len(prompts):
        raise ValueError(f"the prompts do not share their first {shared_prefix} tokens")
    if any(len(p) <= shared_prefix for p in prompts):
        raise ValueError("every prompt needs a token of its own: its logit predicts the response's first token")
    r_width = max(1, max(len(r) for r in responses))
    n = len(prompts)
    mask = torch.zeros((n, r_width), dtype=torch.float32)
    targets = torch.full((n, r_width), pad_id, dtype=torch.long)
    for i, r in enumerate(responses):
        targets[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1.0
    lengths = [(len(p), len(r)) for p, r in zip(prompts, responses, strict=True)]
    if right_padded_layout(lengths, shared_prefix, right_padded=right_padded):
        width = max(p + r for p, r in lengths)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
            attn[i, : len(p) + len(r)] = 1
        positions = torch.arange(width).expand(n, width)
        return ScoredBatch(ids, attn, positions, targets, mask, starts=torch.tensor([len(p) for p in prompts]))
    prefix = torch.tensor([prompts[0][:shared_prefix]], dtype=torch.long) if shared_prefix > 0 else None
    prompts = [p[shared_prefix:] for p in prompts]
    p_width = max(len(p) for p in prompts)
    ids = torch.full((n, p_width + r_width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p_width + r_width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, p_width - len(p) : p_width] = torch.tensor(p, dtype=torch.long)
        attn[i, p_width - len(p) : p_width + len(r)] = 1
    ids[:, p_width:] = targets
    positions = (attn.cumsum(-1) - 1).clamp(min=0) + shared_prefix
    return ScoredBatch(ids, attn, positions, targets, mask, prefix)


def _returned_cache(out: Any) -> Any:
    """The KV cache a forward with ``use_cache=True`` returned: ``cache`` on transformers 5.x,
    ``past_key_values`` on 4.x."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def _cache_kwarg(model: Any) -> str:
    """transformers 5.x names the KV-cache argument ``cache`` (``past_key_values`` is deprecated); 4.x has
    only ``past_key_values``."""
    while hasattr(model, "module"):  # DDP and friends
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT forwards **kwargs to the model it wraps
        model = model.get_base_model()
    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (AttributeError, TypeError, ValueError):
        return "past_key_values"


def _left_padded_logits(model: torch.nn.Module, batch: ScoredBatch, device: torch.device) -> torch.Tensor:
    """``[n, R, V]`` logits predicting each row's response tokens, for left-padded rows (after a shared
    prefix's KV cache, when the batch has one)."""
    r_width = batch.targets.size(1)
    attention_mask, extra = batch.attention_mask.to(device), {}
    if batch.prefix is not None:  # the shared prefix once, its KV cache repeated for every row
        n, length = batch.input_ids.size(0), batch.prefix.size(1)
        out = model(input_ids=batch.prefix.to(device), use_cache=True, logits_to_keep=1)  # only its cache is used
        cache = _returned_cache(out)
        cache.batch_repeat_interleave(n)
        attention_mask = torch.cat(
            [torch.ones((n, length), dtype=attention_mask.dtype, device=device), attention_mask], 1
        )
        extra = {_cache_kwarg(model): cache, "use_cache": True}
    else:
        extra = {"use_cache": False}
    return model(
        input_ids=batch.input_ids.to(device),
        attention_mask=attention_mask,
        position_ids=batch.position_ids.to(device),
        logits_to_keep=r_width + 1,
        **extra,
    ).logits[:, :r_width]  # column j predicts response token j


def response_logprobs(
    model: torch.nn.Module,
    batch: ScoredBatch,
    device: torch.device,
    *,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[n, R]`` log pi(response token j | prompt, earlier response tokens), and optionally entropies, of
    the policy at ``temperature`` (logits divided by it, as the reference's actor does with the rollout
    temperature): the distribution the responses were sampled from."""
    r_width = batch.targets.size(1)
    if batch.starts is not None:  # right-padded rows: causal attention alone, no mask
        starts = batch.starts.to(device)
        first = int(batch.starts.min()) - 1  # the logit columns that predict some row's response
        end = min(int(batch.starts.max()) - 1 + r_width, batch.input_ids.size(1))
        logits = model(
            input_ids=batch.input_ids.to(device),
            logits_to_keep=torch.arange(first, end, device=device),
            use_cache=False,
        ).logits
        # row i's column j predicts its response token j (columns past a row's end are masked out)
        cols = (starts[:, None] - 1 - first + torch.arange(r_width, device=device)).clamp(max=end - first - 1)
        logits = logits.gather(1, cols[:, :, None].expand(-1, -1, logits.size(-1)))
    else:
        logits = _left_padded_logits(model, batch, device)
    if temperature != 1.0:
        logits = logits / temperature
    logp = selective_log_softmax(logits, batch.targets.to(device))
    # with grad: the loss carries an entropy bonus
    ent = token_entropy(logits) if with_entropy else None
    return logp, ent
