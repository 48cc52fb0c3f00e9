"""The reward model stage: a scalar-head transformer trained with the Bradley–Terry loss on preference pairs.

Public surface: ``RewardConfig`` (params.yaml section ``reward``), ``train_reward`` (the stage),
``RewardResult`` and ``RewardModel`` (``load(path)`` then ``score(prompts, responses)``, used by PPO and
evaluation). Heavy imports happen on first use of those names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from components.config.reward import RewardConfig

if TYPE_CHECKING:
    from components.models.reward.model import RewardModel
    from components.models.reward.trainer import RewardResult, train_reward

__all__ = ["RewardConfig", "RewardModel", "RewardResult", "train_reward"]


def __getattr__(name: str) -> Any:
    if name == "RewardModel":
        from components.models.reward.model import RewardModel

        return RewardModel
    if name in {"RewardResult", "train_reward"}:
        from components.models.reward import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
