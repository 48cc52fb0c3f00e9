"""The whole params file, validated at once: every section against its config dataclass, before any work.

``load_params(path)`` reads ``params.yaml`` and builds every stage's config, so a typo in the ``policy``
section is reported before the seed stage spends minutes, and unknown top-level sections are refused.
It imports neither torch nor transformers (the dataclasses live in ``components/config/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import RENAMED_SECTIONS, ConfigError, from_dict, read_params, read_section
from components.config.evaluation import EvalConfig
from components.config.flow import FlowConfig
from components.config.gate import GateConfig
from components.config.judges import judge_settings_problem
from components.config.model import ModelConfig
from components.config.policy import PolicyConfig
from components.config.prompts import PromptsConfig
from components.config.reward import RewardConfig
from components.config.seeding import SeedingConfig
from components.config.serve import ServeConfig
from components.config.validation import ValidationConfig

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "validation": ValidationConfig,
    "prompts": PromptsConfig,
    "seeding": SeedingConfig,
    "reward": RewardConfig,
    "policy": PolicyConfig,
    "eval": EvalConfig,
    "gate": GateConfig,
    "serve": ServeConfig,
    "flow": FlowConfig,
}
"""Every section of ``params.yaml`` and its dataclass."""


@dataclass(frozen=True)
class Params:
    """Every stage's config, from one params file."""

    model: ModelConfig
    validation: ValidationConfig
    prompts: PromptsConfig
    seeding: SeedingConfig
    reward: RewardConfig
    policy: PolicyConfig
    eval: EvalConfig
    gate: GateConfig
    serve: ServeConfig
    flow: FlowConfig
    path: Path | None = None


def params_from_dict(raw: dict[str, Any], path: Path | None = None) -> Params:
    """Build :class:`Params` from an already-read mapping; every error names its section and key."""
    unknown = sorted(set(raw) - set(SECTIONS) - set(RENAMED_SECTIONS))
    if unknown:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}unknown section {unknown[0]!r} (sections: {', '.join(SECTIONS)})")
    built = {}
    for name, cls in SECTIONS.items():
        try:
            built[name] = from_dict(cls, read_section(raw, name), prefix=f"{name}.")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}" if path else str(exc)) from exc
    problem = judge_settings_problem(
        built["eval"].judge,
        demo_task=built["seeding"].demo_task,
        judge_fraction=built["reward"].judge_fraction,
        llm_model=built["eval"].llm_judge.model,
    )
    if problem:
        raise ConfigError(f"{path}: {problem}" if path else problem)
    return Params(**built, path=path)


def load_params(path: Path) -> Params:
    """Read and validate the whole params file; a missing file is an error (never a silent fall-back)."""
    path = Path(path).resolve()
    return params_from_dict(read_params(path), path)
