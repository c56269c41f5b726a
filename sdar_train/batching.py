"""How turn samples are cut into micro-batches: rows of similar lengths together, so that a forward pays
for little padding.

A packed row is its prompt then its response, right-padded to the micro-batch's longest row
(:func:`sdar_train.policy.pack`), so a micro-batch of ``n`` rows computes ``n x max(prompt + response)``
tokens whatever its rows' own lengths (rows after a shared prefix are laid out as before the right
padding was built: prompts left-padded to the longest, responses right-padded to the longest, which costs
``n x (max prompt + max response)``; ``right_padded=False`` counts every forward that way). Sorting by length and closing
a micro-batch before it grows past a row count, a token budget or a padding share keeps that close to
the real tokens (verl's dynamic batch size is the same idea). The order inside a mini-batch does not
change its gradient (a sum over rows normalised by the mini-batch's token count), so this is free.

Rows often begin alike: the G episodes of a group share their first prompt, every prompt starts with the
same system turn and instructions, and the SDAR teacher's prompts of one task type start with the same
skill block. :func:`plan` can also cut rows in the order of their tokens, so that those sharing a beginning
sit together, and give each micro-batch the length of that shared ``prefix``: it is computed once and its
KV cache reused by every row (:func:`sdar_train.policy.pack`). It keeps whichever cut computes fewer tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

__all__ = [
    "RIGHT_PADDED_MAX_SPREAD",
    "MicroBatch",
    "SharedPrefill",
    "common_prefix_len",
    "cost",
    "micro_batches",
    "plan",
    "plan_prefill",
    "right_padded_layout",
    "right_padding_fits",
    "shared_cost",
]

# A forward's fixed cost (launch, Python, the layers' loop) in tokens' worth: a cut into more forwards
# must save more than this per extra forward. Sharing a prefix shorter than MIN_SHARED_PREFIX is not
# worth its own forward.
FORWARD_OVERHEAD_TOKENS = 32
MIN_SHARED_PREFIX = 16
# Rows after a shared prefix attend to its KV cache behind a mask, which the attention kernel adds in full
# instead of skipping the causal half: a forward over 2 x 800 tokens of SmolLM2 costs 17-19% more per token
# than right-padded rows with causal attention alone (CPU, bf16; sdar_train.policy.ScoredBatch).
MASKED_TOKEN_COST = 1.2
RIGHT_PADDED_MAX_SPREAD = 128  # prompt lengths further apart than this (and than a reply) are left-padded


@dataclass(frozen=True)
class MicroBatch:
    """Rows scored in one forward; their first ``prefix`` prompt tokens are the same and computed once."""

    rows: list[int]
    prefix: int = 0


def right_padding_fits(prompt_lengths: Sequence[int], response_width: int) -> bool:
    """Whether rows with these prompt lengths can be scored right-padded (:func:`sdar_train.policy.pack`).
    Right-padded rows keep, for every row, the logit columns from the earliest reply's start to the latest
    reply's end: prompts at most :data:`RIGHT_PADDED_MAX_SPREAD` tokens (or a reply's length) apart keep
    that within the reply's columns plus 128, at most about twice what left-padded rows keep; rows
    further apart (a micro-batch cut without a padding bound) are left-padded instead."""
    return max(prompt_lengths) - min(prompt_lengths) <= max(response_width, RIGHT_PADDED_MAX_SPREAD)


def right_padded_layout(lengths: Sequence[tuple[int, int]], prefix: int = 0, *, right_padded: bool = True) -> bool:
    """Whether :func:`sdar_train.policy.pack` lays rows of these (prompt, response) lengths out right-padded,
    scored with causal attention and no mask: asked to (``right_padded``), with no shared prefix, and with
    prompts close enough in length (:func:`right_padding_fits`)."""
    return (
        right_padded
        and prefix == 0
        and bool(lengths)
        and right_padding_fits([p for p, _ in lengths], max(1, *(r for _, r in lengths)))
    )


def cost(lengths: Sequence[tuple[int, int]], *, right_padded: bool = True) -> tuple[int, int]:
    """(tokens a forward over these rows computes, tokens that are real) for (prompt, response) lengths,
    rows right-padded whole or (``right_padded=False``, or rows :func:`right_padding_fits` refuses, as
    :func:`sdar_train.policy.pack` lays them out) prompts left-padded and responses right-padded."""
    if not lengths:
        return 0, 0
    if right_padded_layout(lengths, right_padded=right_padded):
        width = max(p + r for p, r in lengths)
    else:
        width = max(p for p, _ in lengths) + max(max(r for _, r in lengths), 1)
    return len(lengths) * width, sum(p + r for p, r in lengths)


def _length_key(prompt: int, response: int, right_padded: bool) -> tuple[int, int]:
    """Sort key of a row: what its padded width depends on (its whole length, or its prompt's then its reply's)."""
    return (prompt + response, prompt) if right_padded else (prompt, response)


def micro_batches(
    lengths: Sequence[tuple[int, int]],
    *,
    max_rows: int,
    max_tokens: int = 0,
    max_padding: float = 1.0,
    right_padded: bool = True,
) -> list[list[int]]:
    """Indices of ``lengths`` (one (prompt, response) length pair per row) cut into micro-batches: rows
    sorted by length, a micro-batch closed before it would hold more than ``max_rows`` rows, compute more
    than ``max_tokens`` tokens (0: no budget) or have more than ``max_padding`` of its tokens padding. A
    row is never split: one longer than the budget is a micro-batch of its own."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: _length_key(*lengths[i], right_padded))
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        trial = [*current, i]
        computed, real = cost([lengths[j] for j in trial], right_padded=right_padded)
        fits = (
            len(trial) <= max_rows
            and (max_tokens <= 0 or computed <= max_tokens)
            and (computed - real) <= max_padding * computed
        )
        if current and not fits:
            out.append(current)
            trial = [i]
        current = trial
    if current:
        out.append(current)
    return out


def _common(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def shared_cost(lengths: Sequence[tuple[int, int]], prefix: int, *, right_padded: bool = True) -> tuple[int, int]:
    """(tokens computed, tokens real) for rows whose first ``prefix`` prompt tokens are computed once:
    the prefix, then every row padded to the longest remaining prompt and the longest response. Without
    a prefix, :func:`cost`."""
    if not lengths:
        return 0, 0
    if prefix == 0:
        return cost(lengths, right_padded=right_padded)
    width = max(p for p, _ in lengths) - prefix + max(max(r for _, r in lengths), 1)
    return prefix + len(lengths) * width, prefix + sum(p - prefix + r for p, r in lengths)


def common_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """How many first tokens all ``prompts`` share, leaving every prompt at least its last token (whose
    logit predicts the first response token, so it cannot sit in a shared cache)."""
    if not prompts:
        return 0
    limit = min(len(p) for p in prompts) - 1
    for other in prompts[1:]:
        limit = _common(prompts[0], other, limit)
    return max(limit, 0)


def _shared_cut(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    rows: Sequence[int],
    share: float,
    *,
    max_rows: int,
    max_tokens: int,
    max_padding: float,
    right_padded: bool,
) -> list[MicroBatch]:
    """Rows in the order of their prompt tokens, split into families wherever neighbours share fewer than
    ``share`` of their prompt (and :data:`MIN_SHARED_PREFIX` tokens); each family cut by length as
    :func:`micro_batches` cuts, with its shared beginning counted once (:func:`shared_cost`)."""
    order = sorted(rows, key=lambda i: list(prompts[i]))
    families: list[list[int]] = []
    for i in order:
        if families:
            last = prompts[families[-1][-1]]
            shortest = min(len(last), len(prompts[i]))
            if _common(last, prompts[i], shortest - 1) >= max(MIN_SHARED_PREFIX, share * shortest):
                families[-1].append(i)
                continue
        families.append([i])
    # rows that share their beginning with no neighbour are cut together by length, as micro_batches cuts
    families = [f for f in families if len(f) > 1] + [[i for f in families if len(f) == 1 for i in f]]
    out: list[MicroBatch] = []
    for family in families:
        prefix = common_prefix_len([prompts[i] for i in family]) if len(family) > 1 else 0
        family.sort(key=lambda i: _length_key(len(prompts[i]), len(responses[i]), right_padded and prefix == 0))
        current: list[int] = []
        for i in family:
            trial = [*current, i]
            computed, real = shared_cost(
                [(len(prompts[j]), len(responses[j])) for j in trial], prefix, right_padded=right_padded
            )
            fits = (
                len(trial) <= max_rows
                and (max_tokens <= 0 or computed - prefix <= max_tokens)
                and (computed - real) <= max_padding * computed
            )
            if current and not fits:
                out.append(MicroBatch(current))
                trial = [i]
            current = trial
        if current:
            out.append(MicroBatch(current))
    # each micro-batch shares what its own rows share (at least its family's beginning)
    return [
        MicroBatch(
            mb.rows,
            p
            if len(mb.rows) > 1 and (p := common_prefix_len([prompts[i] for i in mb.rows])) >= MIN_SHARED_PREFIX
            else 0,
        )
        for mb in out
    ]


def plan(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    rows: Sequence[int],
    *,
    max_rows: int,
    max_tokens: int = 0,
    max_padding: float = 1.0,
    share_prefixes: bool = False,
    right_padded: bool = True,
) -> list[MicroBatch]:
    """``rows`` (indices into ``prompts``/``responses``) cut into micro-batches: by length
    (:func:`micro_batches`), or, with ``share_prefixes``, whichever of that and the cut by shared
    beginnings computes less (counting :data:`FORWARD_OVERHEAD_TOKENS` per forward, and the rows after a
    shared prefix at :data:`MASKED_TOKEN_COST` each).
    ``right_padded``: how rows without a shared prefix are laid out (:func:`cost`)."""
    if not rows:
        return []
    lengths = [(len(prompts[i]), len(responses[i])) for i in rows]
    by_length = [
        MicroBatch([rows[j] for j in group])
        for group in micro_batches(
            lengths, max_rows=max_rows, max_tokens=max_tokens, max_padding=max_padding, right_padded=right_padded
        )
    ]
    if not share_prefixes:
        return by_length

    def total(cut: list[MicroBatch]) -> float:
        forwards = sum(1 + (mb.prefix > 0) for mb in cut)
        computed = 0.0
        for mb in cut:
            lengths = [(len(prompts[i]), len(responses[i])) for i in mb.rows]
            tokens = shared_cost(lengths, mb.prefix, right_padded=right_padded)[0]
            masked = mb.prefix > 0 and right_padded  # (left-padded, every forward is masked alike)
            computed += mb.prefix + (tokens - mb.prefix) * MASKED_TOKEN_COST if masked else tokens
        return computed + FORWARD_OVERHEAD_TOKENS * forwards

    # how alike rows must begin to share a forward: try a few, keep the cheapest cut (rows are few)
    cuts = [by_length] + [
        _shared_cut(
            prompts,
            responses,
            rows,
            share,
            max_rows=max_rows,
            max_tokens=max_tokens,
            max_padding=max_padding,
            right_padded=right_padded,
        )
        for share in (0.0, 0.25, 0.5, 0.75)
    ]
    return min(cuts, key=total)


@dataclass(frozen=True)
class SharedPrefill:
    """How one generation batch is prefilled: row ``i`` takes its first ``prefix[family[i]]`` tokens from
    the KV cache of its family, computed once per family, and computes only the rest itself."""

    family: list[int]
    prefix: list[int]

    def computed(self, lengths: Sequence[int]) -> int:
        """Tokens the two forwards compute, padding included: every family's prefix padded to the longest,
        then every row's rest padded to the longest rest."""
        width = max(self.prefix)
        rest = max(n - self.prefix[f] for n, f in zip(lengths, self.family, strict=True))
        return len(self.prefix) * width + len(lengths) * rest


def plan_prefill(prompts: Sequence[Sequence[int]]) -> SharedPrefill | None:
    """Families of prompts that begin alike, for a generation batch, or None when sharing saves nothing.

    The G episodes of a group share their first prompt whole, and at later turns their system turn,
    instructions, task and first observation (the history that follows differs): 14% (WebShop) and 38%
    (ALFWorld) of a rollout's prompt tokens at G = 4, first turns included. Rows are taken in the order
    of their tokens and split into families wherever neighbours share fewer than a threshold; the
    threshold that computes the fewest tokens wins (:meth:`SharedPrefill.computed`, padding counted). A family's prefix leaves each row at
    least its last token (generation computes it with the first new one); a row alone fills the width
    the families' prefixes pay for anyway."""
    n = len(prompts)
    if n < 2 or min(len(p) for p in prompts) < 2:
        return None
    order = sorted(range(n), key=lambda i: list(prompts[i]))
    shared = [_common(prompts[a], prompts[b], min(len(prompts[a]), len(prompts[b]))) for a, b in pairwise(order)]
    lengths = [len(p) for p in prompts]
    best, best_cost = None, n * max(lengths) - FORWARD_OVERHEAD_TOKENS  # unshared: one forward, no families
    for threshold in sorted({s for s in shared if s >= MIN_SHARED_PREFIX}):
        runs: list[list[int]] = [[order[0]]]
        common = [lengths[order[0]]]  # in token order, what a run shares is the least its neighbours share
        for i, s in zip(order[1:], shared, strict=True):
            if s >= threshold:
                runs[-1].append(i)
                common[-1] = min(common[-1], s)  # s is at most either neighbour's length
            else:
                runs.append([i])
                common.append(lengths[i])
        # every row keeps at least its last token (its logit predicts the first new one)
        prefix = [
            min(c, min(lengths[i] for i in run) - 1) if len(run) > 1 else 0 for c, run in zip(common, runs, strict=True)
        ]
        width = max(prefix)
        if width < MIN_SHARED_PREFIX:
            continue
        prefix = [p if len(run) > 1 else min(lengths[run[0]] - 1, width) for p, run in zip(prefix, runs, strict=True)]
        family = [0] * n
        for f, run in enumerate(runs):
            for i in run:
                family[i] = f
        candidate = SharedPrefill(family, prefix)
        if (computed := candidate.computed(lengths)) < best_cost:
            best, best_cost = candidate, computed
    return best
