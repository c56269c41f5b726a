"""Micro-batches cut by rows, a token budget and a padding share (sdar_train.batching)."""

from __future__ import annotations

import random

import pytest

from sdar_train.batching import cost, micro_batches


def _random_lengths(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(50, 900), rng.randint(1, 64)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_every_row_once_and_every_bound_held(seed):
    lengths = _random_lengths(200, seed)
    cut = micro_batches(lengths, max_rows=8, max_tokens=4096, max_padding=0.1)
    assert sorted(i for group in cut for i in group) == list(range(200))
    for group in cut:
        computed, real = cost([lengths[i] for i in group])
        assert len(group) <= 8
        assert computed <= 4096 or len(group) == 1  # a row longer than the budget goes alone
        assert computed - real <= 0.1 * computed


def test_without_a_budget_or_a_padding_bound_it_is_sort_then_chunk():
    lengths = _random_lengths(37, 0)
    order = sorted(range(37), key=lambda i: lengths[i])
    assert micro_batches(lengths, max_rows=8) == [order[s : s + 8] for s in range(0, 37, 8)]


def test_padding_falls_as_the_bound_tightens():
    lengths = _random_lengths(400, 1)

    def share(**bounds: float) -> float:
        groups = micro_batches(lengths, max_rows=16, **bounds)
        computed = sum(cost([lengths[i] for i in g])[0] for g in groups)
        real = sum(p + r for p, r in lengths)
        return 1 - real / computed

    unsorted = 1 - sum(p + r for p, r in lengths) / sum(
        cost(lengths[s : s + 16])[0] for s in range(0, 400, 16)
    )  # a count cut of the shuffled order (no sorting) pays this
    assert share(max_padding=0.05) <= 0.05 < share(max_padding=1.0) < unsorted


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        micro_batches([(1, 1)], max_rows=0)
    assert micro_batches([], max_rows=4) == []
