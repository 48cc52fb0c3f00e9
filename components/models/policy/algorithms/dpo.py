"""DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023): offline, on the versioned preference pairs, the parent
policy as reference, no reward model in the loop; and online DPO (Guo et al. 2024): two samples per prompt, the
reward model says which one is chosen, the same loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from components.config.policy import PolicyConfig
from components.models.policy import losses
from components.models.policy.algorithms.base import Algorithm, Forward, KLBound, Targets
from components.models.policy.batch import RolloutBatch, encode_replies, read_pairs_with_source, slice_rows

if TYPE_CHECKING:
    from components.models.policy.loop import PolicyTrainer


class _Preference(Algorithm):
    """Rows ``2n`` (chosen) and ``2n+1`` (rejected) are pair ``n``; the loss is DPO's (or IPO's)."""

    group = 2

    def _settings(self) -> tuple[float, losses.DPOLossType]:
        raise NotImplementedError

    def _sft_weight(self) -> float:
        return 0.0

    def kl_coef(self, controller: float) -> float:
        return self._settings()[0]

    def loss(
        self, part: RolloutBatch, out: Forward, tgt: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        beta, kind = self._settings()
        average = kind == "ipo"  # IPO on length-averaged log-probs, as TRL
        logp = losses.sequence_logprob(out.logp, part.mask, average)  # shape: (b,)
        ref = losses.sequence_logprob(part.ref_logp, part.mask, average)  # shape: (b,)
        w = tgt["weight"][0::2]  # shape: (b/2,)
        pl = losses.preference_loss(logp[0::2], logp[1::2], ref[0::2], ref[1::2], beta, kind, weights=w)
        total, extra = pl.loss, {}
        alpha = self._sft_weight()
        if alpha > 0:  # RPO: the chosen replies' token-mean NLL (pairs of weight 0 left out)
            keep = part.mask[0::2] * (w > 0).to(part.mask.dtype)[:, None]  # shape: (b/2, R)
            nll = losses.sft_loss(out.logp[0::2], keep)
            total, extra = total + alpha * nll, {"loss/chosen_nll": nll}
        return total, {
            **extra,
            "loss/policy": pl.loss,
            "dpo/accuracy": pl.accuracy,
            "dpo/margin": pl.margin,
            "dpo/chosen_reward": pl.chosen_reward.mean(),
            "dpo/rejected_reward": pl.rejected_reward.mean(),
        }


class DPO(_Preference):
    name = "dpo"
    uses_scorer = False
    needs_old_logp = False  # the loss compares fresh log-probs with the reference's only

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__(cfg)
        self._pairs: list[tuple[str, str, str, str]] | None = None
        self._draw: np.ndarray | None = None  # probability of each pair per draw (None: uniform)

    def _settings(self) -> tuple[float, losses.DPOLossType]:
        return self.cfg.dpo.beta, self.cfg.dpo.loss

    def _sft_weight(self) -> float:
        return self.cfg.dpo.rpo_alpha

    @property
    def kl_bound(self) -> KLBound | None:
        d = self.cfg.dpo  # the pairs' replies are not the policy's: a measurement samples its own
        return None if d.max_kl is None else KLBound(d.max_kl, d.kl_every, d.kl_prompts)

    def make_batch(self, trainer: PolicyTrainer) -> RolloutBatch:
        """``batch_size / 2`` pairs drawn with the trainer's seeded sampler (served pairs ``dpo.served_weight`` times as
        often as others); rows chosen, rejected, chosen, ..."""
        if self._pairs is None:
            self._pairs = read_pairs_with_source(trainer.paths.root / self.cfg.dpo.pairs, trainer.paths.root)
            self._draw = served_draw(self._pairs, self.cfg.dpo.served_weight)
        idx = trainer.prompt_rng.choice(len(self._pairs), size=self.cfg.batch_size // 2, replace=True, p=self._draw)
        prompts, replies = [], []
        for i in idx:
            prompt, chosen, rejected, _ = self._pairs[i]
            prompts += [prompt, prompt]
            replies += [chosen, rejected]
        system, max_tokens = trainer.model_cfg.system_prompt, self.cfg.dpo.max_reply_tokens
        return encode_replies(trainer.tok, prompts, replies, system=system, max_tokens=max_tokens)

    def targets(
        self,
        batch: RolloutBatch,
        raw: torch.Tensor | None,
        scores: torch.Tensor | None,
        kl_coef: float,
        mean_kl: float,
    ) -> Targets:
        return Targets(batch, {"weight": torch.ones(len(batch))})


def served_draw(pairs: list[tuple[Any, str, str, str]], served_weight: float) -> np.ndarray | None:
    """Each pair's probability per draw: served pairs (the 4th field ``served``) ``served_weight`` times as likely as
    the others; None (uniform) where that changes nothing."""
    served = np.array([p[3] == "served" for p in pairs])
    if served_weight == 1.0 or served.all() or not served.any():
        return None
    w = np.where(served, served_weight, 1.0)
    return w / w.sum()


class OnlineDPO(_Preference):
    name = "online_dpo"

    def _settings(self) -> tuple[float, losses.DPOLossType]:
        return self.cfg.online_dpo.beta, self.cfg.online_dpo.loss

    def targets(
        self,
        batch: RolloutBatch,
        raw: torch.Tensor | None,
        scores: torch.Tensor | None,
        kl_coef: float,
        mean_kl: float,
    ) -> Targets:
        # 4.-5. the reward model labels each prompt's two samples; the preferred one goes first, ties weigh 0
        first, decisive = losses.preference_labels(scores)  # shape: (N,) each
        n = torch.arange(len(first))
        order = torch.stack([torch.where(first, 2 * n, 2 * n + 1), torch.where(first, 2 * n + 1, 2 * n)], 1)
        pairs = slice_rows(batch, order.reshape(-1))
        weight = decisive.float().repeat_interleave(2)  # shape: (B,)
        return Targets(pairs, {"weight": weight}, {"online_dpo/decisive_fraction": decisive.float().mean()})
