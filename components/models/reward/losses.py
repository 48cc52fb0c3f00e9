"""Pure tensor math of the reward model: the Bradley–Terry loss, accuracy, centring, normalisation.

Letters: B preference pairs in a batch. ``r_c`` / ``r_r`` are the scalar rewards of the chosen and
rejected responses, shape (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``-log σ(r_c − r_r − margin)`` over the batch (a scalar).

    Bradley & Terry (1952); with a margin as in Llama 2 (Touvron et al. 2023, eq. 2). ``logsigmoid``
    keeps it finite for large negative differences. Null margins should arrive as 0.
    """
    diff = r_chosen - r_rejected  # shape: (B,)
    if margin is not None:
        diff = diff - margin.to(device=diff.device, dtype=diff.dtype)  # shape: (B,)
    return -F.logsigmoid(diff).mean()


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs where the chosen response scores strictly higher (ties count as wrong)."""
    return (r_chosen > r_rejected).float().mean()


def center_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """``mean((r_c + r_r)^2)``: pulls raw rewards towards 0 (TRL RewardTrainer's centring term,
    Eisenstein et al. 2023, "Helping or Herding?")."""
    return ((r_chosen + r_rejected) ** 2).mean()


def normalise(rewards: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(r − mean) / std``: scores with mean 0 and std 1 over the data the statistics came from
    (reward normalisation, Ziegler et al. 2019, sec. 2.2)."""
    return (rewards - mean) / std


def reward_stats(rewards: torch.Tensor, eps: float = 1e-6) -> tuple[float, float]:
    """Mean and population std of a 1-D tensor of rewards; the std is floored at ``eps`` so a
    degenerate (constant) reward model cannot cause a division by zero when normalising."""
    if rewards.numel() == 0:
        raise ValueError("reward_stats needs at least one reward")
    mean = rewards.double().mean().item()
    std = rewards.double().std(unbiased=False).item()
    return mean, max(std, eps)
