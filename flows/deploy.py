"""Deployments of the ``retrain`` flow (and of the training flow on a GPU work pool), and the Prefect server
they need.

Prefect's ephemeral local API runs flows but has no scheduler, so a cron schedule needs a server
(``prefect server start``) named by ``PREFECT_API_URL``. On one machine ``serve_schedule`` runs the schedule in
this process (no worker needed); with workers, ``register_on_pool`` registers a work-pool deployment that a
``prefect worker start --pool NAME`` process picks up. Work-pool deployments name their flow by module path
(``flows.retrain.retrain``), so a worker needs this package installed, not a copy of the source tree.

One deployment per project: the ``retrain`` deployment is named after the project folder (``flow.deployment``
or ``rlhf deploy --name`` to choose another, :func:`~components.config.flow.retrain_deployment_name`), so two
projects on one Prefect server each keep their own schedule; registering a name another project's deployment
already has is refused rather than overwriting it.

One run at a time: every ``retrain`` deployment carries a deployment concurrency limit of 1 with the collision
strategy ``CANCEL_NEW`` (:data:`ONE_RUN_AT_A_TIME`): a run that comes due while another run of the deployment
(one project) is still running is skipped -- Prefect records it as Cancelled ("Deployment concurrency limit
reached.") -- and the next scheduled run after the running one ends takes whatever feedback arrived meanwhile.

Stopping: ``serve_schedule`` stops on SIGINT or SIGTERM within seconds; a run in flight is cancelled (its
process is terminated and Prefect records the run as Cancelled), so nothing keeps training after the deployment
is gone. A killed PPO stage continues from its last checkpoint the next time the flow runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType
from prefect.runner import Runner

from components.config.flow import retrain_deployment_name

DEFAULT_SERVER = "http://127.0.0.1:4200/api"
ONE_RUN_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
"""The deployment's rule: at most one run at a time; a run due while one runs is cancelled (skipped), not queued."""


def api_url() -> str | None:
    """The configured Prefect API (``PREFECT_API_URL`` or the active Prefect profile), if any."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def server_healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def start_local_server(port: int = 4200, log_file: Path | None = None, wait_s: float = 120.0) -> tuple[str, int]:
    """Start ``prefect server start`` in the background (its own session, outliving this process).

    Returns the API URL and the server's process id (stop it with ``kill -INT PID``).
    """
    url = f"http://127.0.0.1:{port}/api"
    if server_healthy(url):
        return url, 0
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if server_healthy(url):
            return url, proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"`prefect server start` exited with {proc.returncode}; see {log_file or 'its output'}")
        time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"`prefect server start` was not healthy at {url} after {wait_s:.0f} s")


@dataclass(frozen=True)
class Registered:
    name: str
    pool: str | None
    workers: int
    """Workers polling the pool right now (0: nothing will run until one starts)."""


def _workers(pool: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return len(client.read_workers_for_work_pool(pool))


def ensure_pool(pool: str, kind: str = "process") -> None:
    """Create the work pool if it does not exist (``prefect work-pool create NAME --type process``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type=kind))


class DeploymentTaken(RuntimeError):
    """A deployment of that name already runs another project."""


def refuse_other_project(flow_name: str, name: str, project: Path) -> None:
    """Raise :class:`DeploymentTaken` when ``<flow_name>/<name>`` exists for a project other than ``project``
    (re-registering one's own deployment, e.g. with a new cron, is fine)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(f"{flow_name}/{name}")
        except ObjectNotFound:
            return
    _check_owner((existing.parameters or {}).get("project"), flow_name, name, project)


async def _arefuse_other_project(flow_name: str, name: str, project: Path) -> None:
    """:func:`refuse_other_project` inside an event loop (the served schedule's), with the async client."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            existing = await client.read_deployment_by_name(f"{flow_name}/{name}")
        except ObjectNotFound:
            return
    _check_owner((existing.parameters or {}).get("project"), flow_name, name, project)


def _check_owner(other: str | None, flow_name: str, name: str, project: Path) -> None:
    if other is not None and other != str(project):
        raise DeploymentTaken(
            f"deployment {flow_name}/{name} already schedules project {other}; registering it for {project} would "
            f"replace that project's schedule. Choose another name: rlhf deploy --name NAME, or flow.deployment in "
            f"{project / 'params.yaml'}"
        )


def register_on_pool(project: Path, cron: str, pool: str, name: str | None = None) -> Registered:
    """Register ``retrain/<name>`` (default: named after the project folder) on ``pool`` with ``cron``; a worker
    on that pool runs it. Refuses a name another project's deployment has (:class:`DeploymentTaken`)."""
    from flows.retrain import retrain

    name = retrain_deployment_name(project, name)
    refuse_other_project(retrain.name, name, project)
    ensure_pool(pool)
    retrain.to_deployment(
        name,
        cron=cron,
        work_pool_name=pool,
        parameters={"project": str(project)},
        concurrency_limit=ONE_RUN_AT_A_TIME,
        entrypoint_type=EntrypointType.MODULE_PATH,
    ).apply()
    return Registered(f"{retrain.name}/{name}", pool, _workers(pool))


def register_training(pool: str, deployment: str) -> Registered:
    """Register ``rlhf-train/<deployment>`` (reward model + PPO) on the GPU pool, for ``run_deployment``."""
    from flows.retrain import train_models

    ensure_pool(pool)
    train_models.to_deployment(deployment, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH).apply()
    return Registered(f"rlhf-train/{deployment}", pool, _workers(pool))


def serve_schedule(project: Path, cron: str, flow: Flow | None = None, name: str | None = None) -> None:
    """Run the schedule of deployment ``<flow>/<name>`` (default: named after the project folder) in this process
    (one machine, no worker) under :data:`ONE_RUN_AT_A_TIME`; blocks until SIGINT or SIGTERM, then cancels a run
    in flight and returns. ``flow`` defaults to ``retrain``. Refuses a name another project's deployment has.

    The stop signals are handled from the first line on: a signal that arrives while the deployment is still being
    registered stops the runner as soon as it has started (it pauses the schedule on the way out)."""
    from flows.retrain import retrain

    flow = flow or retrain
    name = retrain_deployment_name(project, name)
    runner = _Runner(name=name, pause_on_shutdown=True)
    previous = {sig: signal.signal(sig, runner.handle_sigterm) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def register_and_run() -> None:
        await _arefuse_other_project(flow.name, name, project)  # before anything is written
        await runner.aadd_flow(
            flow,
            name=name,
            cron=cron,
            parameters={"project": str(project)},
            concurrency_limit=ONE_RUN_AT_A_TIME,
        )
        await runner.start()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(register_and_run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Runner(Runner):
    """Prefect's runner, stopping promptly on SIGTERM and SIGINT: it cancels the runs in flight (Prefect records
    them as Cancelled), pauses the schedule and returns. Prefect's own SIGTERM handler did not stop the process
    promptly, and its Ctrl-C path waits for the runs in flight to finish. A signal that comes before the runner
    has started (while the deployment is registered) is kept and acted on once it has."""

    _stop_requested = False

    async def start(self, run_once: bool = False, webserver: bool | None = None) -> None:
        self._loop_of_stop = asyncio.get_running_loop()
        self._stop_signal = asyncio.Event()
        if self._stop_requested:
            self._stop_signal.set()
        signal.signal(signal.SIGINT, self.handle_sigterm)
        stopper = asyncio.create_task(self._stop_when_signalled())
        try:
            await super().start(run_once=run_once, webserver=webserver)  # installs handle_sigterm for SIGTERM
        finally:
            stopper.cancel()

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        self._stop_requested = True
        event = getattr(self, "_stop_signal", None)
        if event is not None:  # threadsafe: writes to the loop's self-pipe, so a loop waiting in select wakes now
            self._loop_of_stop.call_soon_threadsafe(event.set)

    async def _stop_when_signalled(self) -> None:
        await self._stop_signal.wait()
        while not self.started and not self.stopping:  # the signal came while the runner was starting
            await asyncio.sleep(0.1)
        if not self.stopping:
            self._logger.info("stop signal received: cancelling the runs in flight, then stopping")
            await self.astop()
