"""Loss helpers: pure functions over tensors. Shapes: ``[batch, tokens]`` with a 0/1 float ``mask`` over
response tokens (prompt, observation and padding positions are 0 and get no gradient).

Token-mean reductions take an optional ``normalizer`` (the token count of the *global* batch), so
that per-process losses under data parallelism sum to the loss of the full batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "group_advantages",
    "low_var_kl",
    "masked_mean",
    "ppo_clip_loss",
    "rlsd_token_advantages",
    "sdar_loss",
    "selective_log_softmax",
    "token_entropy",
]


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., index]`` without materialising the full log-softmax in fp32."""
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    # half precision: logsumexp row by row is more accurate
    rows = [torch.gather(F.log_softmax(lg.float(), -1), -1, ix.unsqueeze(-1)).squeeze(-1) for lg, ix in zip(logits, index, strict=True)]
    return torch.stack(rows)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the predictive distribution, ``[batch, tokens]``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean over the mask; with ``normalizer`` the sum is divided by it instead of the mask's sum."""
    total = (values * mask).sum()
    denom = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
    return total / denom


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """GRPO: ``(R - mean_group(R)) / (std_group(R) + eps)`` per episode; ``groups`` holds group ids.

    The std is the unbiased sample std as in verl's GRPO; a group of one has advantage 0.
    """
    adv = torch.zeros_like(rewards, dtype=torch.float32)
    for g in torch.unique(groups):
        idx = groups == g
        r = rewards[idx].float()
        if r.numel() < 2:
            continue
        centred = r - r.mean()
        std = r.std()
        adv[idx] = centred / (std + eps) if scale and std > 0 else centred  # all equal: no signal, 0
    return adv


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip surrogate (to minimise) and the clipped-token fraction. ``advantages``: per token."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = masked_mean(-torch.minimum(unclipped, clipped), mask, normalizer)
    clip_frac = masked_mean((clipped < unclipped).float(), mask)
    return loss, clip_frac.detach()


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """The k3 estimator of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0), token-mean."""
    diff = (ref_logp - logp).clamp(-20.0, 20.0)
    return masked_mean(torch.exp(diff) - diff - 1.0, mask, normalizer)


def sdar_loss(
    logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 5.0,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SDAR's gated self-distillation term and its diagnostics.

    gap_t = T_t - sg(s_t); g_t = sigmoid(beta * gap_t), detached; L = token-mean[g_t * (T_t - s_t)].
    Its gradient is ``-g_t * grad s_t``. ``beta = 0`` gives the ungated OPSD term (g = 0.5).
    """
    teacher_logp = teacher_logp.detach()
    gap = teacher_logp - logp.detach()
    gate = torch.sigmoid(beta * gap)
    loss = masked_mean(gate * (teacher_logp - logp), mask, normalizer)
    stats = {
        "gate_mean": masked_mean(gate, mask),
        "gate_active": masked_mean((gate > 0.5).float(), mask),
        "gap_mean": masked_mean(gap, mask),
        "gap_negative": masked_mean((gap < 0).float(), mask),
    }
    return loss, stats


def rlsd_token_advantages(advantages: torch.Tensor, gap: torch.Tensor, lam: float = 0.5, eps: float = 0.2) -> torch.Tensor:
    """RLSD-style hybrid: the teacher reweights each token's advantage,
    ``A_t = A * ((1 - lam) + lam * clip(exp(sign(A) * gap_t), 1 - eps, 1 + eps))`` with a detached gap."""
    weight = torch.clamp(torch.exp(torch.sign(advantages) * gap.detach()), 1.0 - eps, 1.0 + eps)
    return advantages * ((1.0 - lam) + lam * weight)
