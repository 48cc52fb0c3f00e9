"""The service as a child process: ``bentoml serve serving.service:RLHFService`` on a loopback port with a fresh
API token, started and stopped by whoever needs a running service for a while (the demo flow).

Nothing here imports BentoML: the service runs in its own process (its own session, so it can be stopped as a
group), reading the project's registry and writing served outputs and feedback to the project's store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from components.config.serve import load_serve_config
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceProcess:
    """A running service (JSON-serialisable, so it can be handed from one flow task to another)."""

    url: str
    token: str
    """The service's own API token (``RLHF_API_TOKEN``: the operator's, opens every route)."""
    pid: int
    """The ``bentoml serve`` process; also its process group."""
    log: str
    """Its output."""
    rater_tokens: tuple[str, ...] = ()
    """Rater tokens for simulated users (raters ``simulated-user-1`` .. ``-N``, :func:`simulated_rater_tokens`),
    made when the service starts: one per concurrent simulated user, as each person rates with their own."""
    grace_s: int = 30
    """Seconds its requests in flight get after SIGTERM (``serve.shutdown_grace_s``)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(
    root: Path, params: Path, *, port: int | None = None, timeout_s: float = 180.0, simulated_raters: int = 1
) -> ServiceProcess:
    """Start the service for the project at ``root`` on ``port`` (default: a free one) and wait until ready, with
    ``simulated_raters`` fresh rater tokens for simulated users."""
    port = port or free_port()
    token = secrets.token_urlsafe(24)
    rater_tokens = tuple(simulated_rater_tokens(Path(root), simulated_raters))
    out_file = Path(root) / "live" / f"serve-{port}.log"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RLHF_PROJECT": str(root),
        "RLHF_PARAMS": str(params),
        "RLHF_API_TOKEN": token,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    grace_s = load_serve_config(ProjectPaths(Path(root)), Path(params)).shutdown_grace_s
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:RLHFService", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--timeout-graceful-shutdown", str(grace_s)]
    with out_file.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    service = ServiceProcess(f"http://127.0.0.1:{port}", token, proc.pid, str(out_file), rater_tokens, grace_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode} before it was ready; see {out_file}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                log.info("service ready at %s (pid %d, log %s)", service.url, proc.pid, out_file)
                return service
        time.sleep(0.5)
    stop_service(service)
    raise RuntimeError(f"bentoml serve was not ready after {timeout_s:.0f} s; see {out_file}")


SIMULATED_RATER = "simulated-user"
"""The name prefix of the demo's simulated users as raters: ``simulated-user-1``, ``simulated-user-2``, ..."""


def simulated_rater_tokens(root: Path, n: int) -> list[str]:
    """Fresh rater tokens for ``n`` simulated users (``simulated-user-1`` .. ``-n``) in the project's raters file;
    earlier simulated users' tokens are revoked. One token per simulated person, so each gets the per-rater rate
    limit (``serve.rate_limit_per_minute``) a real rater gets, and the report counts them as the people they
    stand for."""
    from components.data.raters import add_rater, load_raters, raters_file, revoke_rater
    from components.project.paths import ProjectPaths

    if n < 1:
        raise ValueError(f"simulated raters must be >= 1, got {n}")
    path = raters_file(ProjectPaths(root).live)
    for name in load_raters(path):
        if name.startswith(SIMULATED_RATER):  # also "simulated-users", the one shared rater of older demos
            revoke_rater(path, name)
    return [add_rater(path, f"{SIMULATED_RATER}-{i}") for i in range(1, n + 1)]


def served_version(url: str) -> str | None:
    """The model version the service at ``url`` answers with (None when it does not answer)."""
    try:
        data = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=5).json()["data"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return data[0]["id"] if data else None


def wait_for_version(url: str, version: str, timeout_s: float = 120.0) -> str:
    """Wait until the service at ``url`` answers with ``version`` (it polls the registry and reloads on its own);
    returns a line saying when it switched, or that it had not after ``timeout_s`` (a warning, not an error)."""
    t0 = time.monotonic()
    seen = None
    while time.monotonic() - t0 < timeout_s:
        seen = served_version(url)
        if seen == version:
            return f"{url} serves {version} ({time.monotonic() - t0:.1f} s after promotion)"
        time.sleep(1)
    log.warning("service at %s still serves %s after %.0f s (expected %s)", url, seen, timeout_s, version)
    return f"{url} still served {seen} after {timeout_s:.0f} s (expected {version}); it reloads on its next poll"


def stop_service(service: ServiceProcess, timeout_s: float | None = None) -> None:
    """SIGTERM the service's process group, SIGKILL it if it is still there after ``timeout_s`` (default: its
    grace period for requests in flight plus 10 s)."""
    timeout_s = service.grace_s + 10.0 if timeout_s is None else timeout_s
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(service.pid):
                log.info("service %s stopped", service.url)
                return
            time.sleep(0.2)
    log.warning("service %s (pid %d) did not stop", service.url, service.pid)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (reaping it when it is our child and has exited)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
