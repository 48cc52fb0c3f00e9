"""PPO (Schulman et al. 2017) for RLHF as in Ziegler et al. 2019 and Huang et al., "The N Implementation Details
of RLHF with PPO": per-token KL penalty in the reward, GAE on a learned value head, clipped policy and value
losses. The math is in ``components/models/policy/ppo_math.py``."""

from __future__ import annotations

import torch

from components.models.policy import ppo_math
from components.models.policy.algorithms.base import Algorithm, Forward, Targets
from components.models.policy.batch import RolloutBatch


class PPO(Algorithm):
    name = "ppo"
    uses_values = True
    early_stop = True

    @property
    def epochs(self) -> int:
        return self.cfg.ppo_epochs

    def targets(
        self,
        batch: RolloutBatch,
        raw: torch.Tensor | None,
        scores: torch.Tensor | None,
        kl_coef: float,
        mean_kl: float,
    ) -> Targets:
        cfg = self.cfg
        # 4. rewards: score on the last reply token, per-token KL penalty (beta from the controller)
        rewards, kl = ppo_math.kl_shaped_rewards(
            scores, batch.logp, batch.ref_logp, batch.mask, kl_coef, cfg.kl_estimator
        )  # shape: (B, R)
        if cfg.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, batch.mask, shift_mean=False)
        # 5. advantages: GAE over reply tokens, whitened over the batch
        advantages, returns = ppo_math.gae(rewards, batch.values, batch.mask, cfg.gamma, cfg.lam)  # shape: (B, R)
        if cfg.whiten_advantages:
            advantages = ppo_math.masked_whiten(advantages, batch.mask)
        m = batch.mask.float()
        stats = {
            "objective/kl_estimator": (kl * m).sum(1).mean(),
            "val/mean_value": ppo_math.masked_mean(batch.values, m),
        }
        return Targets(batch, {"advantages": advantages, "returns": returns}, stats)

    def loss(
        self, part: RolloutBatch, out: Forward, tgt: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        pl = ppo_math.clipped_policy_loss(out.logp, part.logp, tgt["advantages"], part.mask, cfg.clip_range)
        vf, vclip = ppo_math.clipped_value_loss(
            out.values.float(), part.values, tgt["returns"], part.mask, cfg.clip_range_value
        )
        loss = pl.loss + cfg.vf_coef * vf
        if cfg.ent_coef:
            ent = ppo_math.masked_mean(ppo_math.entropy_from_logits(out.logits.float() / cfg.temperature), part.mask)
            loss = loss - cfg.ent_coef * ent
        return loss, {
            "loss/policy": pl.loss,
            "loss/value": vf,
            "policy/clipfrac": pl.clipfrac,
            "policy/approx_kl": pl.approx_kl,
            "val/ratio": pl.ratio_mean,
            "val/clipfrac": vclip,
        }
