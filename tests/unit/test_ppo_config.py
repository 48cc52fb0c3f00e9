"""PolicyConfig from params.yaml, its checks, the built-in scorers and the resume fingerprint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from components.config import ConfigError, load_section
from components.config.model import ModelConfig
from components.config.policy import PolicyConfig
from components.models.policy.checkpoint import fingerprint
from components.models.policy.scorers import CountScorer, Scorer, load_scorer, scorer_fingerprint

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_params_yaml_section_matches_the_documented_defaults():
    # the one difference: params.yaml is the demo project, which trains with offline DPO (docs/benchmarks.md,
    # "Choosing the demo's optimiser"); a project's default stays PPO
    assert load_section(PolicyConfig, "policy", PARAMS) == replace(PolicyConfig(), algorithm="dpo")
    assert PolicyConfig().algorithm == "ppo"


def test_bad_values_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        load_section(PolicyConfig, "policy", {"policy": {"batch_size": 10, "mini_batch_size": 4}})
    with pytest.raises(ConfigError, match=r"unknown key policy\.lr"):
        load_section(PolicyConfig, "policy", {"policy": {"lr": 1e-4}})
    with pytest.raises(ConfigError, match="kl_estimator"):
        load_section(PolicyConfig, "policy", {"policy": {"kl_estimator": "k2"}})
    with pytest.raises(ConfigError, match="top_k=0"):
        load_section(PolicyConfig, "policy", {"policy": {"top_p": 0.9}})


def test_count_scorer_and_builtin_specs():
    s = CountScorer("ok", cap=2)
    assert isinstance(s, Scorer)
    assert s.score(["a", "b", "c"], ["OK ok", "nothing", "ok ok ok"]).tolist() == [2.0, 0.0, 2.0]
    assert load_scorer("builtin:count:yes").score(["p"], ["yes, yes"]).tolist() == [2.0]
    vader = load_scorer("builtin:vader").score(["p", "p"], ["Great, thank you so much!", "This is terrible."])
    assert vader.dtype == torch.float32 and vader[0] > 0.5 and vader[1] < -0.3
    with pytest.raises(ValueError, match="unknown built-in"):
        load_scorer("builtin:nope")


def test_fingerprint_ignores_operational_fields_only(tmp_path):
    cfg, model = PolicyConfig(), ModelConfig()
    fp = fingerprint(cfg, model, "s", 1)
    assert fingerprint(replace(cfg, save_every=1, output_dir="x"), model, "s", 1) == fp
    assert fingerprint(replace(cfg, learning_rate=1e-5), model, "s", 1) != fp
    assert fingerprint(cfg, replace(model, base="tiny"), "s", 1) != fp
    assert fingerprint(cfg, model, "other-scorer", 1) != fp
    assert fingerprint(cfg, model, "s", 2) != fp
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "w.bin").write_bytes(b"1")
    before = scorer_fingerprint(tmp_path / "rm")
    (tmp_path / "rm" / "w.bin").write_bytes(b"2")
    assert scorer_fingerprint(tmp_path / "rm") != before


def test_accelerator_can_change_precision_in_one_process():
    # A long-lived worker may run a bf16 PPO job, then a float32 one; accelerate alone refuses the second.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from components.models.policy.model import make_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
        with pytest.raises(ValueError, match="already been initialized"):
            Accelerator(cpu=True, mixed_precision="no")
        assert make_accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
        assert make_accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_algorithm_settings_are_checked_naming_the_key():
    with pytest.raises(ConfigError, match=r"policy\.algorithm: 'reinforce' is not one of"):
        load_section(PolicyConfig, "policy", {"policy": {"algorithm": "reinforce"}})
    with pytest.raises(ConfigError, match="multiple of rloo's 3 samples per prompt"):
        load_section(PolicyConfig, "policy", {"policy": {"algorithm": "rloo", "rloo": {"k": 3}}})
    with pytest.raises(ConfigError, match="must be even"):
        load_section(PolicyConfig, "policy", {"policy": {"algorithm": "dpo", "batch_size": 6, "mini_batch_size": 3,
                                                "micro_batch_size": 3}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"dpo\.max_kl must be > 0 nats or null"):
        load_section(PolicyConfig, "policy", {"policy": {"dpo": {"max_kl": 0}}})
    assert load_section(PolicyConfig, "policy", {"policy": {"dpo": {"max_kl": None}}}).dpo.max_kl is None
    with pytest.raises(ConfigError, match=r"online_dpo\.max_kl must be > 0 nats or null"):
        load_section(PolicyConfig, "policy", {"policy": {"online_dpo": {"max_kl": -1.0}}})
    assert load_section(PolicyConfig, "policy", {"policy": {"grpo": {"max_kl": None}}}).grpo.max_kl is None
    with pytest.raises(ConfigError, match=r"dpo\.kl_every and dpo\.kl_prompts must be >= 1"):
        load_section(PolicyConfig, "policy", {"policy": {"dpo": {"kl_every": 0}}})
    with pytest.raises(ConfigError, match=r"dpo\.rpo_alpha must be >= 0"):
        load_section(PolicyConfig, "policy", {"policy": {"dpo": {"rpo_alpha": -0.5}}})
    with pytest.raises(ConfigError, match=r"unknown key policy\.grpo\.beta"):
        load_section(PolicyConfig, "policy", {"policy": {"grpo": {"beta": 0.1}}})
    cfg = load_section(
        PolicyConfig, "policy", {"policy": {"algorithm": "grpo", "grpo": {"k": 8, "variant": "dr_grpo"}}}
    )
    assert cfg.group_size == 8 and cfg.grpo.variant == "dr_grpo"
    # another algorithm, or other settings of one, change the resume fingerprint (a resume is refused)
    base = fingerprint(PolicyConfig(), ModelConfig(), "s", 1)
    assert fingerprint(replace(PolicyConfig(), algorithm="rloo"), ModelConfig(), "s", 1) != base
    assert fingerprint(replace(PolicyConfig(), rloo=replace(PolicyConfig().rloo, k=2)), ModelConfig(), "s", 1) != base


def test_the_old_section_name_ppo_is_read_as_policy_with_a_warning(caplog):
    from components.project.params import params_from_dict

    with caplog.at_level("WARNING", logger="components.config.loading"):
        params = params_from_dict({"ppo": {"steps": 3, "algorithm": "rloo"}, "seeding": {"demo_task": True}})
    assert params.policy.steps == 3 and params.policy.algorithm == "rloo"
    assert "'ppo' is now called 'policy'" in caplog.text
    assert load_section(PolicyConfig, "policy", {"ppo": {"steps": 5}}).steps == 5
    with pytest.raises(ConfigError, match="both 'ppo' and 'policy'"):
        params_from_dict({"ppo": {}, "policy": {}})
    with pytest.raises(ConfigError, match="now called 'policy'"):
        load_section(PolicyConfig, "ppo", {"policy": {}})


def test_the_kl_target_is_reported_only_where_a_controller_uses_it():
    def cfg(**policy: object) -> PolicyConfig:
        return load_section(PolicyConfig, "policy", {"policy": policy})

    assert cfg(algorithm="ppo").controller_kl_target == cfg().kl_target == 4.0
    assert cfg(algorithm="rloo", kl_target=6.0).controller_kl_target == 6.0
    assert cfg(algorithm="ppo", adaptive_kl=False).controller_kl_target is None
    for algorithm in ("grpo", "dpo", "online_dpo", "bon_sft"):  # fixed coefficients, or no KL penalty
        assert cfg(algorithm=algorithm).controller_kl_target is None, algorithm
