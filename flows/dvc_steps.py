"""DVC stages run from the flow: one DVC command at a time per repository, and a clear error when a stage fails.

DVC releases its own repository lock while a stage's command runs and fails a second ``repro`` that touches the
same files at once (``LockError``), so the flow serialises every DVC command on a repository with a file lock
under ``.dvc/tmp``. A file lock holds across processes on one machine (a flow run, a work-pool worker and a CLI
command in the same checkout), which is where a checkout's DVC state lives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from components.code_fingerprint import write_code_fingerprint

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A DVC stage's command failed (the message names the stage, the cause and how to rerun it)."""


def lock_file(root: Path) -> Path:
    return Path(root) / ".dvc" / "tmp" / "rlhf-dvc.lock"


@contextlib.contextmanager
def repo_lock(root: Path, timeout_s: float = 6 * 3600.0) -> Iterator[float]:
    """Hold the repository's DVC lock, with the stages' code fingerprints written; yields the seconds spent waiting."""
    path = lock_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    t0 = time.perf_counter()
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout as exc:
        raise StageFailed(f"waited {timeout_s:.0f} s for the DVC lock {path}; another run holds it") from exc
    try:
        write_code_fingerprint(root)  # each stage's code, as DVC sees it (components/code_fingerprint.py)
        yield time.perf_counter() - t0
    finally:
        lock.release()


RUNNING = re.compile(r"^Running stage '([^']+)'")


def _env() -> dict[str, str]:
    """Stage commands run ``python`` from PATH: make it this interpreter. DVC hands its own stdout/stderr (our
    pipe) to the stage command; unbuffered, each of the command's lines arrives when it is written. The stages
    log a line per step; the Hugging Face progress bars (weight loading) are off in a log that is no terminal."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def repro(root: Path, stage: str, echo: Callable[[str], None] | None = None) -> list[str]:
    """``dvc repro STAGE`` (and what it depends on) under the repository lock; returns the stages that ran.

    ``[]`` means every stage was up to date: its deps, params and code match ``dvc.lock``. The stage's output
    goes line by line to ``echo`` (default: this module's logger), so long training shows progress.
    """
    echo = echo or log.info
    with repo_lock(root) as waited:
        if waited > 1:
            log.info("waited %.1f s for the DVC lock of %s", waited, root)
        code, lines = _stream([sys.executable, "-m", "dvc", "repro", stage], root, f"dvc {stage}", echo)
    if code != 0:
        raise StageFailed(
            f"DVC stage {stage!r} failed in {root} (exit {code}): {' | '.join(lines[-6:])}. Fix the cause and "
            f"rerun `dvc repro {stage}` there (or the flow)."
        )
    ran = [m.group(1) for line in lines if (m := RUNNING.match(line))]
    log.info("dvc repro %s: %s", stage, f"ran {', '.join(ran)}" if ran else "up to date, skipped")
    return ran


def _stream(cmd: list[str], root: Path, tag: str, echo: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run ``cmd`` in ``root``, echoing its output line by line; return its exit code and every line."""
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if line := raw.rstrip():
                lines.append(line)
                echo(f"[{tag}] {line}")
    return proc.returncode, lines


def launch_ppo_command(processes: int) -> list[str]:
    """The ``ppo`` stage's work on ``processes`` devices: ``accelerate launch --multi_gpu`` (torchrun underneath;
    without GPUs the processes use the CPU and gloo)."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [
        accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--dynamo_backend", "no", "-m", "components.ppo.train", "--params", "params.yaml",
    ]  # fmt: skip


def run_and_commit(root: Path, stage: str, cmd: list[str], echo: Callable[[str], None] | None = None) -> list[str]:
    """Run a stage's work with another command (e.g. ``accelerate launch``) when ``dvc status`` says the stage
    changed, then ``dvc commit`` it so ``dvc.lock`` records its deps, params and outputs as ``dvc repro`` would.
    Returns ``[stage]`` when it ran, ``[]`` when the stage was up to date."""
    echo = echo or log.info
    dvc = [sys.executable, "-m", "dvc"]
    with repo_lock(root):
        code, lines = _stream([*dvc, "status", stage, "--json"], root, f"dvc status {stage}", lambda _line: None)
        if code != 0:
            raise StageFailed(f"`dvc status {stage}` failed in {root}: {' | '.join(lines[-6:])}")
        if not json.loads("\n".join(lines) or "{}"):
            log.info("%s: up to date, skipped", stage)
            return []
        code, lines = _stream(cmd, root, stage, echo)
        if code != 0:
            raise StageFailed(
                f"stage {stage!r} failed in {root} (exit {code}) under `{' '.join(cmd[:6])} ...`: "
                f"{' | '.join(lines[-6:])}"
            )
        code, lines = _stream([*dvc, "commit", "--force", stage], root, f"dvc commit {stage}", echo)
        if code != 0:
            raise StageFailed(f"`dvc commit {stage}` failed in {root}: {' | '.join(lines[-6:])}")
    return [stage]


def status(root: Path) -> dict:
    """``dvc status --json`` of the pipeline (empty when everything is up to date)."""
    with repo_lock(root):
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--json"], cwd=root, env=_env(), capture_output=True, text=True
        )
    if done.returncode != 0:
        raise StageFailed(f"`dvc status` failed in {root}: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout or "{}")
