"""Scheduled runs neither overlap nor outlive the deployment, against a real local Prefect API.

A deployment served the way ``rlhf deploy`` serves ``retrain`` (a 1-minute cron, one project) gets several runs
due at once: one runs, the others are recorded as Cancelled by the deployment's concurrency limit, and no two
are ever running together. SIGTERM stops the serving process within seconds and cancels the run in flight.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, StateType
from prefect.settings import PREFECT_API_URL

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ACTIVE = {StateType.PENDING, StateType.RUNNING, StateType.CANCELLING}


def _runs(deployment_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


@pytest.mark.slow  # a serving process importing Prefect, a 12 s run and its cancellation: about a minute
def test_runs_of_one_deployment_never_overlap_and_sigterm_stops_promptly(prefect_api, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "slow_flow.py"), str(project), "* * * * *"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline, dep = time.monotonic() + 120, None
        while dep is None and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            with get_client(sync_client=True) as client:
                dep = next((d for d in client.read_deployments() if d.parameters == {"project": str(project)}), None)
            time.sleep(0.5)
        assert dep is not None, "the deployment was not registered within 120 s"
        # the rule, as recorded in Prefect: one run at a time, a colliding run is cancelled (skipped)
        assert dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        assert [s.schedule.cron for s in dep.schedules] == ["* * * * *"]

        # three runs due at once (besides the cron's own): never two active together
        with get_client(sync_client=True) as client:
            for _ in range(3):
                client.create_flow_run_from_deployment(dep.id)
        most_active, running_seen, deadline = 0, False, time.monotonic() + 90
        while time.monotonic() < deadline:
            states = [r.state.type for r in _runs(dep.id)]
            most_active = max(most_active, sum(s in ACTIVE for s in states))
            running_seen = running_seen or StateType.RUNNING in states
            if running_seen and sum(s == StateType.CANCELLED for s in states) >= 2:
                break
            time.sleep(0.25)
        assert running_seen and most_active == 1, [(r.name, r.state.type, r.state.message) for r in _runs(dep.id)]
        skipped = [r for r in _runs(dep.id) if r.state.type == StateType.CANCELLED]
        assert len(skipped) >= 2 and all("concurrency limit" in r.state.message for r in skipped)

        # SIGTERM while a run is in flight: the process exits within seconds, the run is recorded as Cancelled
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=45)
        stopped_after = time.monotonic() - t0
        assert stopped_after < 45 and proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
        states = {r.state.type for r in _runs(dep.id)}
        assert StateType.RUNNING not in states and StateType.PENDING not in states, states
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

    # the runs' own record: no run started before the one before it ended
    events = [line.split() for line in (project / "runs.log").read_text().splitlines()]
    starts = [float(t) for kind, t in events if kind == "start"]
    ends = [float(t) for kind, t in events if kind == "end"]
    assert starts and all(b > a for a, b in zip(ends, starts[1:])), events
