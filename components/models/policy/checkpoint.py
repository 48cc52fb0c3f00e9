"""Resumable PPO checkpoints: everything needed to continue a run bit-for-bit.

Layout of ``<checkpoint_dir>/step_000004/``:
- ``state.pt``: trainable weights (LoRA adapters or all weights, the value head), optimiser and
  scheduler state, KL controller, step, metrics so far, params fingerprint;
- ``rng_rank{r}.pt``: each process's RNG states (python, numpy, torch, cuda, prompt sampler);
- ``params.json``: the params it was made with (human-readable, for the refusal message).

A process can be killed at any instant, so every change on disk is a rename:
- a checkpoint is written to ``.tmp_step_N/``, flushed to disk (fsync), then renamed to ``step_N/``;
- an old checkpoint is renamed to ``.old_step_N/`` before it is deleted.
So a ``step_N/`` folder is always complete; a kill leaves at most a dot-folder, which resume ignores
and the next save removes. ``latest_checkpoint`` also checks the files, for folders made otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from components.config import to_dict
from components.config.model import ModelConfig
from components.config.policy import OPERATIONAL_FIELDS, PolicyConfig

KEEP_LAST = 2
REQUIRED_FILES = ("state.pt", "params.json", "rng_rank0.pt")
_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from, with what to do about it."""


def fingerprint(cfg: PolicyConfig, model_cfg: ModelConfig, scorer_id: str, world_size: int) -> str:
    """Hash of everything that changes the numbers: PPO params, model section, scorer, process count."""
    ppo = {k: v for k, v in to_dict(cfg).items() if k not in OPERATIONAL_FIELDS}
    model = {k: v for k, v in to_dict(model_cfg).items() if k != "static_cache"}  # how it decodes, not what
    payload = {"policy": ppo, "model": model, "scorer": scorer_id, "world_size": world_size}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_complete(path: Path) -> bool:
    """A ``step_N`` folder holding every file a resume needs (never a ``.tmp_``/``.old_`` folder)."""
    return bool(_STEP_DIR.fullmatch(path.name)) and all((path / f).is_file() for f in REQUIRED_FILES)


def _step_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest step first."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(dirs, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    dirs = _step_dirs(root)
    return dirs[-1] if dirs else None


def incomplete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders a killed run left half-written or half-deleted (resume skips them)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*step_*") if p.is_dir() and not is_complete(p))


def _fsync(path: Path) -> None:
    """Flush a file (or, on POSIX, a folder's entries) to disk, so a rename never outruns its contents."""
    is_dir = path.is_dir()
    if is_dir and os.name == "nt":
        return  # Windows cannot open a folder for fsync; NTFS renames are journaled
    fd = os.open(path, os.O_RDONLY if is_dir else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a folder by renaming it out of the ``step_*`` namespace first (a kill mid-delete is harmless)."""
    trash = path.with_name(".old_" + path.name)
    shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Remove the half-written or half-deleted folders a killed run may have left."""
    for p in incomplete_checkpoints(root):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    root: Path,
    *,
    step: int,
    accelerator: Accelerator,
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    kl_ctl: dict[str, float],
    metrics: list[dict[str, float]],
    fingerprint: str,
    params: dict[str, Any],
    prompt_rng: dict[str, Any],
    score_norm: tuple[float, float] | None = None,
    within: dict[str, Any] | None = None,
) -> Path:
    """Write step ``step``'s checkpoint (every process writes its RNG; the main process the rest); ``within``:
    a KL bound's kept weights (``{"step", "kl", "weights"}``) where they differ from ``trainable``."""
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "prompt_rng": prompt_rng,
    }
    rng_file = tmp / f"rng_rank{accelerator.process_index}.pt"
    torch.save(rng, rng_file)
    _fsync(rng_file)
    if accelerator.is_main_process:
        state = {
            "step": step,
            "trainable": trainable,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "kl_ctl": kl_ctl,
            "score_norm": list(score_norm) if score_norm is not None else None,
            "metrics": metrics,
            "fingerprint": fingerprint,
            "world_size": accelerator.num_processes,
            "within": within,
        }
        torch.save(state, tmp / "state.pt")
        (tmp / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
        _fsync(tmp / "state.pt")
        _fsync(tmp / "params.json")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync(tmp)
        if final.exists():
            _remove(final)
        tmp.rename(final)
        _fsync(root)
        for old in _step_dirs(root)[:-KEEP_LAST]:
            _remove(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, rank: int, *, expected_fingerprint: str) -> dict[str, Any]:
    """Load a checkpoint for process ``rank``; refuse one made with different params."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if state["fingerprint"] != expected_fingerprint:
        theirs = path / "params.json"
        raise CheckpointError(
            f"refusing to resume from {path}: it was made with different params, model, scorer or process "
            f"count (fingerprint {state['fingerprint']} != {expected_fingerprint} for the current ones). "
            f"Its params are in {theirs}. Restore those params to resume, or start fresh without --resume "
            f"(or delete {path.parent})."
        )
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        raise CheckpointError(f"{path}: no RNG state for process {rank}; was it written by fewer processes?")
    state["rng"] = torch.load(rng_file, map_location="cpu", weights_only=False)
    return state


def clear_checkpoints(root: Path) -> None:
    """Remove old checkpoints (a fresh, non-resumed run starts clean)."""
    if root.is_dir():
        for p in root.glob("*step_*"):
            shutil.rmtree(p, ignore_errors=True)
