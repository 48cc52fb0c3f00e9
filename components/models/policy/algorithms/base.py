"""What a policy optimiser says: how a step's batch is made, what its loss fits, and the loss.

The loop (``components/models/policy/loop.py``) owns everything the optimisers share: sampling, the no-grad forward
pass (rollout-time and reference log-probs), scoring, the update's epochs, minibatches and gradient accumulation,
the KL controller, metrics, checkpoints and resume. An :class:`Algorithm` fills in three things:

- :meth:`make_batch` (default: ``batch_size / k`` prompts, ``k`` samples each; offline DPO reads pairs);
- :meth:`targets`: from the scored batch (and the step's mean KL to the reference over all processes), what the
  loss fits (advantages, preferences, the best replies);
- :meth:`loss`: one micro-batch's loss and its diagnostics, from the policy's fresh log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from components.config.policy import PolicyConfig
from components.models.policy.batch import RolloutBatch

if TYPE_CHECKING:
    from components.models.policy.loop import PolicyTrainer


@dataclass(frozen=True)
class KLBound:
    """A bound on the KL to the reference (nats per reply, the mean exact KL summed along each reply,
    ``ppo_math.reply_kl``) measured on the policy's own samples; once a measurement exceeds ``max_kl`` the loop
    stops training (no further update), puts back the weights of the last measurement within the bound and
    checkpoints there."""

    max_kl: float
    every: int = 1
    """Steps between two measurements (with ``prompts``)."""
    prompts: int | None = None
    """Training prompts a measurement samples one reply each to, after every ``every``-th step (offline DPO, whose
    batches are not the policy's samples). None: the step's own batch measures it, before the step's update (the
    online optimisers sample it anyway); a batch beyond the bound gets no update; after the last step, which no
    batch follows, one sample to each of ``batch_size`` training prompts measures it."""


@dataclass
class Forward:
    """The policy's outputs on a micro-batch, with gradients."""

    logits: torch.Tensor  # shape: (b, R, V)
    logp: torch.Tensor  # shape: (b, R), at the sampling temperature
    values: torch.Tensor | None  # shape: (b, R), PPO's value head only


@dataclass
class Targets:
    """What the update fits: the rows to train on and per-row tensors indexed like them."""

    batch: RolloutBatch | None
    """The rows the loss sees (a subset or reordering of the step's batch); None = no update this step."""
    per_row: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors with the rows as first dimension (advantages, returns, weights), sliced with the rows."""
    stats: dict[str, torch.Tensor | float] = field(default_factory=dict)
    """Per-step diagnostics to log (per process; the loop averages them over processes)."""


class Algorithm:
    """Base class: the defaults describe an online, reward-model-driven optimiser without a value head."""

    name: ClassVar[str]
    uses_values: ClassVar[bool] = False
    """Needs a value head (PPO's critic)."""
    uses_scorer: ClassVar[bool] = True
    """Needs the reward model during training (offline DPO does not)."""
    early_stop: ClassVar[bool] = False
    """Stop a step's remaining epochs once ``policy/approx_kl`` exceeds ``early_stop_kl`` (PPO)."""
    group: ClassVar[int] = 1
    """Rows the loss needs together in one micro-batch (a preference pair: 2)."""
    needs_old_logp: ClassVar[bool] = True
    """Reads the policy's log-probs of the batch from before the update (ratios, KL penalties, the KL bound). Off
    (offline DPO): where they would cost a forward pass of their own (replies it did not sample), the loop skips
    that pass and logs the KL and entropy from the update's first pass instead."""

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg

    @property
    def epochs(self) -> int:
        """Passes over each step's training rows: ``epochs`` of the algorithm's own section of the policy config
        (``policy.<name>.epochs``), 1 where it has none."""
        return getattr(getattr(self.cfg, self.name, None), "epochs", 1)

    @property
    def kl_bound(self) -> KLBound | None:
        """A bound on the KL to the reference on the policy's own samples: the ``max_kl`` of the algorithm's own
        section of the policy config (``policy.<name>.max_kl``), measured on each step's batch; None where it has
        none or it is null (no bound)."""
        max_kl = getattr(getattr(self.cfg, self.name, None), "max_kl", None)
        return None if max_kl is None else KLBound(max_kl)

    def kl_coef(self, controller: float) -> float:
        """The KL coefficient this step uses (logged as ``objective/kl_coef``); default: the controller's."""
        return controller

    def make_batch(self, trainer: PolicyTrainer) -> RolloutBatch:
        """``batch_size / k`` prompts, ``k`` samples each, one prompt pass shared by a prompt's samples."""
        k = self.cfg.group_size
        return trainer.rollout(trainer.sample_prompts(self.cfg.batch_size // k), samples_per_prompt=k)

    def targets(
        self,
        batch: RolloutBatch,
        raw: torch.Tensor | None,
        scores: torch.Tensor | None,
        kl_coef: float,
        mean_kl: float,
    ) -> Targets:
        raise NotImplementedError

    def loss(
        self, part: RolloutBatch, out: Forward, tgt: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
