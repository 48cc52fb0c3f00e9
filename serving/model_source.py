"""Which model the service serves: the one place that decides it.

The registry's champion when the project has a registry and a champion; otherwise the base model named
by ``model.base`` in ``params.yaml``. The service polls :func:`resolve` and reloads when the answer's
``version`` changes.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from components.config import load_section
from components.config.model import ModelConfig
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    version: str
    """What every response reports as ``model_version``."""
    spec: str
    """What :func:`components.models.base_model.load_base` loads: a model folder, ``tiny`` or a base spec."""
    origin: str
    """``registry`` or ``base``."""


def _champion(paths: ProjectPaths) -> ModelSource | None:
    try:
        registry = importlib.import_module("components.records.registry")
    except ModuleNotFoundError as exc:
        if exc.name != "components.records.registry":
            raise
        return None
    record = registry.champion(paths)
    if record is None:
        return None
    return ModelSource(str(record.version), str(record.path), "registry")


def _base_version(spec: str) -> str:
    path = Path(spec).expanduser()
    return f"base:{path.resolve().name}" if path.is_dir() else f"base:{spec}"


def resolve(paths: ProjectPaths) -> ModelSource:
    """The champion if there is one, else the base model of ``params.yaml``."""
    found = _champion(paths)
    if found is not None:
        return found
    cfg = load_section(ModelConfig, "model", paths.params)
    spec = cfg.base
    if not Path(spec).is_absolute() and (paths.root / spec).is_dir():
        spec = str(paths.root / spec)
    return ModelSource(_base_version(spec), spec, "base")


def resolve_version(paths: ProjectPaths, version: str) -> ModelSource:
    """A registered version by name (the canary); ``RegistryError`` naming the known ones if unknown."""
    from components.records import registry

    record = registry.get(paths, version)
    return ModelSource(str(record.version), str(record.path), "registry")
