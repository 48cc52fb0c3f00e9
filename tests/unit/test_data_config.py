import pytest

from components.config import ConfigError, load_section
from components.config.seeding import TINY_SEEDING, SeedingConfig
from components.config.validation import ValidationConfig


def test_params_yaml_validation_and_seeding_sections_load():
    limits = load_section(ValidationConfig, "validation", "params.yaml")
    assert limits == ValidationConfig()  # the documented defaults are the params.yaml values
    seeding = load_section(SeedingConfig, "seeding", "params.yaml")
    assert seeding == SeedingConfig(demo_task=True)  # params.yaml is the demo project
    assert seeding.seed_prompts == 200 and seeding.replies_per_prompt >= 2 and seeding.pairs_per_prompt == 2


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"seeding\.seed_promts"):
        load_section(SeedingConfig, "seeding", {"seeding": {"seed_promts": 3}})
    with pytest.raises(ConfigError, match="replies_per_prompt must be >= 2"):
        load_section(SeedingConfig, "seeding", {"seeding": {"replies_per_prompt": 1}})
    with pytest.raises(ConfigError, match=r"seeding\.batch_size: expected an integer"):
        load_section(SeedingConfig, "seeding", {"seeding": {"batch_size": "16"}})
    with pytest.raises(ConfigError, match=r"unknown key validation\.seed_prompts"):
        load_section(ValidationConfig, "validation", {"validation": {"seed_prompts": 3}})
    with pytest.raises(ConfigError, match="max_reply_chars must be >= 1"):
        load_section(ValidationConfig, "validation", {"validation": {"max_reply_chars": 0}})


def test_tiny_preset_is_small():
    assert TINY_SEEDING.seed_prompts * TINY_SEEDING.replies_per_prompt <= 16 and TINY_SEEDING.max_new_tokens <= 8
