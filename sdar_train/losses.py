"""Loss helpers: pure functions over tensors. Shapes: ``[batch, tokens]`` with a 0/1 float ``mask`` over
response tokens (prompt, observation and padding positions are 0 and get no gradient).

Token-mean reductions take an optional ``normalizer`` (the token count of the *global* batch), so
that per-process losses under data parallelism sum to the loss of the full batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "TOKEN_NORMALISED_TERMS",
    "actor_loss",
    "entropy_bonus",
    "flat_groups",
    "group_advantages",
    "rlsd_lambda",
    "turn_advantages",
    "low_var_kl",
    "masked_mean",
    "ppo_clip_loss",
    "rlsd_token_advantages",
    "sdar_loss",
    "selective_log_softmax",
    "sft_loss",
    "token_entropy",
]


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., index]`` without materialising the full log-softmax in fp32."""
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    # half precision: logsumexp row by row is more accurate
    rows = [
        torch.gather(F.log_softmax(lg.float(), -1), -1, ix.unsqueeze(-1)).squeeze(-1)
        for lg, ix in zip(logits, index, strict=True)
    ]
    return torch.stack(rows)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the predictive distribution, ``[batch, tokens]``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Token-mean over the mask; with ``normalizer`` the sum is divided by it instead of the mask's sum."""
    total = (values * mask).sum()
    denom = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
    return total / denom


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Behaviour cloning: the token-mean NLL of the response tokens. The one behaviour-cloning loss, of
    ``--algo sft`` (through :func:`actor_loss`) and of the replication kit's offline warm starts alike."""
    return masked_mean(-logp, mask, normalizer)


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6, scale: bool = True
) -> torch.Tensor:
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


def turn_advantages(
    scores: torch.Tensor,
    groups: torch.Tensor,
    episodes: torch.Tensor,
    cross_steps: bool = True,
    eps: float = 1e-6,
    scale: bool = True,
) -> torch.Tensor:
    """GRPO advantages of turn samples, as the SDAR reference (verl-agent) computes them. 1-D tensors, one
    entry per turn sample: its score, its group id (the task's G episodes) and its episode id.

    ``cross_steps=True`` (the reference's default): each group's mean and unbiased std are taken over the
    scores of ALL its turn samples, so an episode of 30 turns weighs 30 times one of a single turn.
    ``cross_steps=False``: over one score per episode (its first turn sample's), the textbook GRPO.
    Either way a sample's advantage is ``(its score - mean) / (std + eps)`` (``scale=False``: no division,
    Dr.GRPO); a group with a single score has mean 0 and std 1, as in the reference.
    """
    scores = scores.float()
    adv = torch.empty_like(scores)
    for g in torch.unique(groups):
        in_group = groups == g
        if cross_steps:
            pool = scores[in_group]
        else:
            idx = torch.nonzero(in_group).flatten()
            firsts: dict[int, int] = {}
            for i in idx.tolist():
                firsts.setdefault(int(episodes[i]), i)
            pool = scores[list(firsts.values())]
        mean, std = (pool.mean(), pool.std()) if pool.numel() > 1 else (torch.tensor(0.0), torch.tensor(1.0))
        centred = scores[in_group] - mean
        adv[in_group] = centred / (std + eps) if scale else centred
    return adv


def flat_groups(advantages: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """True for each turn sample of a group whose advantages are all zero (every turn scored the same, as
    when all G episodes failed alike): such a group gives the policy gradient nothing."""
    flat = torch.zeros(groups.shape, dtype=torch.bool)
    for g in torch.unique(groups):
        in_group = groups == g
        flat[in_group] = bool((advantages[in_group] == 0).all())
    return flat


def rlsd_lambda(step: int, start: float = 0.5, warmdown_steps: int = 100) -> float:
    """RLSD's mixing weight at a training step: linear from ``start`` at step 0 to 0 at ``warmdown_steps``."""
    if warmdown_steps <= 0 or step >= warmdown_steps:
        return 0.0
    return start * (1.0 - step / warmdown_steps)


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    normalizer: float | torch.Tensor | None = None,
    dual_clip: float | None = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip surrogate (to minimise) and the clipped-token fraction. ``advantages``: per token.

    ``dual_clip`` (c > 1, Ye et al. 2019; the reference's default 3): for negative advantages the
    per-token loss is also capped at ``-c * A``, so a ratio far above 1 cannot blow the step up.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(unclipped, clipped)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * dual_clip), per_token)
    return masked_mean(per_token, mask, normalizer), clip_frac.detach()


def entropy_bonus(
    entropy: torch.Tensor, mask: torch.Tensor, coef: float, normalizer: float | torch.Tensor | None = None
) -> torch.Tensor:
    """The entropy term added to the loss: ``-coef * token-mean(entropy)`` (minimising it raises entropy)."""
    return -coef * masked_mean(entropy, mask, normalizer)


def low_var_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None = None
) -> torch.Tensor:
    """The k3 estimator of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1`` per token, clamped to
    [-10, 10] as the reference does, token-mean."""
    diff = ref_logp - logp
    return masked_mean((torch.exp(diff) - diff - 1.0).clamp(-10.0, 10.0), mask, normalizer)


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


def rlsd_token_advantages(
    advantages: torch.Tensor, gap: torch.Tensor, lam: float = 0.5, eps: float = 0.2
) -> torch.Tensor:
    """RLSD-style hybrid: the teacher reweights each token's advantage,
    ``A_t = A * ((1 - lam) + lam * clip(exp(sign(A) * gap_t), 1 - eps, 1 + eps))`` with a detached gap."""
    weight = torch.clamp(torch.exp(torch.sign(advantages) * gap.detach()), 1.0 - eps, 1.0 + eps)
    return advantages * ((1.0 - lam) + lam * weight)


# actor_loss's terms that are token-means over the whole mini-batch (divided by its ``normalizer``): a
# mini-batch's value is the sum of its micro-batches' values
TOKEN_NORMALISED_TERMS = frozenset({"loss", "pg_loss", "kl", "sdar_loss", "sft_loss"})


def actor_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    teacher_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    policy_gradient: bool = True,
    distill: bool = True,
    sft: bool = False,
    rlsd_share: float | None = None,
    rlsd_eps: float = 0.2,
    clip: float = 0.2,
    dual_clip: float | None = 3.0,
    entropy_coef: float = 0.001,
    kl_coef: float = 0.01,
    sdar_coef: float = 0.01,
    sdar_beta: float = 5.0,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step's whole loss, term by term (each a token-mean), as the SDAR reference combines them:

        L = PPO-dual-clip(A) - entropy_coef * H + kl_coef * KL_k3(pi || ref) + sdar_coef * L_SDAR(beta) [+ NLL]

    ``policy_gradient=False`` drops the first term (OPSD alone); ``teacher_logp=None`` or ``distill=False``
    the SDAR term; ``ref_logp=None`` the KL; ``entropy=None`` the bonus. ``rlsd_share`` (RLSD): the
    advantages are reweighted per token by the teacher's gap to the rollout-time policy, that share of
    them (:func:`rlsd_token_advantages`). ``sft``: behaviour cloning's NLL of the response tokens is added.
    Returns the loss and its terms (detached), ``loss`` among them.
    """
    loss = torch.zeros((), device=logp.device)
    terms: dict[str, torch.Tensor] = {}
    if rlsd_share is not None and teacher_logp is not None:  # the gap from the rollout-time (old) log-probs
        gap = teacher_logp - old_logp
        advantages = rlsd_token_advantages(advantages, gap, rlsd_share, rlsd_eps)
        if not distill:  # the gap's statistics are worth logging without the SDAR term too
            terms["gap_mean"] = masked_mean(gap, mask)
            terms["gap_negative"] = masked_mean((gap < 0).float(), mask)
    if policy_gradient:
        pg, terms["clip_frac"] = ppo_clip_loss(logp, old_logp, advantages, mask, clip, normalizer, dual_clip)
        loss = loss + pg
        terms["pg_loss"] = pg.detach()
        terms["ppo_kl"] = masked_mean((old_logp - logp).detach(), mask)  # 0 on the first optimizer step
    if entropy is not None:
        terms["entropy"] = masked_mean(entropy.detach(), mask)
        if entropy_coef:
            loss = loss + entropy_bonus(entropy, mask, entropy_coef, normalizer)
    if ref_logp is not None:
        kl = low_var_kl(logp, ref_logp, mask, normalizer)
        loss = loss + kl_coef * kl
        terms["kl"] = kl.detach()
    if teacher_logp is not None and distill:
        sd, sd_stats = sdar_loss(logp, teacher_logp, mask, sdar_beta, normalizer)
        loss = loss + sdar_coef * sd
        terms["sdar_loss"] = sd.detach()
        terms.update(sd_stats)
    if sft:
        nll = sft_loss(logp, mask, normalizer)
        loss = loss + nll
        terms["sft_loss"] = nll.detach()
    terms["loss"] = loss.detach()
    return loss, terms
