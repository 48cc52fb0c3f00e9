from dataclasses import FrozenInstanceError, dataclass
from typing import Literal

import pytest

from components.config import ConfigError, from_dict, load_section, read_params, to_dict
from components.config.model import ModelConfig


@dataclass(frozen=True)
class Example:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"
    on: bool = True
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    maybe: int | None = None


def test_defaults_and_values_load():
    cfg = from_dict(Example, {"lr": 2, "steps": 3, "mode": "b", "sizes": [4, 5], "maybe": 7})
    assert cfg == Example(lr=2.0, steps=3, mode="b", sizes=(4, 5), maybe=7)
    assert isinstance(cfg.lr, float)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key ppo\.lrr"):
        from_dict(Example, {"lrr": 1.0}, prefix="ppo.")


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"steps": 1.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"lr": "fast"}, "lr"),
        ({"on": "yes"}, "on"),
        ({"mode": "c"}, "mode"),
        ({"sizes": [1, "x"]}, r"sizes\[1\]"),
        ({"maybe": "none"}, "maybe"),
    ],
)
def test_wrong_types_name_the_key(values, key):
    with pytest.raises(ConfigError, match=rf"s\.{key}"):
        from_dict(Example, values, prefix="s.")


def test_configs_are_frozen():
    cfg = from_dict(Example, {})
    with pytest.raises(FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_load_section_from_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("model:\n  base: tiny\n  seed: 3\nother: {}\n")
    cfg = load_section(ModelConfig, "model", p)
    assert cfg.base == "tiny" and cfg.seed == 3
    assert to_dict(cfg)["base"] == "tiny"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_params(bad)


def test_project_params_file_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cfg = load_section(ModelConfig, "model", root / "params.yaml")
    assert cfg.base == "smollm2-135m-instruct"
