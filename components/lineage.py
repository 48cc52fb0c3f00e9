"""Lineage facts recorded in every manifest: the data version (from ``data.dvc``) and the code revision."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


def data_version(root: Path) -> str | None:
    """The md5 of ``data/`` recorded in ``data.dvc`` (None when the project has none)."""
    dvc_file = root / "data.dvc"
    if not dvc_file.is_file():
        return None
    try:
        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []
    except yaml.YAMLError:
        log.warning("%s: not valid YAML; data version left empty", dvc_file)
        return None
    return next((o.get("md5") for o in outs if o.get("md5")), None)


def code_revision(root: Path) -> str | None:
    """``git rev-parse HEAD`` of the project, with ``-dirty`` when tracked files have changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")
