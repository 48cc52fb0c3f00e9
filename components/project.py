"""Create a fresh project checkout (git + DVC + params.yaml): for tests, examples and new deployments."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from components.paths import ProjectPaths

SOURCE_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed in {cwd}: {done.stderr.strip() or done.stdout.strip()}")


def init_project(root: Path, *, params: Path | None = None, remote: Path | None = None) -> ProjectPaths:
    """Make ``root`` a project: ``git init``, ``dvc init`` (analytics off), ``params.yaml``, a first commit.

    ``params`` defaults to this checkout's ``params.yaml``; ``remote``, if given, becomes the default DVC
    remote in ``.dvc/config.local`` (otherwise the store sets up ``$RLHF_DVC_REMOTE`` on first push).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _run(["git", "init", "-q"], root)
    _run(["git", "config", "user.email", "rlhf-loop@localhost"], root)
    _run(["git", "config", "user.name", "rlhf-loop"], root)
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "init", "-q"], root)
    _run([*dvc, "config", "core.analytics", "false"], root)
    if remote is not None:
        _run([*dvc, "remote", "add", "--local", "-d", "local", str(Path(remote).resolve())], root)
    source = params or SOURCE_PARAMS
    if source.is_file():
        shutil.copyfile(source, root / "params.yaml")
    else:
        (root / "params.yaml").write_text("{}\n", encoding="utf-8")
    (root / ".gitignore").write_text("/models/\n/reports/\n/staging/\n/registry/\n/live/\n", encoding="utf-8")
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-q", "-m", "init project"], root)
    return ProjectPaths(root)
