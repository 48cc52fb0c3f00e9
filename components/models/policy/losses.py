"""What the policy optimisers other than PPO compute: advantages and losses as small, typed, pure tensor functions.

Letters: B replies (rows), R reply tokens (right padded after EOS), G groups (prompts), k samples per prompt
(rows ``g * k .. g * k + k - 1`` are prompt ``g``'s samples, the order ``generate(..., samples_per_prompt=k)``
returns), N preference pairs. Masks are 1 on real reply tokens (up to and including EOS) and 0 after.

The PPO math (GAE, clipped surrogate and value losses, KL estimators and controller) is in
``components/models/policy/ppo_math.py``; these reuse its masked statistics and KL estimators.

Sources, cited per function: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE-Style Optimization for
Learning from Human Feedback in LLMs" (RLOO, arXiv:2402.14740); Shao et al. 2024, "DeepSeekMath" (GRPO,
arXiv:2402.03300); Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO,
arXiv:2503.20783); Rafailov et al. 2023, "Direct Preference Optimization" (arXiv:2305.18290); Azar et al. 2023,
"A General Theoretical Paradigm to Understand Learning from Human Preferences" (IPO, arXiv:2310.12036);
Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback" (online DPO, arXiv:2402.04792);
Dong et al. 2023, "RAFT: Reward rAnked FineTuning" (arXiv:2304.06767). Reference implementations: TRL
``RLOOTrainer`` (0.x), ``GRPOTrainer`` (``loss_type`` grpo / dr_grpo), ``DPOTrainer.dpo_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from components.models.policy.ppo_math import kl_per_token, masked_mean

GRPOLossType = Literal["grpo", "dr_grpo"]
DPOLossType = Literal["sigmoid", "ipo"]


# ---------------------------------------------------------------------------------------------
# Sequence-level quantities
# ---------------------------------------------------------------------------------------------


def sequence_logprob(logp: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Log-probability of each whole reply: the sum (or, ``average``, the mean) of its tokens' log-probs, (B,)."""
    m = mask.to(logp.dtype)
    total = (logp * m).sum(1)  # shape: (B,)
    return total / m.sum(1).clamp_min(1.0) if average else total


def group_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(B,)`` per-row values as ``(G, k)``: one row per prompt, its ``k`` samples side by side."""
    if k < 1 or x.numel() % k:
        raise ValueError(f"{x.numel()} rows do not split into groups of k={k} samples per prompt")
    return x.reshape(-1, k)


def sequence_kl_penalised_rewards(
    scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``r - beta * KL(y)``, the KL to the reference as one sequence-level penalty (Ahmadian et al. 2024, sec. 3;
    TRL ``RLOOTrainer``: ``rlhf_reward = scores - kl_coef * (logprobs - ref_logprobs).sum(1)``).

    Returns ``(rewards, seq_kl)``, both (B,); ``seq_kl`` is the summed k1 estimate over each reply's tokens.
    """
    seq_kl = (kl_per_token(logp, ref_logp, "k1") * mask.to(logp.dtype)).sum(1)  # shape: (B,)
    return scores.to(seq_kl.dtype) - kl_coef * seq_kl, seq_kl


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out: each sample's reward minus the mean reward of its prompt's *other* k-1 samples.

    A_i = r_i - 1/(k-1) sum_{j != i} r_j (Ahmadian et al. 2024, eq. 6; TRL ``RLOOTrainer``:
    ``baseline = (rlhf_reward.sum(0) - rlhf_reward) / (k - 1)``). ``rewards`` (B,) prompt-major; returns (B,).
    """
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt for a leave-one-out baseline, got k={k}")
    r = group_view(rewards, k)  # shape: (G, k)
    baseline = (r.sum(1, keepdim=True) - r) / (k - 1)  # shape: (G, k)
    return (r - baseline).reshape(-1)  # shape: (B,)


def group_normalised_advantages(rewards: torch.Tensor, k: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's outcome advantages: ``(r_i - mean(r_group)) / (std(r_group) + eps)`` (Shao et al. 2024, sec. 4.1.2).

    ``std`` is the sample (Bessel-corrected) std, as TRL ``GRPOTrainer`` computes it; ``scale=False`` keeps only
    the centring (Dr. GRPO, Liu et al. 2025: dividing by the std up-weights prompts whose samples barely differ).
    ``rewards`` (B,) prompt-major; returns (B,).
    """
    if k < 2:
        raise ValueError(f"GRPO needs k >= 2 samples per prompt to normalise within a group, got k={k}")
    r = group_view(rewards, k)  # shape: (G, k)
    centred = r - r.mean(1, keepdim=True)  # shape: (G, k)
    if scale:
        centred = centred / (r.std(1, keepdim=True) + eps)
    return centred.reshape(-1)  # shape: (B,)


# ---------------------------------------------------------------------------------------------
# Policy-gradient losses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PGLoss:
    loss: torch.Tensor
    """To minimise (scalar)."""
    clipfrac: torch.Tensor
    """Fraction of ratios (sequences or tokens) where the clipped branch was taken (scalar, detached)."""
    approx_kl: torch.Tensor
    """0.5 * mean((log ratio)^2) against the rollout policy (scalar, detached)."""
    kl: torch.Tensor
    """Mean per-token KL to the reference in the loss, 0 where the loss has none (scalar, detached)."""


def rloo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> PGLoss:
    """RLOO's policy loss on whole replies: REINFORCE ``-A * ratio`` with the sequence-level ratio
    ``pi(y|x) / pi_old(y|x)``, PPO-clipped when ``clip`` is set (several updates per batch; TRL ``RLOOTrainer``:
    ``new_ratio = (new_logprobs.sum(1) - old_logprobs.sum(1)).exp()``, ``max(-A r, -A clip(r))``).

    With one update per batch the ratio is 1 and the gradient is REINFORCE's ``-A grad log pi(y|x)``.
    ``logp``/``old_logp``/``mask`` (B, R); ``advantages`` (B,).
    """
    log_ratio = sequence_logprob(logp, mask) - sequence_logprob(old_logp, mask)  # shape: (B,)
    ratio = torch.exp(log_ratio)  # shape: (B,)
    unclipped = -advantages * ratio  # shape: (B,)
    if clip is None:
        loss, clipfrac = unclipped.mean(), torch.zeros(())
    else:
        clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)  # shape: (B,)
        loss = torch.maximum(unclipped, clipped).mean()
        clipfrac = (clipped > unclipped).float().mean()
    return PGLoss(loss, clipfrac.detach(), 0.5 * (log_ratio.detach() ** 2).mean(), torch.zeros(()))


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    kl_coef: float,
    loss_type: GRPOLossType = "grpo",
    max_tokens: int | None = None,
) -> PGLoss:
    """GRPO's token-level loss (Shao et al. 2024, eq. 3; TRL ``GRPOTrainer``):

    l_t = -min(rho_t A, clip(rho_t, 1-eps, 1+eps) A) + beta * k3_t, with rho_t = pi/pi_old and
    k3_t = pi_ref/pi - log(pi_ref/pi) - 1 (Schulman 2020), the KL in the loss rather than in the reward.

    ``grpo`` averages over each reply's tokens, then over replies (longer replies weigh less per token);
    ``dr_grpo`` sums every token and divides by the constant ``B * max_tokens`` (Liu et al. 2025, length-unbiased;
    TRL ``loss_type="dr_grpo"``). ``logp``/``old_logp``/``ref_logp``/``mask`` (B, R); ``advantages`` (B,).
    """
    m = mask.to(logp.dtype)
    log_ratio = logp - old_logp  # shape: (B, R)
    ratio = torch.exp(log_ratio)  # shape: (B, R)
    a = advantages.unsqueeze(1)  # shape: (B, 1)
    unclipped, clipped = ratio * a, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * a  # shape: (B, R)
    kl = kl_per_token(logp, ref_logp, "k3")  # shape: (B, R)
    per_token = -torch.minimum(unclipped, clipped) + kl_coef * kl  # shape: (B, R)
    if loss_type == "grpo":
        loss = ((per_token * m).sum(1) / m.sum(1).clamp_min(1.0)).mean()
    elif loss_type == "dr_grpo":
        width = max_tokens if max_tokens is not None else mask.shape[1]
        loss = (per_token * m).sum() / (mask.shape[0] * width)
    else:
        raise ValueError(f"unknown GRPO loss type {loss_type!r} (use 'grpo' or 'dr_grpo')")
    clipfrac = masked_mean((clipped < unclipped).float(), m)
    approx = 0.5 * masked_mean(log_ratio.detach() ** 2, m)
    return PGLoss(loss, clipfrac.detach(), approx, masked_mean(kl.detach(), m))


# ---------------------------------------------------------------------------------------------
# Preference losses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceLoss:
    loss: torch.Tensor
    """Mean over pairs, to minimise (scalar)."""
    chosen_reward: torch.Tensor
    """Implicit reward beta * (log pi - log pi_ref) of the chosen replies, (N,), detached."""
    rejected_reward: torch.Tensor
    """The same for the rejected replies, (N,), detached."""

    @property
    def accuracy(self) -> torch.Tensor:
        """Fraction of pairs whose chosen reply has the higher implicit reward."""
        return (self.chosen_reward > self.rejected_reward).float().mean()

    @property
    def margin(self) -> torch.Tensor:
        """Mean implicit-reward margin chosen - rejected."""
        return (self.chosen_reward - self.rejected_reward).mean()


def preference_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
    loss_type: DPOLossType = "sigmoid",
    weights: torch.Tensor | None = None,
) -> PreferenceLoss:
    """DPO or IPO on sequence log-probs, each (N,).

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l));
    ``sigmoid`` (DPO, Rafailov et al. 2023, eq. 7): -log sigmoid(beta h);
    ``ipo`` (Azar et al. 2023, eq. 17; TRL: ``(logits - 1 / (2 * beta)) ** 2``): (h - 1/(2 beta))^2, where the
    caller passes length-averaged log-probs as TRL does for IPO.
    ``weights`` (N,) of 0/1 drops pairs (e.g. ties) from the mean; None keeps all.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_ratio = chosen_logp - ref_chosen_logp  # shape: (N,)
    rejected_ratio = rejected_logp - ref_rejected_logp  # shape: (N,)
    h = chosen_ratio - rejected_ratio  # shape: (N,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {loss_type!r} (use 'sigmoid' or 'ipo')")
    if weights is None:
        loss = losses.mean()
    else:
        w = weights.to(losses.dtype)
        loss = (losses * w).sum() / w.sum().clamp_min(1.0)
    return PreferenceLoss(loss, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach())


def preference_labels(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of each prompt's two samples the scorer prefers: ``(chosen_first, decisive)``, both (N,) bool.

    Rows ``2n`` and ``2n+1`` are prompt ``n``'s samples (Guo et al. 2024: the annotator labels two on-policy
    samples); a tie is not decisive and carries no preference.
    """
    s = group_view(scores, 2)  # shape: (N, 2)
    return s[:, 0] >= s[:, 1], s[:, 0] != s[:, 1]


# ---------------------------------------------------------------------------------------------
# Supervised distillation (best-of-n)
# ---------------------------------------------------------------------------------------------


def best_of_group(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Row index of the highest-scoring sample of each prompt's ``k`` (first on ties), (G,) (RAFT, Dong et al.)."""
    s = group_view(scores, k)  # shape: (G, k)
    return torch.arange(s.shape[0], device=s.device) * k + s.argmax(1)  # shape: (G,)


def sft_loss(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the target replies, averaged over their tokens (scalar)."""
    return -masked_mean(logp, mask)


__all__ = [
    "DPOLossType",
    "GRPOLossType",
    "PGLoss",
    "PreferenceLoss",
    "best_of_group",
    "group_normalised_advantages",
    "group_view",
    "grpo_loss",
    "preference_labels",
    "preference_loss",
    "rloo_advantages",
    "rloo_loss",
    "sequence_kl_penalised_rewards",
    "sequence_logprob",
    "sft_loss",
]
