"""PPO math for RLHF: small, typed, pure tensor functions (no model, no I/O).

Letters: B batch (sequences), T response tokens (right padded after EOS), V vocabulary.
Masks are 1 on real response tokens (up to and including the first EOS) and 0 after.

Sources (cited per function): Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences" (arXiv:1909.08593); Huang et al. 2022/2024, "The N Implementation Details of RLHF with
PPO" and its reference code ``lm-human-preference-details``; Schulman et al. 2016 (GAE,
arXiv:1506.02438) and 2017 (PPO, arXiv:1707.06347); Schulman 2020, "Approximating KL Divergence"
(k1/k3 estimators); TRL 0.x ``ppo_trainer`` / ``core`` (masked_whiten, loss layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

KLEstimator = Literal["k1", "k3"]


# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over all, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over masked positions; Bessel-corrected like TRL ``core.masked_var``."""
    mean = masked_mean(x, mask)
    centred_sq = (x - mean) ** 2
    var = masked_mean(centred_sq, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n < 2:
            raise ValueError(f"masked_var needs at least 2 unmasked values for an unbiased estimate, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked positions; ``shift_mean=False`` adds the mean back (TRL ``masked_whiten``).

    Masked-out positions are returned as 0 so they never leak into later sums.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Log-probabilities, entropy, KL
# ---------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each sampled token under ``logits / temperature``.

    Dividing by the sampling temperature makes these the log-probs of the distribution the tokens were
    actually drawn from (Huang et al., "N implementation details", detail on temperature).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # shape: (B, T, V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # shape: (B, T)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: logsumexp(z) - sum softmax(z) z."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)  # shape: (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # shape: (B, T)


LOGIT_CHUNK_ELEMENTS = 1 << 22
"""Logits converted to float32 at a time by the chunked functions (16 MiB); a chunk is whole positions."""


def _position_chunk(logits: torch.Tensor, max_elements: int) -> int:
    """Positions per chunk so that one chunk's float32 copy holds at most ``max_elements`` (at least 1)."""
    per_position = logits.shape[0] * logits.shape[-1]
    return max(1, max_elements // max(per_position, 1))


def chunked_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    max_elements: int = LOGIT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`logprobs_from_logits` (and, with ``with_entropy``, :func:`entropy_from_logits` of the same
    tempered logits) computed a chunk of positions at a time: the float32 log-softmax of ``logits / temperature``
    over a chunk of at most ``max_elements`` values, its sampled entries gathered (and ``-sum p log p``), so no
    float32 (B, T, V) tensor (nor its log-softmax or softmax) is ever built. The same values as the full-tensor
    functions up to float rounding (entropy: ``-sum p log p`` = ``logsumexp z - sum p z``).

    Returns ``(logp, entropy)``, both (B, T) float32 (entropy None unless asked). Gradients flow to ``logits``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    step = _position_chunk(logits, max_elements)
    logps, ents = [], []
    for s in range(0, logits.shape[1], step):
        logp = F.log_softmax(logits[:, s : s + step].float() / temperature, dim=-1)  # shape: (B, c, V)
        logps.append(logp.gather(-1, tokens[:, s : s + step].unsqueeze(-1)).squeeze(-1))  # shape: (B, c)
        if with_entropy:
            ents.append(-(logp.exp() * logp).sum(-1))  # shape: (B, c)
    if not logps:
        empty = logits.new_zeros(tokens.shape, dtype=torch.float32)
        return empty, (empty.clone() if with_entropy else None)
    return torch.cat(logps, dim=1), (torch.cat(ents, dim=1) if with_entropy else None)


def chunked_token_kl(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    max_elements: int = LOGIT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """KL(p || q) between the policy's and the reference's tempered next-token distributions at each position,
    summed over the whole vocabulary: ``sum_v p_v (log p_v - log q_v)``, shape (B, T) float32, never negative.

    Summed over a sampled reply's positions it is the Rao-Blackwellised k1: k1's expectation over the token
    sampled at a position given the reply so far, so the same mean over sampled replies as the summed k1, without
    the noise of which token was drawn (on a demo round's candidate: a standard deviation per reply of 1.7 nats
    against k1's 3.4, the same mean; docs/benchmarks.md). A chunk of positions at a time, as
    :func:`chunked_logprobs`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape != ref_logits.shape:
        raise ValueError(f"policy logits {tuple(logits.shape)} and reference logits {tuple(ref_logits.shape)} differ")
    step = _position_chunk(logits, max_elements)
    out = [
        _token_kl(logits[:, s : s + step], ref_logits[:, s : s + step], temperature)
        for s in range(0, logits.shape[1], step)
    ]
    return torch.cat(out, dim=1) if out else logits.new_zeros(logits.shape[:2], dtype=torch.float32)


def reply_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per reply, :func:`chunked_token_kl` summed over its real positions (``mask`` (B, R)); shape (B,)."""
    return (chunked_token_kl(logits, ref_logits, temperature) * mask.float()).sum(dim=1)


def _token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # shape: (B, c, V)
    logq = F.log_softmax(ref_logits.float() / temperature, dim=-1)  # shape: (B, c, V)
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)  # shape: (B, c); >= 0 but for float rounding


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled token's log-probs.

    k1 = log p - log q (unbiased, can be negative; Ziegler et al. 2019 eq. 2);
    k3 = (q/p - 1) - log(q/p) (unbiased, always >= 0; Schulman 2020, "Approximating KL Divergence").
    """
    log_ratio = logp - ref_logp  # shape: (B, T)
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (use 'k1' or 'k3')")


def score_stats(scores: torch.Tensor, eps: float = 1e-6) -> tuple[float, float]:
    """Mean and population std of a 1-D tensor of scores (std floored at ``eps``)."""
    if scores.numel() < 2:
        raise ValueError("score_stats needs at least two scores")
    s = scores.double()
    return s.mean().item(), max(s.std(unbiased=False).item(), eps)


def normalise_scores(scores: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(scores - mean) / std``: scores on the scale PPO's KL coefficient and penalties are set for."""
    return (scores - mean) / std  # shape: (B,)


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every reply that hit ``max_new_tokens`` without EOS.

    Huang et al. ("N implementation details", truncate at EOS and penalise replies without it); TRL
    ``missing_eos_penalty``.
    """
    return torch.where(ended, scores, scores - penalty)  # shape: (B,)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded mask (the reply's last token)."""
    lengths = mask.long().sum(dim=1)  # shape: (B,)
    if (lengths == 0).any():
        raise ValueError("every response must have at least one token (a row of the mask is all zeros)")
    return lengths - 1


def kl_shaped_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * KL_t`` everywhere, plus the score on the last response token.

    Ziegler et al. 2019 eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / rho(y|x)), the KL spread per token
    and the reward-model score given at the final token (Huang et al., "N implementation details").
    Returns ``(rewards, kl)``, both (B, T), zero where ``mask`` is 0.
    """
    m = mask.to(logp.dtype)
    kl = kl_per_token(logp, ref_logp, estimator) * m  # shape: (B, T)
    rewards = -kl_coef * kl  # shape: (B, T)
    last = last_token_index(mask)  # shape: (B,)
    rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))
    return rewards * m, kl


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked response tokens (Schulman et al. 2016, eq. 16).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A zero
    beyond each reply's last token (the episode ends at EOS). Returns ``(advantages, returns)`` with
    ``returns = advantages + values`` (the value target, as in TRL / lm-human-preference-details).
    """
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m  # shape: (B, T)
    T = rewards.shape[1]
    next_value = torch.zeros_like(values[:, 0])  # shape: (B,)
    next_adv = torch.zeros_like(values[:, 0])  # shape: (B,)
    advs = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # shape: (B,)
        adv = (delta + gamma * lam * next_adv) * m[:, t]  # shape: (B,)
        advs.append(adv)
        next_value, next_adv = values[:, t], adv
    advantages = torch.stack(advs[::-1], dim=1)  # shape: (B, T)
    return advantages, (advantages + values) * m


# ---------------------------------------------------------------------------------------------
# Losses and their diagnostics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor
    """Clipped surrogate, to minimise (scalar)."""
    clipfrac: torch.Tensor
    """Fraction of tokens where the clipped branch was taken (scalar)."""
    approx_kl: torch.Tensor
    """0.5 * mean((log ratio)^2) over tokens (scalar), as in TRL / lm-human-preference-details."""
    ratio_mean: torch.Tensor
    """Mean of pi_new / pi_old over tokens (scalar); drifts from 1 when updates are large."""


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> PolicyLoss:
    """PPO clipped surrogate max(-A r, -A clip(r, 1-eps, 1+eps)) over masked tokens (Schulman 2017, eq. 7)."""
    log_ratio = logp - old_logp  # shape: (B, T)
    ratio = torch.exp(log_ratio)  # shape: (B, T)
    unclipped = -advantages * ratio  # shape: (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)  # shape: (B, T)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    kl = approx_kl(logp, old_logp, mask).detach()
    return PolicyLoss(loss, clipfrac.detach(), kl, masked_mean(ratio, mask).detach())


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2) over masked tokens; returns ``(loss, clipfrac)``.

    Value clipping from the OpenAI baselines PPO2 / lm-human-preference-details (``cliprange_value``).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)  # shape: (B, T)
    loss_unclipped = (values - returns) ** 2  # shape: (B, T)
    loss_clipped = (clipped_values - returns) ** 2  # shape: (B, T)
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, clipfrac.detach()


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0.5 * E[(log pi_new - log pi_old)^2] over masked tokens (TRL / lm-human-preference-details ``approxkl``)."""
    return 0.5 * masked_mean((logp - old_logp) ** 2, mask)


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers
# ---------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adapt beta so the policy's KL to the reference tracks ``target`` (Ziegler et al. 2019, eq. 3).

    e_t = clip(KL_t / target - 1, -0.2, 0.2); beta_{t+1} = beta_t (1 + K_beta e_t), K_beta = n_steps / horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """``current_kl``: mean over sequences of the summed per-token KL; ``n_steps``: sequences seen this step."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


KLController = FixedKLController | AdaptiveKLController


def make_kl_controller(adaptive: bool, init_kl_coef: float, target: float, horizon: int) -> KLController:
    """The adaptive controller (Ziegler et al. 2019) or a fixed coefficient."""
    return AdaptiveKLController(init_kl_coef, target, horizon) if adaptive else FixedKLController(init_kl_coef)


def linear_decay(step: int, total: int) -> float:
    """LR multiplier 1 -> 1/total over ``total`` optimiser steps (cleanrl / TRL ``frac = 1 - (i-1)/n``)."""
    if total <= 0:
        return 1.0
    return max(1.0 - step / total, 0.0)


__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "PolicyLoss",
    "apply_missing_eos_penalty",
    "approx_kl",
    "chunked_logprobs",
    "chunked_token_kl",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "gae",
    "kl_per_token",
    "kl_shaped_rewards",
    "last_token_index",
    "linear_decay",
    "logprobs_from_logits",
    "make_kl_controller",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "reply_kl",
]
