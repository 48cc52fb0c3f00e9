"""Evaluate the candidate against the champion, gate it, promote or reject it, tell the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.paths import ProjectPaths
from flows.config import FlowConfig


def decide_and_publish(paths: ProjectPaths, params: Path, cfg: FlowConfig, summary: Any, opts: dict[str, Any]) -> None:
    try:
        import components.registry
        import components.stages  # noqa: F401
    except ImportError:
        summary.decision = "not reached"
        summary.gate = {"note": "evaluation, gate and registry are not in this checkout"}
        return
    raise NotImplementedError
