"""``GateConfig`` (params.yaml section ``gate``): the thresholds a candidate must meet to be promoted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class GateConfig:
    """Thresholds a candidate must meet to be promoted (``params.yaml`` section ``gate``)."""

    decide_on: Literal["lower_bound", "point"] = "point"
    """Which figure ``min_win_rate`` applies to: ``lower_bound`` = the lower end of the win rate's interval (a
    promotion then means the candidate is better with the stated confidence), ``point`` = the point estimate.
    Both figures are shown in the gate's table either way."""
    min_win_rate: float = 0.55
    """Minimum win rate by the judge against the champion (ties half), on the figure ``decide_on`` names."""
    max_kl: float = 6.0
    """Maximum KL of the candidate to its reference, nats per reply (1.5 x PPO's default target of 4: the
    held-out KL of one evaluation scatters by about +-0.5 nats around the trained value)."""
    max_degenerate_rate: float = 0.15
    """Maximum share of the candidate's replies that are empty or repetitive."""
    block_overoptimisation: bool = True
    """Refuse a candidate on which the judge and the training reward model lean opposite ways, in either
    direction (reward model for it and judge against: over-optimisation; judge for it and reward model against:
    the judge rewards something the human preferences did not)."""
    min_reward_accuracy: float = 0.6
    """Minimum held-out preference accuracy of the reward model the candidate was trained against."""

    def __post_init__(self) -> None:
        for name in ("min_win_rate", "max_degenerate_rate", "min_reward_accuracy"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_kl < 0:
            raise ValueError(f"max_kl must be >= 0, got {self.max_kl}")
