"""The one way this package runs DVC in a project: every DVC command under one file lock per repository.

DVC releases its own repository lock while a stage's command runs and fails a second command that touches the
same files at once (``LockError``, even with ``--wait-for-lock``), so every caller here (the feedback store's
``dvc add`` / ``push`` / ``checkout``, the stages run from a flow, ``dvc status``) takes the file lock
``.dvc/tmp/rlhf-dvc.lock`` first. A file lock holds across processes on one machine (a flow run, a work-pool
worker and a CLI command in the same checkout), which is where a checkout's DVC state lives. The lock is
re-entrant within a thread, so a stage run under it may version data through the store. Taking it first writes
each stage's code fingerprint (:func:`components.records.code_fingerprint.write_code_fingerprint`), so every DVC command
sees the code as it is.

A DVC stage runs in one of two ways, both recorded in ``dvc.lock`` exactly as ``dvc repro STAGE`` would:
- :func:`run_stage`: when ``dvc status STAGE`` says it changed, call the stage function in this process (the
  same function the stage's ``cmd:`` calls), then ``dvc commit STAGE``; when it is up to date, load the result
  its last run left. The caller gets the stage's result either way.
- :func:`run_command`: the same with another command doing the work (``accelerate launch`` over several
  processes), whose output is echoed line by line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

from components.records.code_fingerprint import write_code_fingerprint

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCK_TIMEOUT_S = 6 * 3600.0
"""How long a DVC command waits for another run's lock before failing (a long training stage holds it)."""


class DvcError(RuntimeError):
    """A DVC command or a stage run under DVC failed; the message names the command, the project and the cause."""


def lock_file(root: Path) -> Path:
    return Path(root) / ".dvc" / "tmp" / "rlhf-dvc.lock"


_locks: dict[str, FileLock] = {}
_locks_guard = threading.Lock()


def _lock(root: Path) -> FileLock:
    """One ``FileLock`` object per lock file in this process, so a thread holding it may take it again."""
    path = lock_file(root)
    with _locks_guard:
        if str(path) not in _locks:
            path.parent.mkdir(parents=True, exist_ok=True)
            _locks[str(path)] = FileLock(str(path), thread_local=True)
        return _locks[str(path)]


@contextlib.contextmanager
def repo_lock(root: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[float]:
    """Hold the repository's DVC lock; yields the seconds spent waiting for it."""
    lock = _lock(root)
    t0 = time.perf_counter()
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout as exc:
        raise DvcError(
            f"waited {timeout_s:.0f} s for the DVC lock {lock_file(root)}: another run in this project holds it"
        ) from exc
    waited = time.perf_counter() - t0
    if waited > 1:
        log.info("waited %.1f s for the DVC lock of %s", waited, root)
    try:
        if lock.lock_counter == 1:  # the outermost hold: each stage's code, as DVC sees it (code_fingerprint.py)
            write_code_fingerprint(root)
        yield waited
    finally:
        lock.release()


def env() -> dict[str, str]:
    """The environment for DVC and stage commands: ``python`` on PATH is this interpreter (stage commands run
    ``python -m ...``), output unbuffered, no Hugging Face progress bars in a log that is no terminal."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def dvc(root: Path, *args: str) -> str:
    """Run ``dvc ARGS`` in ``root`` under the lock; return its stdout, or raise :class:`DvcError`."""
    with repo_lock(root):
        done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env(), capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root}: {' '.join(detail[-3:])}")
    return done.stdout


def changed(root: Path, stage: str) -> bool:
    """Whether ``dvc status STAGE`` reports anything (changed deps, params, outputs, or never run).

    Asked of DVC's Python API in this process (the flow asks before every stage; a ``dvc`` child process spends
    most of its time starting). The stage is named ``ROOT/dvc.yaml:STAGE``: DVC resolves a bare stage name against
    the working directory, which this process does not change."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with repo_lock(root):
        try:
            with Repo(str(root)) as repo:
                return bool(repo.status(targets=[f"{Path(root).resolve() / 'dvc.yaml'}:{stage}"]))
        except DvcException as exc:
            raise DvcError(f"`dvc status {stage}` failed in {root}: {exc}") from exc


def default_remote(root: Path) -> str | None:
    """The default remote's name, as ``dvc remote default`` in ``root`` prints it (every config level merged:
    system, global, the project's ``.dvc/config`` and ``config.local``), read in this process; None when unset."""
    from dvc.config import Config
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    with repo_lock(root):
        try:
            try:
                dvc_dir = Repo.find_dvc_dir(str(root))
            except NotDvcRepoError:
                dvc_dir = None
            return Config(dvc_dir=dvc_dir, validate=False).read(None)["core"].get("remote") or None
        except DvcException as exc:
            raise DvcError(f"`dvc remote default` failed in {root}: {exc}") from exc


def run_stage(root: Path, stage: str, *, run: Callable[[], T], last: Callable[[], T]) -> tuple[bool, T]:
    """Run DVC stage ``stage`` with ``run`` (the stage function) when it changed, then ``dvc commit`` it;
    otherwise return ``last()``, the result its last run left. Returns (whether it ran, the result).

    A failing stage leaves ``dvc.lock`` as it was, so the next run tries again."""
    with repo_lock(root):
        if not changed(root, stage):
            log.info("%s: up to date (deps, params and code match dvc.lock), skipped", stage)
            return False, last()
        log.info("%s: changed, running", stage)
        try:
            result = run()
        except Exception as exc:
            raise DvcError(f"DVC stage {stage!r} failed in {root}: {exc}") from exc
        dvc(root, "commit", "--force", stage)
    return True, result


def run_command(
    root: Path, stage: str, cmd: list[str], *, last: Callable[[], T], echo: Callable[[str], None] | None = None
) -> tuple[bool, T]:
    """:func:`run_stage` with ``cmd`` (a subprocess in ``root``) doing the stage's work, its output echoed
    line by line to ``echo`` (default: this module's logger)."""

    def work() -> T:
        code, lines = _stream(cmd, root, stage, echo or log.info)
        if code != 0:
            raise DvcError(f"`{' '.join(cmd[:6])} ...` exited {code}: {' | '.join(lines[-6:])}")
        return last()

    return run_stage(root, stage, run=work, last=last)


def _stream(cmd: list[str], root: Path, tag: str, echo: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run ``cmd`` in ``root``, echoing its output line by line; return its exit code and every line."""
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=root, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if line := raw.rstrip():
                lines.append(line)
                echo(f"[{tag}] {line}")
    return proc.returncode, lines
