"""The ``ppo`` stage: ``python -m components.ppo.train --params params.yaml [--resume]``.

Reads sections ``model`` and ``ppo`` of the params file, trains, and writes (main process only):
- ``models/policy/``: a plain transformers folder (LoRA merged) + ``manifest.json``;
- ``metrics/ppo.json`` (summary), ``metrics/ppo_log.jsonl`` / ``.csv`` (per step), ``metrics/ppo_*.png``.
Several processes: ``accelerate launch --num_processes N -m components.ppo.train --params params.yaml``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from components.base_model import resolve_model_dir
from components.config import ModelConfig, load_section, read_params, to_dict
from components.lineage import code_revision
from components.paths import ProjectPaths
from components.ppo.checkpoint import clear_checkpoints
from components.ppo.config import PPOConfig
from components.ppo.scorers import Scorer, load_scorer, scorer_fingerprint
from components.ppo.trainer import PPOTrainer, TrainResult, replicas_in_sync, summary

log = logging.getLogger(__name__)


def export_policy(result: TrainResult, out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Save the policy as a normal transformers folder (LoRA merged) plus ``manifest.json``."""
    policy = result.actor_critic.policy
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    result.tokenizer.save_pretrained(tmp)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def run(
    params: Path | dict[str, Any],
    root: Path,
    *,
    resume: bool = False,
    scorer: Scorer | None = None,
    stop_after: int | None = None,
    export: bool = True,
) -> TrainResult:
    """Train PPO from a params file (or dict) in project ``root``; export unless stopped early."""
    raw = read_params(params) if isinstance(params, Path) else params
    cfg = load_section(PPOConfig, "ppo", raw)
    model_cfg = load_section(ModelConfig, "model", raw)
    paths = ProjectPaths(root)
    scorer_spec = cfg.reward_model if cfg.reward_model.startswith("builtin:") else str(root / cfg.reward_model)
    scorer_id = scorer_fingerprint(scorer_spec)
    scorer = scorer if scorer is not None else load_scorer(scorer_spec)
    trainer = PPOTrainer(cfg, model_cfg, scorer, paths, scorer_id=scorer_id)
    if not resume and trainer.acc.is_main_process:
        clear_checkpoints(root / cfg.checkpoint_dir)
    trainer.acc.wait_for_everyone()
    t0 = time.perf_counter()
    result = trainer.train(resume=resume, stop_after=stop_after)
    if not replicas_in_sync(result.accelerator, result.actor_critic):
        raise RuntimeError("data-parallel replicas diverged: trainable weights differ between processes")
    finished = trainer.step >= cfg.steps
    if export and finished and result.accelerator.is_main_process:
        stats = summary(result.metrics)
        paths.metrics.mkdir(parents=True, exist_ok=True)
        (paths.metrics / "ppo.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
        manifest = {
            "kind": "policy",
            "base": model_cfg.base,
            "base_dir": _base_dir(model_cfg.base),
            "reward_model": {"spec": cfg.reward_model, "sha256": scorer_id},
            "params": {"ppo": to_dict(cfg), "model": to_dict(model_cfg)},
            "code_revision": code_revision(root) or "unknown",
            "metrics": stats,
            "processes": result.accelerator.num_processes,
            "seconds": round(time.perf_counter() - t0, 1),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        export_policy(result, root / cfg.output_dir, manifest)
        log.info("policy written to %s", root / cfg.output_dir)
    result.accelerator.wait_for_everyone()
    return result


def _base_dir(spec: str) -> str | None:
    try:
        return str(resolve_model_dir(spec))
    except Exception:  # hub ids have no local folder; the spec is recorded either way
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="PPO fine-tuning of the policy against the reward model.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (sections model, ppo)")
    parser.add_argument("--root", type=Path, default=None, help="project root (default: the params file's folder)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (same params)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root = (args.root or args.params.resolve().parent).resolve()
    run(args.params.resolve(), root, resume=args.resume)


if __name__ == "__main__":
    main()
