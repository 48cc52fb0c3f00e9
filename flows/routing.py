"""Where the heavy training steps (reward model, PPO) run: in the flow's process, or as their own deployment on
a GPU work pool, reached with ``run_deployment`` and awaited.

The decision is a pure function of :class:`components.config.flow.FlowConfig` (``params.yaml`` section ``flow`` plus
``$RLHF_GPU_POOL``), so it is tested without Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.config.flow import FlowConfig

TRAIN_FLOW_NAME = "rlhf-train"


@dataclass(frozen=True)
class Route:
    """Where training runs, and why."""

    where: Literal["in-process", "work-pool"]
    pool: str | None
    deployment: str | None
    """Full deployment name for ``run_deployment`` (``rlhf-train/<name>``), when on a work pool."""
    reason: str


def training_route(cfg: FlowConfig) -> Route:
    """In-process unless a GPU work pool is configured; then the ``rlhf-train/<train_deployment>`` deployment."""
    if not cfg.gpu_pool:
        return Route("in-process", None, None, "no GPU work pool configured (flow.gpu_pool / $RLHF_GPU_POOL)")
    name = f"{TRAIN_FLOW_NAME}/{cfg.train_deployment}"
    return Route("work-pool", cfg.gpu_pool, name, f"flow.gpu_pool = {cfg.gpu_pool!r}: run {name} on that pool")
