"""Training routed to a work pool: the ``retrain`` flow reaches ``rlhf-train/<name>`` with ``run_deployment``, a
real ``prefect worker`` on a local process pool runs it in its own process, and the flow waits for its result.

The same run covers ``flow.ppo_processes > 1``: the worker reads it from the project's params and runs the policy
stage under ``accelerate launch`` (2 CPU processes with gloo here, one per GPU on a GPU worker), then ``dvc commit
ppo``: the lock records it and nothing is left to run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from flows.deploy import register_on_pool, register_training
from flows.retrain import retrain

REPO = Path(__file__).resolve().parents[2]
POOL = "gpu-dispatch-test"


@contextlib.contextmanager
def worker(pool: str, log: Path):
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": "1"}
    env["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # pick up scheduled runs within a second (default: every 10 s)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with get_client(sync_client=True) as client:
                if client.read_workers_for_work_pool(pool):
                    break
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # workers ignore SIGTERM for a long time; SIGINT stops them
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_training_runs_on_the_pool_worker(prefect_api, tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_retrain_flow import make_project

    flow = {"gpu_pool": POOL, "train_deployment": "dispatch", "retries": 0, "ppo_processes": 2}
    root = make_project(tmp_path, {"flow": flow})
    monkeypatch.delenv("RLHF_GPU_POOL", raising=False)
    monkeypatch.delenv("RLHF_PPO_PROCESSES", raising=False)
    monkeypatch.setenv("RLHF_HOME", str(tmp_path / "home"))
    register_training(POOL, "dispatch")
    scheduled = register_on_pool(root, "0 3 * * *", POOL)  # what `rlhf deploy --pool` registers
    with worker(POOL, tmp_path / "worker.log"):
        state = retrain(project=str(root), seed_if_empty=True, label="pool", return_state=True)
        assert state.type == StateType.COMPLETED, state.message
        # a triggered run of the scheduled deployment completes on the worker (nothing new: no training)
        triggered = run_deployment(scheduled.name, timeout=600, poll_interval=0.5)
    assert triggered.state.type == StateType.COMPLETED, (tmp_path / "worker.log").read_text()[-3000:]
    summary = state.result()
    assert summary["training"]["where"] == "work-pool" and summary["training"]["pool"] == POOL
    assert summary["training"]["ran"] == ["train_reward", "ppo"] and summary["training"]["ppo_processes"] == 2
    assert (root / "models" / "policy" / summary["candidate"] / "config.json").is_file()
    manifest = json.loads((root / "models" / "policy" / summary["candidate"] / "manifest.json").read_text())
    assert manifest["processes"] == 2
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"train_reward", "train_judge", "ppo", "evaluate"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=root, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout + status.stderr
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("rlhf-train/dispatch")
        runs = client.read_flow_runs()
        train_runs = [r for r in runs if r.deployment_id == dep.id]
    # one training run per retrain run (the triggered one found both stages up to date)
    assert len(train_runs) == 2 and all(r.state.type == StateType.COMPLETED for r in train_runs)
