"""``FlowConfig`` (params.yaml section ``flow``): how the retraining flow (``flows/``) runs its steps.

A plain dataclass (no Prefect here), so the whole params file validates without the orchestrator. No DVC stage
reads this section, so changing it never invalidates a trained model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from components.config import load_section
from components.config.policy import Algorithm

GPU_POOL_ENV = "RLHF_GPU_POOL"
SERVICE_URL_ENV = "RLHF_SERVICE_URL"
PPO_PROCESSES_ENV = "RLHF_PPO_PROCESSES"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def valid_deployment_name(name: str) -> bool:
    """Whether ``name`` is a deployment name this project uses (a subset of what Prefect accepts: no ``/``)."""
    return _NAME.fullmatch(name) is not None


def retrain_deployment_name(project: Path, configured: str | None = None) -> str:
    """The ``retrain`` deployment's name for ``project``: ``configured`` when set, else the project folder's
    name with characters outside ``[A-Za-z0-9._-]`` replaced by ``-``."""
    if configured:
        return configured
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(project).resolve().name).strip("-._")
    return name or "project"


POLICY_CANDIDATE = "policy"
"""The name of the candidate the ``policy`` section itself describes (the ``ppo`` DVC stage trains it)."""
_NAME_OK = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")


@dataclass(frozen=True)
class CandidateRecipe:
    """One extra candidate of a retraining round's tournament: the ``policy`` section with some keys changed."""

    name: str
    """Short name (lowercase letters, digits, ``.``, ``-``, ``_``): its folder ``models/candidates/<name>/`` and
    its row in the round's table. ``policy`` is taken by the ``policy`` section's own candidate."""
    algorithm: Algorithm | None = None
    """``policy.algorithm`` for this candidate; null keeps the ``policy`` section's."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``policy`` keys to change, dotted from the section name: ``{"policy.learning_rate": 1e-4,
    "policy.rloo.k": 2}``; every other key is the ``policy`` section's."""

    def __post_init__(self) -> None:
        if not _NAME_OK.match(self.name) or self.name == POLICY_CANDIDATE:
            raise ValueError(
                f"candidate name {self.name!r}: use 1-48 lowercase letters, digits, '.', '-' and '_' (not "
                f"{POLICY_CANDIDATE!r}, the policy section's own candidate)"
            )
        for key in self.overrides:
            if not key.startswith("policy.") or key in ("policy.output_dir", "policy.checkpoint_dir"):
                raise ValueError(
                    f"candidate {self.name}: override {key!r} must name a policy key (policy.KEY or policy.SECTION.KEY;"
                    " its folders are models/candidates/<name>/)"
                )


@dataclass(frozen=True)
class FlowConfig:
    """Retries, GPU work-pool routing and the service to notify, for the ``retrain`` flow."""

    gpu_pool: str | None = None
    """Work pool that runs the reward-model and PPO steps as their own deployment (e.g. ``gpu``); null runs
    them in the flow's own process. ``$RLHF_GPU_POOL`` overrides it (an empty value means in-process)."""
    train_deployment: str = "gpu"
    """Name of the training deployment on ``gpu_pool`` (its full name is ``rlhf-train/<name>``)."""
    ppo_processes: int = 1
    """PPO processes where training runs: more than 1 runs the ``ppo`` stage's command under
    ``accelerate launch --multi_gpu --num_processes N`` (one per GPU; data-parallel, a seed per process) and
    records it with ``dvc commit ppo``. ``$RLHF_PPO_PROCESSES`` (set on the GPU worker) overrides it."""
    train_timeout_s: float = 6 * 3600.0
    """How long the flow waits for a training run on the work pool before failing."""
    retries: int = 1
    """Retries of a step that can fail for passing reasons (DVC or registry I/O, training, the service call).
    A failing gate is a decision, never retried."""
    retry_delay_s: float = 5.0
    """Seconds between retries."""
    deployment: str | None = None
    """Name of the scheduled ``retrain`` deployment (its full name is ``retrain/<name>``); null names it after
    the project folder. Each project has its own deployment, so projects sharing one Prefect server never
    overwrite each other's schedule, and the one-run-at-a-time limit holds per project. ``rlhf deploy --name``
    overrides it."""
    service_url: str | None = None
    """Base URL of the running service to tell about a new champion (``$RLHF_SERVICE_URL`` overrides); the
    service also polls the registry, so a missed call only delays the switch."""
    candidates: tuple[CandidateRecipe, ...] = ()
    """Extra candidates the round trains beside the ``policy`` section's own (docs/tournaments.md), each
    ``{name, algorithm, overrides: {policy.KEY: VALUE}}``; every candidate is evaluated against the champion with
    the same judge, prompts and seeds, and at most one is promoted: the best that passes the gate with its win
    rate test Holm-Bonferroni corrected for the number of candidates. Empty: the ``policy`` section alone."""

    def __post_init__(self) -> None:
        if self.ppo_processes < 1:
            raise ValueError(f"ppo_processes must be >= 1, got {self.ppo_processes}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.deployment is not None and not valid_deployment_name(self.deployment):
            raise ValueError(
                f"deployment {self.deployment!r} is not a Prefect deployment name: use letters, digits, '.', '_' "
                "and '-' (or null to name it after the project folder)"
            )
        if self.train_timeout_s <= 0:
            raise ValueError(f"train_timeout_s must be > 0, got {self.train_timeout_s}")
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidates: names must be unique, got {names}")


def load_flow_config(params: Path, env: dict[str, str] | None = None) -> FlowConfig:
    """The ``flow`` section of ``params``, with ``$RLHF_GPU_POOL``, ``$RLHF_PPO_PROCESSES`` and
    ``$RLHF_SERVICE_URL`` applied on top."""
    env = os.environ if env is None else env
    cfg = load_section(FlowConfig, "flow", Path(params))
    if GPU_POOL_ENV in env:
        cfg = replace(cfg, gpu_pool=env[GPU_POOL_ENV].strip() or None)
    if env.get(PPO_PROCESSES_ENV):
        cfg = replace(cfg, ppo_processes=int(env[PPO_PROCESSES_ENV]))
    if env.get(SERVICE_URL_ENV):
        cfg = replace(cfg, service_url=env[SERVICE_URL_ENV])
    return cfg
