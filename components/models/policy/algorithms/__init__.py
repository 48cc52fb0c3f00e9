"""The policy optimisers, by ``algorithm`` name (docs/optimisers.md)."""

from __future__ import annotations

from components.config.policy import PolicyConfig
from components.models.policy.algorithms.base import Algorithm, Forward, Targets
from components.models.policy.algorithms.bon_sft import BoNSFT
from components.models.policy.algorithms.dpo import DPO, OnlineDPO
from components.models.policy.algorithms.grpo import GRPO
from components.models.policy.algorithms.ppo import PPO
from components.models.policy.algorithms.rloo import RLOO

ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (PPO, RLOO, GRPO, DPO, OnlineDPO, BoNSFT)}


def make_algorithm(cfg: PolicyConfig) -> Algorithm:
    """The optimiser ``cfg.algorithm`` names."""
    try:
        return ALGORITHMS[cfg.algorithm](cfg)
    except KeyError:
        raise ValueError(f"unknown policy algorithm {cfg.algorithm!r} (known: {', '.join(ALGORITHMS)})") from None


__all__ = ["ALGORITHMS", "Algorithm", "Forward", "Targets", "make_algorithm"]
