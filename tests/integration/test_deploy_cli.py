"""``rlhf deploy`` against a real local Prefect API: a work-pool deployment with its cron schedule that Prefect
lists; without a server it says how to start one and does nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from rlhf_cli.main import app

REPO = Path(__file__).resolve().parents[2]


def test_deploy_on_a_pool_registers_the_scheduled_deployment(prefect_api, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"flow": {"gpu_pool": "gpu-test"}}))
    result = CliRunner().invoke(
        app, ["deploy", "--cron", "*/30 * * * *", "--pool", "cpu-test", "--params", str(params)]
    )
    assert result.exit_code == 0, result.output
    assert "registered retrain/scheduled on work pool cpu-test" in result.output
    assert "prefect worker start --pool cpu-test" in result.output  # no worker polls it yet
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("retrain/scheduled")
        assert dep.work_pool_name == "cpu-test"
        assert [s.schedule.cron for s in dep.schedules] == ["*/30 * * * *"]
        assert dep.parameters == {"project": str(tmp_path)}
        train = client.read_deployment_by_name("rlhf-train/gpu")  # flow.gpu_pool: the training deployment too
        assert train.work_pool_name == "gpu-test"
        assert client.read_work_pool("cpu-test").type == "process"


def test_deploy_without_a_server_says_how_to_start_one(tmp_path):
    (tmp_path / "params.yaml").write_text("flow: {}\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_cli.main", "deploy", "--cron", "0 3 * * *", "--params", "params.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "prefect server start" in done.stdout and "PREFECT_API_URL" in done.stdout
