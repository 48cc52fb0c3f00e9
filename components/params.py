"""The whole params file, validated at once: every section against its config dataclass, before any work.

``load_params(path)`` reads ``params.yaml`` and builds every stage's config, so a typo in the ``ppo``
section is reported before the seed stage spends minutes, and unknown top-level sections are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import ConfigError, ModelConfig, from_dict, read_params
from components.evaluation import EvalConfig
from components.feedback.config import DataConfig
from components.gate import GateConfig
from components.ppo.config import PPOConfig
from components.reward.config import RewardConfig

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "reward": RewardConfig,
    "ppo": PPOConfig,
    "eval": EvalConfig,
    "gate": GateConfig,
}
"""Every section of ``params.yaml`` and its dataclass."""


@dataclass(frozen=True)
class Params:
    """Every stage's config, from one params file."""

    model: ModelConfig
    data: DataConfig
    reward: RewardConfig
    ppo: PPOConfig
    eval: EvalConfig
    gate: GateConfig
    path: Path | None = None


def params_from_dict(raw: dict[str, Any], path: Path | None = None) -> Params:
    """Build :class:`Params` from an already-read mapping; every error names its section and key."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}unknown section {unknown[0]!r} (sections: {', '.join(SECTIONS)})")
    built = {}
    for name, cls in SECTIONS.items():
        try:
            built[name] = from_dict(cls, raw.get(name), prefix=f"{name}.")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}" if path else str(exc)) from exc
    return Params(**built, path=path)


def load_params(path: Path) -> Params:
    """Read and validate the whole params file; a missing file is an error (never a silent fall-back)."""
    path = Path(path).resolve()
    return params_from_dict(read_params(path), path)
