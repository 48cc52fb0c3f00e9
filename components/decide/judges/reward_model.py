"""The ``reward_model`` judge: a judge reward model trained on the slice of the human pairs that the training
reward model never sees (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization": a held-apart "gold"
reward model judges the policy optimised against the proxy).

- :func:`train_judge_model` is the ``train_judge`` stage: the existing reward trainer on the judge's side of
  ``reward.judge_fraction`` (prompt-disjoint by hash), its own held-out accuracy on human pairs in its manifest;
- :class:`RewardModelJudge` compares two replies by its scores. The judge refuses a training reward model whose
  manifest does not show it skipped the same slice; an accuracy below ``eval.judge_min_accuracy`` is recorded
  and the gate refuses to decide.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from components.config.judges import JudgeRewardConfig
from components.data.judge_slice import RULE
from components.decide.judges.base import JudgeError, Prompt, ScoringJudge, prompt_text

log = logging.getLogger(__name__)

KIND = "judge_reward_model"


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise JudgeError(
            f"{folder}: no judge reward model (no manifest.json); run the train_judge stage "
            "(dvc repro train_judge) with eval.judge: reward_model"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def check_slices(judge: dict[str, Any], training: dict[str, Any], training_path: Path) -> None:
    """The training reward model skipped exactly the judge's slice; else a :class:`JudgeError` saying what to do."""
    js, ts = judge.get("judge_slice") or {}, training.get("judge_slice") or {}
    if ts.get("side") != "train" or ts.get("fraction") != js.get("fraction") or ts.get("rule") != js.get("rule"):
        raise JudgeError(
            f"{training_path}: the training reward model was not trained with the judge's slice held apart "
            f"(its judge_slice: {ts or 'none'}; the judge's: fraction {js.get('fraction')}, {js.get('rule')}); "
            "a judge that shares pairs with it is not independent: retrain it (dvc repro train_reward)"
        )


class RewardModelJudge(ScoringJudge):
    """The judge reward model's normalised score of each reply; the higher score wins."""

    name = "reward_model"

    def __init__(self, folder: Path, *, training_manifest: Path | None = None, batch_size: int = 16) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if self.manifest.get("used") is False:
            raise JudgeError(f"{self.folder}: {self.manifest.get('reason')}; run dvc repro train_judge")
        if training_manifest is not None and training_manifest.is_file():
            training = json.loads(training_manifest.read_text(encoding="utf-8"))
            check_slices(self.manifest, training, training_manifest.parent)
        from components.models.reward.model import RewardModel

        self.model = RewardModel.load(self.folder)
        self.batch_size = batch_size

    @property
    def accuracy(self) -> float | None:
        return ((self.manifest.get("metrics") or {}).get("eval") or {}).get("accuracy")

    def scores(self, prompts: Sequence[Prompt], replies: Sequence[str]) -> list[float]:
        texts = [p if isinstance(p, str) else prompt_text(p) for p in prompts]
        return self.model.score(texts, list(replies), batch_size=self.batch_size).float().cpu().tolist()

    def describe(self) -> dict[str, Any]:
        ev = (self.manifest.get("metrics") or {}).get("eval") or {}
        return {
            "name": self.name,
            "version": self.manifest.get("version"),
            "backbone": self.manifest.get("backbone"),
            "heldout_accuracy": ev.get("accuracy"),
            "heldout_pairs": ev.get("pairs"),
            "judge_slice": self.manifest.get("judge_slice"),
        }


@dataclass(frozen=True)
class JudgeModelResult:
    """What the ``train_judge`` stage produced (JSON-serialisable)."""

    trained: bool
    path: str
    version: str | None
    accuracy: float | None
    """Held-out accuracy on human pairs of the judge's slice (prompt-disjoint from its training pairs)."""
    heldout_pairs: int
    train_pairs: int
    note: str = ""


def train_judge_model(
    reward: Any, judge: JudgeRewardConfig, paths: Any, *, used: bool = True, progress: Any = None
) -> JudgeModelResult:
    """The ``train_judge`` stage: the reward trainer on the judge's slice of the stored pairs.

    ``reward`` is the ``RewardConfig`` (its ``judge_fraction`` names the slice; ``judge.backbone`` may replace
    its backbone). With ``used`` false (another judge is configured) it writes only a manifest saying so, in
    well under a second, so the pipeline's ``evaluate`` stage can always depend on this folder.
    """
    from components.common.fsutil import atomic_dir

    out = paths.root / judge.path
    summary = paths.metrics / "judge_reward.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    if not used:
        note = "eval.judge is not reward_model: no judge reward model was trained"
        with atomic_dir(out, replace=True) as staging:
            (staging / "manifest.json").write_text(json.dumps({"kind": KIND, "used": False, "reason": note}) + "\n")
        summary.write_text(json.dumps({"used": False, "reason": note}) + "\n", encoding="utf-8")
        return JudgeModelResult(False, str(out), None, None, 0, 0, note)
    from components.models.reward.trainer import train_reward

    cfg = replace(reward, backbone=judge.backbone or reward.backbone)
    metrics_dir = paths.metrics / "judge_reward"
    result = train_reward(paths.pairs, cfg, out, metrics_dir, project_root=paths.root, progress=progress, side="judge")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["kind"] = KIND
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    ev, tr = result.metrics["eval"], result.metrics["train"]
    record = {"used": True, "version": manifest["version"], "judge_slice": manifest["judge_slice"], "eval": ev,
              "train_pairs": tr["pairs"]}  # fmt: skip
    summary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log.info("judge reward model %s: held-out accuracy %s on %d pairs (%s)", manifest["version"],
             ev.get("accuracy"), ev.get("pairs", 0), RULE)  # fmt: skip
    return JudgeModelResult(True, str(out), manifest["version"], ev.get("accuracy"), int(ev.get("pairs", 0)),
                            int(tr["pairs"]))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The ``train_judge`` DVC stage: ``python -m components.decide.judges.reward_model --params params.yaml``."""
    import argparse

    from components.common.progress import log_progress
    from components.config import ConfigError, load_section
    from components.config.evaluation import EvalConfig
    from components.config.reward import RewardConfig
    from components.models.reward.pairs import PairsError
    from components.project.paths import ProjectPaths

    parser = argparse.ArgumentParser(prog="python -m components.decide.judges.reward_model", description=main.__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (reward, eval)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths(args.params.resolve().parent)
    try:
        reward = load_section(RewardConfig, "reward", args.params)
        ev = load_section(EvalConfig, "eval", args.params)
        train_judge_model(
            reward, ev.judge_reward, paths, used=ev.judge == "reward_model", progress=log_progress(log, "judge step")
        )
    except (ConfigError, PairsError, ValueError) as exc:
        print(f"train_judge: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
