"""The evaluation's sampled replies, kept so a later comparison of the same model under the same settings reads
them instead of sampling again (``staging/samples/<key>.json``: git-ignored, no DVC stage's output).

The key is a fingerprint of everything that decides the replies: the model folder's weight and tokenizer files
(sha256 of their bytes), the prompts, the sampling settings (``eval``: samples_per_prompt, max_new_tokens,
temperature, batch_size, seed, bf16; ``model``: dtype, system_prompt, static_cache), whether bf16 autocast is on
for the device, the torch and transformers versions, and the source of the sampling code. Sampling is seeded per
batch (``generator_seed``), so under one key the replies are the same whoever draws them: a hit is a replay of
what sampling would give, never an approximation. A missing, unreadable or mismatched file is a miss.

Letters: K samples per prompt, P prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from components.common.fsutil import atomic_write_text
from components.config.evaluation import EvalConfig
from components.config.model import ModelConfig
from components.data.prompt_pool import prompt_text
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)

MODEL_FILES = (".safetensors", ".bin", ".json", ".txt", ".jinja", ".model")
"""Files of a model folder that decide its replies (weights, config, tokenizer, chat template)."""
NOT_MODEL = {"manifest.json"}
"""The version's record of where it came from: it changes no reply (the registry adds facts to it)."""
SAMPLING_EVAL = ("samples_per_prompt", "max_new_tokens", "temperature", "batch_size", "seed", "bf16")
"""The ``eval`` settings that decide the replies."""
SAMPLING_CODE = (
    "components.models.generation",
    "components.models.precision",
    "components.models.base_model",
    "components.decide.evaluation",
)


_digests: dict[tuple, str] = {}
"""Digests computed in this process, by folder and its files' sizes and modification times."""


def folder_digest(folder: Path) -> str:
    """sha256 over the relative paths and bytes of the model files in ``folder`` (recursively, sorted)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in MODEL_FILES
                   and p.name not in NOT_MODEL)  # fmt: skip
    seen = (str(Path(folder).resolve()), *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if seen not in _digests:
        _digests[seen] = _digest(Path(folder), files)
    return _digests[seen]


def _digest(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def _code_digest() -> str:
    h = hashlib.sha256()
    for name in SAMPLING_CODE:
        h.update(Path(sys.modules[name].__file__ or "").read_bytes())
    return h.hexdigest()


def sample_key(folder: Path, prompts: list[Any], cfg: EvalConfig, model: ModelConfig, bf16_on: bool) -> str:
    """The fingerprint of the replies ``_sample_and_score`` draws from the model in ``folder``."""
    import importlib

    import torch
    import transformers

    for name in SAMPLING_CODE:
        importlib.import_module(name)
    facts = {
        "model_files": folder_digest(folder),
        "prompts": [[type(p).__name__, prompt_text(p)] for p in prompts],
        "eval": {k: getattr(cfg, k) for k in SAMPLING_EVAL},
        "model": {k: getattr(model, k) for k in ("dtype", "system_prompt", "static_cache")},
        "bf16_autocast": bf16_on,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "code": _code_digest(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _file(paths: ProjectPaths, key: str) -> Path:
    return paths.sample_cache / f"{key}.json"


def save(paths: ProjectPaths, key: str, version: str, texts: list[list[str]], tokens: list[list[float]],
         ended: list[list[float]]) -> None:  # fmt: skip
    """Keep one model's K x P replies (with their token counts and EOS flags) under ``key``."""
    record = {"key": key, "version": version, "texts": texts, "tokens": tokens, "ended": ended}
    atomic_write_text(_file(paths, key), json.dumps(record) + "\n")


def load(paths: ProjectPaths, key: str, samples: int, prompts: int) -> dict[str, Any] | None:
    """The replies kept under ``key`` (``texts``, ``tokens``, ``ended``, each K x P), or None."""
    path = _file(paths, key)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    shapes = [
        (len(record.get(k) or []), {len(row) for row in record.get(k) or []}) for k in ("texts", "tokens", "ended")
    ]
    if record.get("key") != key or any(s != (samples, {prompts}) for s in shapes):
        log.warning("%s: not the replies of key %s (%d x %d); sampling again", path, key, samples, prompts)
        return None
    return record
