"""``rlhf deploy`` against a real local Prefect API: a work-pool deployment with its cron schedule that Prefect
lists; without a server it says how to start one and does nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from typer.testing import CliRunner

from rlhf_cli.main import app

REPO = Path(__file__).resolve().parents[2]


def test_deploy_on_a_pool_registers_the_scheduled_deployment(prefect_api, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"flow": {"gpu_pool": "gpu-test"}, "seeding": {"demo_task": True}}))
    result = CliRunner().invoke(
        app, ["deploy", "--cron", "*/30 * * * *", "--pool", "cpu-test", "--params", str(params)]
    )
    assert result.exit_code == 0, result.output
    name = tmp_path.name  # the deployment is named after the project folder
    assert f"registered retrain/{name} on work pool cpu-test" in result.output
    assert "prefect worker start --pool cpu-test" in result.output  # no worker polls it yet
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"retrain/{name}")
        assert dep.work_pool_name == "cpu-test"
        assert [s.schedule.cron for s in dep.schedules] == ["*/30 * * * *"]
        assert dep.parameters == {"project": str(tmp_path)}
        # one retrain at a time per project; a run due while one runs is cancelled (skipped)
        assert dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        train = client.read_deployment_by_name("rlhf-train/gpu")  # flow.gpu_pool: the training deployment too
        assert train.work_pool_name == "gpu-test"
        assert client.read_work_pool("cpu-test").type == "process"


def test_two_projects_on_one_server_keep_their_own_deployments(prefect_api, tmp_path):
    def deploy(project: Path, *extra: str):
        project.mkdir(parents=True, exist_ok=True)
        (project / "params.yaml").write_text("flow: {}\nseeding: {demo_task: true}\n")
        args = ["deploy", "--cron", "0 3 * * *", "--pool", "cpu-test", "--params", str(project / "params.yaml")]
        return CliRunner().invoke(app, [*args, *extra])

    shop, other_shop = tmp_path / "shop", tmp_path / "elsewhere" / "shop"
    assert deploy(shop).exit_code == 0
    assert deploy(shop).exit_code == 0  # re-registering one's own deployment (e.g. a new cron) is fine
    refused = deploy(other_shop)  # another project, same folder name: refused, nothing replaced
    assert refused.exit_code == 2 and f"already schedules project {shop}" in refused.output
    assert "--name" in refused.output
    assert deploy(other_shop, "--name", "shop-2").exit_code == 0
    with get_client(sync_client=True) as client:
        deps = [client.read_deployment_by_name(f"retrain/{n}") for n in ["shop", "shop-2"]]
    assert [d.parameters for d in deps] == [{"project": str(shop)}, {"project": str(other_shop)}]
    assert [d.global_concurrency_limit.limit for d in deps] == [1, 1]  # one run at a time, per project
    assert deps[0].global_concurrency_limit.name != deps[1].global_concurrency_limit.name


def test_deploy_without_a_server_says_how_to_start_one(tmp_path):
    (tmp_path / "params.yaml").write_text("flow: {}\nseeding: {demo_task: true}\n")
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


@pytest.mark.slow  # about a minute on shared CPU (a second Python process importing Prefect)
def test_deploy_without_a_pool_serves_the_schedule_from_its_own_process(prefect_api, tmp_path):
    import signal
    import time

    from prefect.settings import PREFECT_API_URL

    (tmp_path / "params.yaml").write_text("flow: {}\nseeding: {demo_task: true}\n")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_cli.main", "deploy", "--cron", "*/30 * * * *", "--params", "params.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline, dep = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            with get_client(sync_client=True) as client:
                deps = [d for d in client.read_deployments() if d.parameters == {"project": str(tmp_path)}]
            if deps:
                dep = deps[0]
                break
            time.sleep(1)
        assert dep is not None, proc.stdout.read().decode() if proc.poll() is not None else "not registered in 120 s"
        assert dep.name == tmp_path.name and dep.work_pool_name is None  # served by the deploy process itself
        assert [s.schedule.cron for s in dep.schedules] == ["*/30 * * * *"]
        assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        assert proc.poll() is None  # still serving
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # what a service manager sends: it stops within seconds
        assert proc.wait(timeout=30) == 0 and time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
