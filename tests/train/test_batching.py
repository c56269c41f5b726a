"""Micro-batches cut by rows, a token budget and a padding share (sdar_train.batching)."""

from __future__ import annotations

import random

import pytest

from sdar_train.batching import (
    MIN_SHARED_PREFIX,
    RIGHT_PADDED_MAX_SPREAD,
    cost,
    micro_batches,
    plan,
    plan_prefill,
    right_padding_fits,
    shared_cost,
)
from sdar_train.policy import common_prefix_len


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
    # right-padded rows are as wide as their whole length; left-padded ones as their prompt, then reply
    order = sorted(range(37), key=lambda i: (sum(lengths[i]), lengths[i][0]))
    assert micro_batches(lengths, max_rows=8) == [order[s : s + 8] for s in range(0, 37, 8)]
    order = sorted(range(37), key=lambda i: lengths[i])
    assert micro_batches(lengths, max_rows=8, right_padded=False) == [order[s : s + 8] for s in range(0, 37, 8)]


def test_a_right_padded_forward_computes_its_longest_row_only():
    """Rows right-padded whole pay for the longest prompt + reply; left-padded prompts and right-padded
    replies pay for the longest prompt plus the longest reply, which can be two different rows."""
    lengths = [(100, 40), (130, 2)]
    assert cost(lengths) == (2 * 140, 272)
    assert cost(lengths, right_padded=False) == (2 * 170, 272)
    assert shared_cost(lengths, 0) == cost(lengths)
    # prompts further apart than RIGHT_PADDED_MAX_SPREAD and than a reply are left-padded (and counted so)
    apart = [(100, 10), (100 + RIGHT_PADDED_MAX_SPREAD + 1, 5)]
    assert not right_padding_fits([p for p, _ in apart], 10)
    assert cost(apart) == cost(apart, right_padded=False) == (2 * (100 + RIGHT_PADDED_MAX_SPREAD + 1 + 10), 344)
    assert right_padding_fits([100, 100 + RIGHT_PADDED_MAX_SPREAD], 10)
    assert shared_cost(lengths, 50) == (50 + 2 * (130 - 50 + 40), 50 + 90 + 82)  # the prefix counts once


@pytest.mark.parametrize(("right_padded", "bound"), [(True, 0.01), (False, 0.05)])
def test_padding_falls_as_the_bound_tightens(right_padded, bound):
    lengths = _random_lengths(400, 1)

    def share(**bounds: float) -> float:
        groups = micro_batches(lengths, max_rows=16, right_padded=right_padded, **bounds)
        computed = sum(cost([lengths[i] for i in g], right_padded=right_padded)[0] for g in groups)
        real = sum(p + r for p, r in lengths)
        return 1 - real / computed

    unsorted = 1 - sum(p + r for p, r in lengths) / sum(
        cost(lengths[s : s + 16], right_padded=right_padded)[0] for s in range(0, 400, 16)
    )  # a count cut of the shuffled order (no sorting) pays this
    assert share(max_padding=bound) <= bound < share(max_padding=1.0) < unsorted


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        micro_batches([(1, 1)], max_rows=0)
    assert micro_batches([], max_rows=4) == []


def _families(seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts as a step holds them: a common instruction header, groups of G alike first prompts, some
    that share only the header, all with replies of various lengths."""
    rng = random.Random(seed)
    header = [rng.randrange(1000) for _ in range(120)]
    prompts = []
    for _ in range(6):  # six groups of four: the header, the task, then each episode's own history
        task = [rng.randrange(1000) for _ in range(rng.randint(50, 300))]
        prompts += [header + task + [rng.randrange(1000) for _ in range(rng.randint(0, 40))] for _ in range(4)]
    prompts += [[rng.randrange(1000) for _ in range(rng.randint(50, 400))] for _ in range(5)]  # nothing shared
    responses = [[1] * rng.randint(1, 48) for _ in prompts]
    return prompts, responses


@pytest.mark.parametrize("seed", range(4))
def test_a_cut_by_shared_beginnings_keeps_every_row_once_and_computes_fewer_tokens(seed):
    prompts, responses = _families(seed)
    rows = list(range(len(prompts)))
    lengths = [(len(p), len(r)) for p, r in zip(prompts, responses, strict=True)]

    def computed(cut) -> int:
        return sum(shared_cost([lengths[i] for i in mb.rows], mb.prefix)[0] for mb in cut)

    by_length = plan(prompts, responses, rows, max_rows=8, max_padding=0.1)
    shared = plan(prompts, responses, rows, max_rows=8, max_padding=0.1, share_prefixes=True)
    assert all(mb.prefix == 0 for mb in by_length)
    assert sorted(i for mb in shared for i in mb.rows) == rows
    for mb in shared:
        assert len(mb.rows) <= 8
        if mb.prefix:  # truly shared, and every row keeps a prompt token of its own
            assert MIN_SHARED_PREFIX <= mb.prefix <= common_prefix_len([prompts[i] for i in mb.rows])
    assert computed(shared) < 0.7 * computed(by_length)


def test_rows_that_share_nothing_are_cut_by_length_as_before():
    lengths = _random_lengths(40, 3)
    rng = random.Random(3)
    prompts = [[rng.randrange(10**6) for _ in range(p)] for p, _ in lengths]
    responses = [[1] * r for _, r in lengths]
    rows = list(range(40))
    shared = plan(prompts, responses, rows, max_rows=8, max_padding=0.1, share_prefixes=True)
    assert [mb.rows for mb in shared] == micro_batches(lengths, max_rows=8, max_padding=0.1)
    assert plan([], [], [], max_rows=4, share_prefixes=True) == []


@pytest.mark.parametrize("seed", range(4))
def test_a_generation_batch_prefills_each_familys_beginning_once(seed):
    """plan_prefill: every family's rows share its prefix and keep a token of their own, and the plan
    computes fewer tokens than prefilling every row in full (padding counted)."""
    prompts, _ = _families(seed)
    shared = plan_prefill(prompts)
    assert shared is not None
    lengths = [len(p) for p in prompts]
    for f, prefix in enumerate(shared.prefix):
        rows = [i for i, g in enumerate(shared.family) if g == f]
        assert 0 < prefix <= (common_prefix_len([prompts[i] for i in rows]) if len(rows) > 1 else lengths[rows[0]] - 1)
    assert len({shared.family[i] for i in range(24)}) <= 6 + 1  # the six groups (and perhaps the header alone)
    assert shared.computed(lengths) < 0.7 * len(prompts) * max(lengths)


def test_prompts_that_share_nothing_are_prefilled_as_they_are():
    rng = random.Random(0)
    prompts = [[rng.randrange(10**6) for _ in range(rng.randint(50, 400))] for _ in range(12)]
    assert plan_prefill(prompts) is None
    assert plan_prefill(prompts[:1]) is None and plan_prefill([[1], [1]]) is None  # one row; nothing to keep back
    copies = plan_prefill([prompts[0]] * 4)
    assert copies is not None and copies.prefix == [len(prompts[0]) - 1]  # copies: all but the last token once
