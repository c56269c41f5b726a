"""Loss helpers against hand-computed values, and the response-only mask on real multi-turn samples."""

from __future__ import annotations

import math

import pytest
import torch

from sdar_train.losses import (
    group_advantages,
    low_var_kl,
    masked_mean,
    ppo_clip_loss,
    rlsd_token_advantages,
    sdar_loss,
    selective_log_softmax,
)


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def test_selective_log_softmax_matches_log_softmax():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))
    index = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    expected = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, index), expected, atol=1e-6)
    assert torch.allclose(selective_log_softmax(logits.bfloat16(), index), expected, atol=0.05)


def test_ppo_clip_by_hand():
    logp = t([math.log(1.5), math.log(1.5), 0.0])
    old = t([0.0, 0.0, 0.0])
    mask = t([1.0, 1.0, 0.0])  # the last token is not a response token
    loss, frac = ppo_clip_loss(logp, old, t([1.0, -1.0, 100.0]), mask, clip=0.2)
    # A=+1: min(1.5, 1.2) = 1.2 ; A=-1: min(-1.5, -1.2) = -1.5 ; mean of -(.) = (-1.2 + 1.5) / 2
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2, abs=1e-6)
    assert frac.item() == pytest.approx(0.5)
    # a global normalizer divides the sum instead of the local token count
    loss_n, _ = ppo_clip_loss(logp, old, t([1.0, -1.0, 100.0]), mask, clip=0.2, normalizer=4.0)
    assert loss_n.item() == pytest.approx((-1.2 + 1.5) / 4, abs=1e-6)


def test_low_var_kl_by_hand():
    logp, ref, mask = t([0.0, -1.0]), t([math.log(0.5), -1.0]), t([1.0, 1.0])
    # k3: exp(r) - r - 1 with r = ref - logp: r = -0.6931 -> 0.5 + 0.6931 - 1 ; r = 0 -> 0
    assert low_var_kl(logp, ref, mask).item() == pytest.approx((0.5 + math.log(2) - 1) / 2, abs=1e-6)


def test_sdar_gated_term_value_gradient_and_stats():
    s = t([-2.0, -1.0, -3.0]).requires_grad_()
    teacher = t([-1.0, -1.5, -3.0])
    mask = t([1.0, 1.0, 0.0])
    loss, stats = sdar_loss(s, teacher, mask, beta=5.0)
    g1, g2 = 1 / (1 + math.exp(-5 * 1.0)), 1 / (1 + math.exp(-5 * -0.5))  # gaps +1 and -0.5
    assert loss.item() == pytest.approx((g1 * 1.0 + g2 * -0.5) / 2, abs=1e-6)
    loss.backward()
    # d/ds of g * (T - s) with g detached: -g / (number of response tokens); nothing for masked tokens
    assert s.grad.tolist() == pytest.approx([-g1 / 2, -g2 / 2, 0.0], abs=1e-6)
    assert stats["gate_mean"].item() == pytest.approx((g1 + g2) / 2, abs=1e-6)
    assert stats["gate_active"].item() == pytest.approx(0.5)
    assert stats["gap_mean"].item() == pytest.approx(0.25)
    assert stats["gap_negative"].item() == pytest.approx(0.5)


def test_beta_zero_is_the_ungated_opsd_term():
    s, teacher, mask = t([-2.0, -1.0]), t([-1.0, -1.5]), t([1.0, 1.0])
    loss, stats = sdar_loss(s, teacher, mask, beta=0.0)
    assert stats["gate_mean"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.5 * (1.0 - 0.5) / 2)


def test_rlsd_token_advantage_by_hand():
    adv = t([2.0, -1.0, 1.0])
    gap = t([0.1, 0.5, 3.0])
    out = rlsd_token_advantages(adv, gap, lam=0.5, eps=0.2)
    # exp(+0.1)=1.105 (inside [0.8, 1.2]); exp(-0.5)=0.607 -> 0.8; exp(3) -> 1.2
    assert out.tolist() == pytest.approx(
        [2.0 * (0.5 + 0.5 * math.exp(0.1)), -1.0 * (0.5 + 0.4), 1.0 * (0.5 + 0.6)], abs=1e-6
    )


def test_group_advantages_by_hand():
    rewards = t([1.0, 0.0, 1.0, 1.0, 0.3])
    groups = torch.tensor([0, 0, 1, 1, 2])
    adv = group_advantages(rewards, groups, eps=0.0)
    s = math.sqrt(0.5)  # unbiased std of {1, 0}
    assert adv.tolist() == pytest.approx([0.5 / s, -0.5 / s, 0.0, 0.0, 0.0], abs=1e-6)


def test_masked_mean_ignores_masked_values():
    assert masked_mean(t([1.0, 2.0, 1000.0]), t([1.0, 1.0, 0.0])).item() == pytest.approx(1.5)
    assert masked_mean(t([1.0]), t([0.0])).item() == 0.0
