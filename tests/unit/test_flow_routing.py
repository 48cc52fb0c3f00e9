"""FlowConfig defaults equal params.yaml; where training runs (in-process or a GPU work pool) and why."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from components.config import ConfigError, load_section, read_params
from components.config.flow import FlowConfig, load_flow_config
from flows.routing import training_route

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_defaults_equal_params_yaml():
    assert load_section(FlowConfig, "flow", PARAMS) == FlowConfig()
    assert set(read_params(PARAMS)["flow"]) == set(FlowConfig.__dataclass_fields__)


def test_in_process_by_default():
    route = training_route(FlowConfig())
    assert route.where == "in-process" and route.deployment is None and "no GPU work pool" in route.reason


def test_a_configured_pool_routes_training_to_its_deployment():
    route = training_route(replace(FlowConfig(), gpu_pool="gpu", train_deployment="a100"))
    assert route.where == "work-pool" and route.pool == "gpu" and route.deployment == "rlhf-train/a100"


@pytest.mark.parametrize(
    ("env", "pool"),
    [({}, None), ({"RLHF_GPU_POOL": "gpu"}, "gpu"), ({"RLHF_GPU_POOL": "  "}, None)],
)
def test_environment_overrides_params(tmp_path, env, pool):
    params = tmp_path / "params.yaml"
    params.write_text("flow:\n  gpu_pool: from-params\n")
    expected = "from-params" if not env else pool
    assert load_flow_config(params, env).gpu_pool == expected


def test_service_url_from_environment(tmp_path):
    (tmp_path / "params.yaml").write_text("model: {}\n")
    cfg = load_flow_config(tmp_path / "params.yaml", {"RLHF_SERVICE_URL": "http://127.0.0.1:3000"})
    assert cfg.service_url == "http://127.0.0.1:3000" and cfg.gpu_pool is None


def test_a_missing_params_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_flow_config(tmp_path / "missing.yaml", {})


def test_a_typo_in_the_section_is_named(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("flow:\n  gpu_pol: gpu\n")
    with pytest.raises(ConfigError, match=r"unknown key flow\.gpu_pol"):
        load_flow_config(params, {})
    params.write_text("flow:\n  retries: -1\n")
    with pytest.raises(ConfigError, match="retries must be >= 0"):
        load_flow_config(params, {})


def test_retrain_deployment_is_named_after_the_project_unless_configured(tmp_path):
    from components.config.flow import retrain_deployment_name

    assert retrain_deployment_name(tmp_path / "shop") == "shop"
    assert retrain_deployment_name(tmp_path / "My Shop/") == "My-Shop"  # spaces and slashes never reach Prefect
    assert retrain_deployment_name(tmp_path / "shop", "nightly") == "nightly"
    with pytest.raises(ValueError, match="not a Prefect deployment name"):
        FlowConfig(deployment="a/b")
