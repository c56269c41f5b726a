"""How turn samples are cut into micro-batches: rows of similar lengths together, so that a forward pays
for little padding.

A packed row is its prompt left-padded to the micro-batch's longest prompt and its response right-padded
to the longest response (:func:`sdar_train.policy.pack`), so a micro-batch of ``n`` rows computes
``n x (max prompt + max response)`` tokens whatever its rows' own lengths. Sorting by length and closing
a micro-batch before it grows past a row count, a token budget or a padding share keeps that close to
the real tokens (verl's dynamic batch size is the same idea). The order inside a mini-batch does not
change its gradient (a sum over rows normalised by the mini-batch's token count), so this is free.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["cost", "micro_batches"]


def cost(lengths: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(tokens a forward over these rows computes, tokens that are real) for (prompt, response) lengths."""
    if not lengths:
        return 0, 0
    width = max(p for p, _ in lengths) + max(max(r for _, r in lengths), 1)
    return len(lengths) * width, sum(p + r for p, r in lengths)


def micro_batches(
    lengths: Sequence[tuple[int, int]],
    *,
    max_rows: int,
    max_tokens: int = 0,
    max_padding: float = 1.0,
) -> list[list[int]]:
    """Indices of ``lengths`` (one (prompt, response) length pair per row) cut into micro-batches: rows
    sorted by length, a micro-batch closed before it would hold more than ``max_rows`` rows, compute more
    than ``max_tokens`` tokens (0: no budget) or have more than ``max_padding`` of its tokens padding. A
    row is never split: one longer than the budget is a micro-batch of its own."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i][0], lengths[i][1]))
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        trial = [*current, i]
        computed, real = cost([lengths[j] for j in trial])
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
