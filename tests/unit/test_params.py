"""The whole params file is validated up front; every section's defaults equal params.yaml."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError
from components.config.evaluation import EvalConfig
from components.config.gate import GateConfig
from components.config.model import ModelConfig
from components.config.policy import PolicyConfig
from components.config.reward import RewardConfig
from components.config.seeding import SeedingConfig
from components.config.validation import ValidationConfig
from components.project.params import SECTIONS, load_params

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_every_section_of_params_yaml_equals_its_dataclass_defaults():
    p = load_params(PARAMS)
    # the demo's reward model trains on from the champion's (docs/benchmarks.md; a new project starts from the base)
    assert p.reward == replace(RewardConfig(), init_from="champion") and RewardConfig().init_from == "base"
    # the one difference: params.yaml is the demo project, so it switches the demo task on (default off)
    assert p.seeding == replace(SeedingConfig(), demo_task=True) and not SeedingConfig().demo_task
    # and it trains the policy with offline DPO (docs/benchmarks.md, "Choosing the demo's optimiser"; default PPO)
    assert p.policy == replace(PolicyConfig(), algorithm="dpo") and PolicyConfig().algorithm == "ppo"
    assert p.validation == ValidationConfig() and p.model == ModelConfig()
    assert p.eval == EvalConfig() and p.gate == GateConfig()
    assert set(yaml.safe_load(PARAMS.read_text())) == set(SECTIONS)


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("reward", {"epochs": "three"}, r"reward\.epochs"),
        ("policy", {"stepz": 3}, r"unknown key policy\.stepz"),
        ("eval", {"samples_per_prompt": 0}, "samples_per_prompt"),
        ("gate", {"min_win_rate": 1.5}, "min_win_rate"),
    ],
)
def test_a_typo_in_any_section_is_reported_with_file_and_key(tmp_path, section, values, message):
    raw = yaml.safe_load(PARAMS.read_text())
    raw[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message) as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_unknown_section_and_missing_file_are_errors(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("rewards: {}\n")
    with pytest.raises(ConfigError, match="unknown section 'rewards'"):
        load_params(path)
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
