"""Best-of-n distillation (RAFT, Dong et al. 2023; expert iteration): n samples per prompt, the reward model's
best one, a few supervised epochs on it. The KL to the parent is measured every step on the policy's own samples
and bounded: a step whose batch is beyond ``bon_sft.max_kl`` makes no update, and training stops (the loop's KL
bound, as for the other online optimisers)."""

from __future__ import annotations

import torch

from components.models.policy import losses, ppo_math
from components.models.policy.algorithms.base import Algorithm, Forward, Targets
from components.models.policy.batch import RolloutBatch, slice_rows


class BoNSFT(Algorithm):
    name = "bon_sft"

    def targets(
        self,
        batch: RolloutBatch,
        raw: torch.Tensor | None,
        scores: torch.Tensor | None,
        kl_coef: float,
        mean_kl: float,
    ) -> Targets:
        # 4.-5. the best of each prompt's n samples (the loop's KL bound skips the update beyond max_kl)
        best = losses.best_of_group(scores, self.cfg.bon_sft.n)  # shape: (G,)
        return Targets(slice_rows(batch, best), {}, {"bon_sft/best_score": raw[best].mean()})

    def loss(
        self, part: RolloutBatch, out: Forward, tgt: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nll = losses.sft_loss(out.logp, part.mask)
        return nll, {
            "loss/policy": nll,
            "policy/approx_kl": ppo_math.approx_kl(out.logp, part.logp, part.mask).detach(),
        }
