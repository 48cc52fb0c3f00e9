"""GRPO (Shao et al. 2024): k samples per prompt, advantages normalised within the group, the k3 KL to the
reference in the loss; ``variant: dr_grpo`` (Liu et al. 2025) drops the std division and the per-reply length
normalisation."""

from __future__ import annotations

import torch

from components.models.policy import losses
from components.models.policy.algorithms.base import Algorithm, Forward, Targets
from components.models.policy.batch import RolloutBatch


class GRPO(Algorithm):
    name = "grpo"

    def kl_coef(self, controller: float) -> float:
        return self.cfg.grpo.kl_coef  # fixed beta in the loss (Shao et al.), no controller

    def targets(
        self,
        batch: RolloutBatch,
        raw: torch.Tensor | None,
        scores: torch.Tensor | None,
        kl_coef: float,
        mean_kl: float,
    ) -> Targets:
        g = self.cfg.grpo
        # 4.-5. advantages: the score against its group's mean (and std, unless Dr. GRPO); no KL in the reward
        adv = losses.group_normalised_advantages(scores, g.k, scale=g.variant == "grpo")  # shape: (B,)
        group_std = losses.group_view(scores, g.k).std(1).mean()
        return Targets(batch, {"advantages": adv}, {"grpo/group_score_std": group_std})

    def loss(
        self, part: RolloutBatch, out: Forward, tgt: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = self.cfg.grpo
        pl = losses.grpo_loss(
            out.logp,
            part.logp,
            part.ref_logp,
            tgt["advantages"],
            part.mask,
            clip=g.clip_range,
            kl_coef=g.kl_coef,
            loss_type=g.variant,
            max_tokens=self.cfg.max_new_tokens,
        )
        return pl.loss, {
            "loss/policy": pl.loss,
            "policy/clipfrac": pl.clipfrac,
            "policy/approx_kl": pl.approx_kl,
            "grpo/kl_in_loss": pl.kl,
        }
