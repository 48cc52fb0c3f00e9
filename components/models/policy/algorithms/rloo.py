"""RLOO (Ahmadian et al. 2024): k samples per prompt, each one's advantage its KL-penalised reward minus the mean
of the other k-1 (no value head), REINFORCE on whole replies, PPO-clipped when updating several times per batch."""

from __future__ import annotations

import torch

from components.models.policy import losses
from components.models.policy.algorithms.base import Algorithm, Forward, Targets
from components.models.policy.batch import RolloutBatch


class RLOO(Algorithm):
    name = "rloo"

    def targets(
        self,
        batch: RolloutBatch,
        raw: torch.Tensor | None,
        scores: torch.Tensor | None,
        kl_coef: float,
        mean_kl: float,
    ) -> Targets:
        # 4. rewards: the score minus beta times the reply's summed KL to the reference
        rewards, _ = losses.sequence_kl_penalised_rewards(
            scores, batch.logp, batch.ref_logp, batch.mask, kl_coef
        )  # shape: (B,)
        # 5. advantages: leave-one-out baseline within each prompt's k samples
        adv = losses.rloo_advantages(rewards, self.cfg.rloo.k)  # shape: (B,)
        if self.cfg.rloo.whiten_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return Targets(batch, {"advantages": adv}, {"rloo/advantage_std": adv.std(), "rloo/reward": rewards.mean()})

    def loss(
        self, part: RolloutBatch, out: Forward, tgt: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pl = losses.rloo_loss(out.logp, part.logp, tgt["advantages"], part.mask, self.cfg.rloo.clip_range)
        return pl.loss, {"loss/policy": pl.loss, "policy/clipfrac": pl.clipfrac, "policy/approx_kl": pl.approx_kl}
