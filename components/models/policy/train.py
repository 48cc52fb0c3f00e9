"""The PPO stage: :func:`train_policy` (exported by :mod:`components.stages`), and the ``ppo`` DVC stage's command
that calls it: ``python -m components.models.policy.train --params params.yaml [--resume | --fresh]``.

Reads sections ``model`` and ``ppo`` of the params file, trains, and writes (main process only):
- ``models/policy/<version>/``: a new version folder (never replaced in place): a plain transformers folder
  (LoRA merged) + ``manifest.json`` with its lineage (data version, reward model and its data version, parent
  policy, code revision, params);
- ``metrics/ppo.json`` (summary, with ``version`` and ``policy_dir``), ``metrics/ppo_log.jsonl`` / ``.csv``
  (per step), ``metrics/ppo_*.png``.

Several processes: ``accelerate launch --num_processes N -m components.models.policy.train --params params.yaml``.

A run killed mid-training continues from its last complete checkpoint (``ppo.checkpoint_dir``) the next time
the stage runs, when nothing that changes the numbers changed: the stage records a resume key beside the
checkpoints (the trainer's params fingerprint, which covers the PPO and model params, the policy it starts from,
the reward model's content and the process count, plus a hash of the prompt file) and resumes only when the key
matches (``resume="auto"``, the default); otherwise it starts at step 0. A finished run removes its
checkpoints once the policy is exported, so a later run never "resumes" a finished one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from components.common.fsutil import atomic_dir, atomic_write_text
from components.common.progress import Progress
from components.config import load_section, read_params, to_dict
from components.config.model import ModelConfig
from components.config.policy import PolicyConfig
from components.models.base_model import resolve_model_dir
from components.models.policy.algorithms import ALGORITHMS
from components.models.policy.checkpoint import clear_checkpoints, latest_checkpoint
from components.models.policy.loop import PolicyTrainer, TrainResult, summary
from components.models.policy.model import replicas_in_sync
from components.models.policy.scorers import Scorer, load_scorer, scorer_fingerprint
from components.project.paths import ProjectPaths
from components.records.lineage import code_revision, data_version

log = logging.getLogger(__name__)


def export_policy(result: TrainResult, out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Save the policy as a new folder (a normal transformers folder, LoRA merged, plus ``manifest.json``),
    made visible by one rename; an existing folder is never replaced."""
    policy = result.actor_critic.policy
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    with atomic_dir(out_dir, replace=False) as staging:
        policy.save_pretrained(staging)
        result.tokenizer.save_pretrained(staging)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out_dir


def new_policy_version() -> str:
    """A fresh policy version id (UTC time + 4 random hex digits; sorts by time)."""
    from components.records.registry import new_version  # the registry's reading side imports no BentoML

    return new_version()


def exported_policy(root: Path) -> Path | None:
    """The folder of the last exported policy version, from ``metrics/ppo.json`` (None before the first)."""
    summary_file = ProjectPaths(root).metrics / "ppo.json"
    if not summary_file.is_file():
        return None
    rel = json.loads(summary_file.read_text(encoding="utf-8")).get("policy_dir")
    return (Path(root) / rel) if rel else None


def reward_lineage(spec: str, root: Path, sha256: str) -> dict[str, Any]:
    """What the policy manifest records about its reward model: spec, content hash, version, data version."""
    info: dict[str, Any] = {"spec": spec, "sha256": sha256}
    manifest = Path(root) / spec / "manifest.json" if not spec.startswith("builtin:") else None
    if manifest is not None and manifest.is_file():
        rm = json.loads(manifest.read_text(encoding="utf-8"))
        info["version"] = rm.get("version")
        info["data_version"] = (rm.get("data") or {}).get("data_version")
        info["heldout_accuracy"] = ((rm.get("metrics") or {}).get("eval") or {}).get("accuracy")
    return info


Resume = bool | Literal["auto"]
"""``True``: continue from the latest checkpoint (refused when it was made with other params); ``False``: start
at step 0; ``"auto"``: continue when the latest checkpoint's resume key matches, else start at step 0."""
RESUME_KEY_FILE = "resume.json"


def resume_key(fingerprint: str, prompts: Path) -> str:
    """What must match for a checkpoint to be continued: the trainer's params fingerprint and the prompt file."""
    digest = hashlib.sha256(prompts.read_bytes()).hexdigest() if prompts.is_file() else "missing"
    return hashlib.sha256(f"{fingerprint}:{digest}".encode()).hexdigest()[:16]


def _auto_resume(ckpt_root: Path, key: str) -> bool:
    """Whether the latest complete checkpoint under ``ckpt_root`` was made by a run with this resume key."""
    latest = latest_checkpoint(ckpt_root)
    if latest is None:
        return False
    key_file = ckpt_root / RESUME_KEY_FILE
    recorded = json.loads(key_file.read_text(encoding="utf-8")).get("key") if key_file.is_file() else None
    if recorded != key:
        log.info(
            "checkpoint %s was made with other params, prompts, starting policy or reward model "
            "(resume key %s, now %s): starting at step 0",
            latest.name, recorded, key,
        )  # fmt: skip
        return False
    log.info("an unfinished run with the same params left %s: continuing from it", latest.name)
    return True


def run(
    params: Path | dict[str, Any],
    root: Path,
    *,
    resume: Resume = False,
    scorer: Scorer | None = None,
    stop_after: int | None = None,
    export: bool = True,
    progress: Progress | None = None,
    version: str | None = None,
    parent: str | None = None,
    paths: ProjectPaths | None = None,
) -> TrainResult:
    """Train the policy (``policy.algorithm``) from a params file (or dict) in project ``root``; export unless stopped
    early.

    The export is ``<policy.output_dir>/<version>/`` (a fresh version id unless given). Training starts from
    ``parent`` (a registry policy version) when given, else from what ``policy.init_from`` names
    (:func:`initial_policy`); the manifest records that version as ``parent``. ``paths`` (default: the project's)
    says where ``ppo.json`` and the training metrics go (a tournament candidate has folders of its own)."""
    raw = read_params(params) if isinstance(params, Path) else params
    cfg = load_section(PolicyConfig, "policy", raw)
    base_cfg = load_section(ModelConfig, "model", raw)
    paths = paths or ProjectPaths(root)
    parent, init_dir = initial_policy(cfg, base_cfg, paths, parent)
    model_cfg = dataclasses.replace(base_cfg, base=str(init_dir)) if init_dir is not None else base_cfg
    scorer_spec = cfg.reward_model if cfg.reward_model.startswith("builtin:") else str(root / cfg.reward_model)
    in_loop = ALGORITHMS[cfg.algorithm].uses_scorer
    if in_loop:
        scorer_id = scorer_fingerprint(scorer_spec)
        scorer = scorer if scorer is not None else load_scorer(scorer_spec)
    else:  # offline: no reward model in the loop; the pairs are what changes the numbers
        scorer_id, scorer = scorer_fingerprint(root / cfg.dpo.pairs), None
    trainer = PolicyTrainer(cfg, model_cfg, scorer, paths, scorer_id=scorer_id)
    ckpt_root = root / cfg.checkpoint_dir
    key = resume_key(trainer.fingerprint, root / cfg.prompts)
    if resume == "auto":
        resume = _auto_resume(ckpt_root, key)
    trainer.acc.wait_for_everyone()  # every process decided before the main one clears anything
    if trainer.acc.is_main_process:
        if not resume:
            clear_checkpoints(ckpt_root)
        ckpt_root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ckpt_root / RESUME_KEY_FILE, json.dumps({"key": key, "fingerprint": trainer.fingerprint}))
    trainer.acc.wait_for_everyone()
    t0 = time.perf_counter()
    result = trainer.train(resume=bool(resume), stop_after=stop_after, progress=progress)
    resumed_from = trainer.step - result.steps_run
    if not replicas_in_sync(result.accelerator, result.actor_critic):
        raise RuntimeError("data-parallel replicas diverged: trainable weights differ between processes")
    finished = trainer.step >= cfg.steps or trainer.stopped  # a KL bound ends the run early, finished
    if export and finished and result.accelerator.is_main_process:
        version = version or new_policy_version()
        out_dir = root / cfg.output_dir / version
        stats = summary(result.metrics)
        manifest = {
            "kind": "policy",
            "version": version,
            "parent": parent,
            "init_from": cfg.init_from,
            "base": base_cfg.base,
            # the folder PPO started from = its KL reference (the evaluation reads it)
            "base_dir": str(init_dir) if init_dir is not None else _base_dir(base_cfg.base),
            "data_version": data_version(root),
            # offline DPO trains without it; the evaluation and the gate still use the project's reward model
            "reward_model": reward_lineage(cfg.reward_model, root, scorer_id)
            if in_loop
            else offline_reward_lineage(cfg.reward_model, root, scorer_spec),
            "algorithm": cfg.algorithm,
            "algorithm_params": algorithm_params(cfg),
            "params": {"policy": to_dict(cfg), "model": to_dict(base_cfg)},
            "code_revision": code_revision() or "unknown",
            "metrics": stats,
            "processes": result.accelerator.num_processes,
            "resumed_from_step": resumed_from,
            "seconds": round(time.perf_counter() - t0, 1),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        export_policy(result, out_dir, manifest)
        result.export_dir = out_dir
        paths.metrics.mkdir(parents=True, exist_ok=True)
        record = {**stats, "version": version, "policy_dir": str(out_dir.relative_to(root))}
        atomic_write_text(paths.metrics / "ppo.json", json.dumps(record, indent=2, sort_keys=True))
        clear_checkpoints(ckpt_root)  # finished and exported: nothing left to continue
        log.info("policy version %s written to %s", version, out_dir)
    result.accelerator.wait_for_everyone()
    return result


def offline_reward_lineage(spec: str, root: Path, resolved: str) -> dict[str, Any] | None:
    """For an optimiser without a reward model in the loop: the project's reward model (which evaluates and gates
    the policy) marked ``in_loop: false``, or None when there is none."""
    if not spec.startswith("builtin:") and not Path(resolved).exists():
        return None
    return {**reward_lineage(spec, root, scorer_fingerprint(resolved)), "in_loop": False}


def algorithm_params(cfg: PolicyConfig) -> dict[str, Any]:
    """The knobs of ``cfg.algorithm`` that are its own (PPO's advantage/loss fields, or its section)."""
    if cfg.algorithm == "ppo":
        keys = ("gamma", "lam", "whiten_advantages", "clip_range", "clip_range_value", "vf_coef", "ent_coef")
        return {k: getattr(cfg, k) for k in (*keys, "early_stop_kl", "ppo_epochs", "kl_estimator", "init_kl_coef")}
    return to_dict(getattr(cfg, cfg.algorithm))


def initial_policy(
    cfg: PolicyConfig, model: ModelConfig, paths: ProjectPaths, parent: str | None = None
) -> tuple[str, Path | None]:
    """The registry version PPO starts from and its folder (None: ``model.base`` itself).

    ``parent`` if given; else with ``init_from: champion`` the version ``registry/ppo_parent.json`` names (the
    flow points it at the champion before training; without the file, the registry's champion), the base model
    while that is the base or nothing is registered yet; else the base model."""
    from components.records import registry  # the reading side imports no BentoML

    if parent is None and cfg.init_from == "champion":
        champ = registry.ppo_parent(paths)
        if champ is not None and not champ.startswith("base-"):
            parent = champ
    if parent is None or parent.startswith("base-"):
        return parent or registry.base_version(model.base), None  # a base champion: model.base itself
    folder = registry.get(paths, parent).path
    log.info("the policy starts from %s (%s); it is also the KL reference", parent, folder)
    return parent, folder


def _base_dir(spec: str) -> str | None:
    try:
        return str(resolve_model_dir(spec))
    except Exception:  # hub ids have no local folder; the spec is recorded either way
        return None


@dataclass(frozen=True)
class PolicyResult:
    """What the PPO stage produced (JSON-serialisable: ``json.dumps(dataclasses.asdict(result))``)."""

    version: str
    path: str
    """The new policy version folder (transformers folder + manifest.json)."""
    manifest_path: str
    parent: str
    """Registry version of the policy PPO started from."""
    data_version: str | None
    reward_version: str | None
    metrics: dict[str, float]
    """First/last score and KL, throughput (``metrics/ppo.json``)."""
    seconds: float
    resumed_from: int = 0
    """The checkpoint step this run continued from (0: it started fresh)."""


def _policy_result(folder: Path) -> PolicyResult:
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return PolicyResult(
        version=manifest["version"],
        path=str(folder),
        manifest_path=str(manifest_path),
        parent=manifest["parent"],
        data_version=manifest["data_version"],
        reward_version=(manifest["reward_model"] or {}).get("version"),
        metrics=manifest["metrics"],
        seconds=manifest.get("seconds", 0.0),
        resumed_from=manifest.get("resumed_from_step", 0),
    )


def train_policy(
    cfg: PolicyConfig,
    paths: ProjectPaths,
    *,
    model: ModelConfig,
    reward: str | Path | None = None,
    parent: str | None = None,
    resume: Resume = "auto",
    progress: Progress | None = None,
) -> PolicyResult | None:
    """The PPO stage: train against the reward model (``reward`` folder, default ``cfg.reward_model``) and
    write a new policy version folder.

    ``parent`` is a registry policy version to start from (its folder becomes the initial policy and the KL
    reference); None starts from what ``cfg.init_from`` names (the champion by default). ``resume``: see
    :data:`Resume`. Under ``accelerate launch`` every process calls this; the main one exports and returns the
    result, the others return None.
    """
    if reward is not None:
        rel = Path(reward).resolve()
        spec = str(rel.relative_to(paths.root)) if rel.is_relative_to(paths.root) else str(rel)
        cfg = dataclasses.replace(cfg, reward_model=spec)
    raw = {"policy": to_dict(cfg), "model": to_dict(model)}
    result = run(raw, paths.root, resume=resume, progress=progress, parent=parent, paths=paths)
    if not result.accelerator.is_main_process:
        return None
    if result.export_dir is None:
        raise RuntimeError(f"PPO in {paths.root} ended before step {cfg.steps} without exporting a policy")
    return _policy_result(result.export_dir)


def policy_result(paths: ProjectPaths) -> PolicyResult:
    """The result of the last run of the stage: the policy ``metrics/ppo.json`` names (from its manifest); what
    a flow reports when the stage was up to date and did not run."""
    folder = exported_policy(paths.root)
    if folder is None or not (folder / "manifest.json").is_file():
        raise FileNotFoundError(f"{paths.metrics / 'ppo.json'}: no exported policy; run the ppo stage first")
    return _policy_result(folder)


def launch_command(processes: int, params: str = "params.yaml") -> list[str]:
    """The ``ppo`` stage's command on ``processes`` devices: ``accelerate launch --multi_gpu`` (torchrun
    underneath; without GPUs the processes use the CPU and gloo), run in the project's folder."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [
        accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--dynamo_backend", "no", "-m", "components.models.policy.train", "--params", params,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """The ``ppo`` DVC stage's command: :func:`train_policy` on the params file's project."""
    parser = argparse.ArgumentParser(description="Fine-tune the policy with policy.algorithm (PPO by default).")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (sections model, policy)")
    parser.add_argument("--root", type=Path, default=None, help="project root (default: the params file's folder)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (same params)")
    how.add_argument("--fresh", action="store_true", help="start at step 0, removing any checkpoints")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root = (args.root or args.params.resolve().parent).resolve()
    raw = read_params(args.params.resolve())
    train_policy(
        load_section(PolicyConfig, "policy", raw),
        ProjectPaths(root),
        model=load_section(ModelConfig, "model", raw),
        resume=True if args.resume else False if args.fresh else "auto",
    )


if __name__ == "__main__":
    main()
