import pytest

from components.config import ConfigError, load_section
from components.feedback.config import TINY_DATA, DataConfig


def test_params_yaml_data_section_loads():
    cfg = load_section(DataConfig, "data", "params.yaml")
    assert cfg.seed_prompts == 200 and cfg.replies_per_prompt >= 2
    assert cfg == DataConfig()  # the documented defaults are the params.yaml values
    assert cfg.pairs_per_prompt == 2  # 83.0 % vs 72.7 % held-out accuracy (bench/results/reward_splits.json)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.seed_promts"):
        load_section(DataConfig, "data", {"data": {"seed_promts": 3}})
    with pytest.raises(ConfigError, match="replies_per_prompt must be >= 2"):
        load_section(DataConfig, "data", {"data": {"replies_per_prompt": 1}})
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected an integer"):
        load_section(DataConfig, "data", {"data": {"batch_size": "16"}})


def test_tiny_preset_is_small():
    assert TINY_DATA.seed_prompts * TINY_DATA.replies_per_prompt <= 16 and TINY_DATA.max_new_tokens <= 8
