"""Start and stop a real `bentoml serve` subprocess on a temporary tiny-model project."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"


def register_candidate(project: Path, version: str = "policy-2") -> None:
    """The tiny base as champion and a differently seeded tiny model registered as candidate ``version`` (in a
    subprocess: BentoML reads ``BENTOML_HOME`` once, at import)."""
    from components.models.base_model import prepare_tiny

    base = prepare_tiny(project / "models" / "base-tiny", seed=0)
    new = prepare_tiny(project / "models" / version, seed=1)
    code = (
        "import sys; from pathlib import Path; from components.project.paths import ProjectPaths; "
        "from components.records.registry import ensure_base_champion, register; "
        "p = ProjectPaths(Path(sys.argv[1])); ensure_base_champion(p, 'tiny', Path(sys.argv[2])); "
        "register(p, sys.argv[4], Path(sys.argv[3]), parent='base-tiny')"
    )
    env = {**os.environ, "BENTOML_HOME": str(project / ".bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(project), str(base), str(new), version],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"registering {version} failed:\n{done.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(root: Path, **serve: object) -> Path:
    """A folder with the repo's params.yaml, switched to the tiny model (and ``serve`` overrides)."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["model"]["base"] = "tiny"
    params["serve"].update(serve)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return root


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    project: Path

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Signal the server and every process under it (BentoML's workers do not stay in its process group)."""
        import psutil

        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def start_server(
    project: Path, *, token: str | None = TOKEN, extra_env: dict | None = None, timeout: float = 90
) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "RLHF_PROJECT": str(project),
        "RLHF_HOME": str(project / ".home"),
        "BENTOML_HOME": str(project / ".bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    env.pop("RLHF_API_TOKEN", None)
    if token:
        env["RLHF_API_TOKEN"] = token
    log = project / f"serve-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:RLHFService",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log, project)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.kill(signal.SIGKILL)
    raise RuntimeError(f"bentoml serve not ready in {timeout} s:\n{log.read_text()[-3000:]}")
