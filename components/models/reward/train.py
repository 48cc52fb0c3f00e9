"""The reward-model stage: :func:`train_reward_model` (exported by :mod:`components.stages`), and the
``train_reward`` DVC stage's command that calls it: ``python -m components.models.reward.train --params params.yaml``.

Reads the ``reward`` section of the params file and trains on ``data/feedback/pairs.parquet`` of the
project holding that params file, writing ``models/reward`` and ``metrics/reward*``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.common.progress import Progress, log_progress
from components.config import ConfigError, load_section
from components.config.reward import RewardConfig
from components.models.reward.pairs import PairsError
from components.project.paths import ProjectPaths

if TYPE_CHECKING:
    from components.models.reward.trainer import WarmStart

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardStageResult:
    """What the reward-model stage produced (JSON-serialisable)."""

    version: str
    """The reward model's version id (``rm-...``), recorded in its manifest and in every policy trained on it."""
    path: str
    """``models/reward``: transformers folder + manifest.json (the DVC output)."""
    manifest_path: str
    metrics_path: str
    accuracy: float | None
    """Held-out preference accuracy against the feedback's labels (None without held-out pairs)."""
    heldout_pairs: int
    train_pairs: int
    data_version: str | None
    """The data version (DVC hash of ``data/``) it was trained on."""
    seconds: float
    parent: str | None = None
    """The reward model it was trained on from (``reward.init_from: champion``); None: from the backbone."""


def warm_start(cfg: RewardConfig, paths: ProjectPaths) -> WarmStart | None:
    """The reward model ``reward.init_from: champion`` starts from: the one the champion policy (as
    ``registry/ppo_parent.json`` names it, else the registry's) was trained with, when it is registered, in the
    store and on the same backbone; None (train from the backbone) otherwise, with the reason logged."""
    from components.models.reward.trainer import WarmStart
    from components.records import registry  # the reading side imports no BentoML

    if cfg.init_from != "champion":
        return None
    champion = registry.ppo_parent(paths)
    if champion is None or champion.startswith("base-"):
        log.info("reward model: the champion is the base model; training from the backbone")
        return None
    try:
        rm_version = registry.get(paths, champion).facts.get("reward_version")
        rm = registry.get(paths, rm_version) if rm_version else None
    except registry.RegistryError as exc:
        log.warning("reward model: %s; training from the backbone", exc)
        return None
    if rm is None or not (rm.path / "config.json").is_file():
        log.warning("reward model: the champion %s names no reward model in the store; training from the backbone",
                    champion)  # fmt: skip
        return None
    backbone = rm.facts.get("backbone") or (rm.facts.get("params") or {}).get("backbone")
    if backbone != cfg.backbone:
        log.info("reward model: the champion's (%s) has backbone %s, not reward.backbone %s; training from the "
                 "backbone", rm.version, backbone, cfg.backbone)  # fmt: skip
        return None
    return WarmStart(rm.version, rm.path, champion)


def train_reward_model(
    cfg: RewardConfig,
    paths: ProjectPaths,
    *,
    data_version: str | None = None,
    progress: Progress | None = None,
) -> RewardStageResult:
    """The reward-model stage: train on the stored pairs, write ``models/reward`` (replaced atomically).

    ``data_version`` is the version the caller expects to train on; a different checked-out version is an error
    (the flow passes the version its ingest produced).
    """
    from components.models.reward.trainer import train_reward
    from components.records.lineage import data_version as current_version

    if data_version is not None and current_version(paths.root) != data_version:
        raise PairsError(
            f"data version {current_version(paths.root)} is checked out, not {data_version}: "
            "run `dvc checkout data.dvc` for the version to train on"
        )
    t0 = time.perf_counter()
    result = train_reward(
        paths.pairs,
        cfg,
        paths.reward_model,
        paths.metrics,
        project_root=paths.root,
        progress=progress,
        disk_cache=paths.reward_features,
        init=warm_start(cfg, paths),
    )
    ev, tr = result.metrics["eval"], result.metrics["train"]
    return RewardStageResult(
        version=result.manifest["version"],
        path=str(result.model_dir),
        manifest_path=str(result.model_dir / "manifest.json"),
        metrics_path=str(paths.metrics / "reward.json"),
        accuracy=ev.get("accuracy"),
        heldout_pairs=int(ev.get("pairs", 0)),
        train_pairs=int(tr["pairs"]),
        data_version=result.manifest["data"]["data_version"],
        seconds=round(time.perf_counter() - t0, 1),
        parent=(result.manifest.get("parent") or {}).get("version"),
    )


def reward_result(paths: ProjectPaths) -> RewardStageResult:
    """The result of the last run of the stage: the reward model in ``models/reward`` (from its manifest); what
    a flow reports when the stage was up to date and did not run."""
    manifest_path = paths.reward_model / "manifest.json"
    if not manifest_path.is_file():
        raise PairsError(f"{paths.reward_model}: no reward model; run the train_reward stage first")
    m = json.loads(manifest_path.read_text(encoding="utf-8"))
    ev, tr = m["metrics"]["eval"], m["metrics"]["train"]
    return RewardStageResult(
        version=m.get("version") or "unversioned",
        path=str(paths.reward_model),
        manifest_path=str(manifest_path),
        metrics_path=str(paths.metrics / "reward.json"),
        accuracy=ev.get("accuracy"),
        heldout_pairs=int(ev.get("pairs", 0)),
        train_pairs=int(tr["pairs"]),
        data_version=m["data"]["data_version"],
        seconds=0.0,
        parent=(m.get("parent") or {}).get("version"),
    )


def main(argv: list[str] | None = None) -> int:
    """The ``train_reward`` DVC stage's command: :func:`train_reward_model` on the params file's project."""
    parser = argparse.ArgumentParser(prog="python -m components.models.reward.train", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (section reward)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths(args.params.resolve().parent)
    progress = log_progress(logging.getLogger("components.models.reward"), "reward step")
    try:
        result = train_reward_model(load_section(RewardConfig, "reward", args.params), paths, progress=progress)
    except (ConfigError, PairsError) as exc:
        print(f"train_reward: {exc}", file=sys.stderr)
        return 2
    acc = "n/a" if result.accuracy is None else f"{result.accuracy:.3f}"
    logging.getLogger(__name__).info(
        "reward model %s saved to %s; held-out accuracy %s", result.version, result.path, acc
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
