"""Shared pieces of the alignment benchmarks (``reward_splits.py``, ``alignment.py``).

- ``setup``: torch threads, the device (CUDA when visible, else CPU), logging;
- ``sample_replies``: k sampled replies per prompt from a policy, in batches, seeded;
- ``cached``: JSON results computed once and reused from the cache folder (sampling is the slow part on CPU);
- ``gold_scores``: the gold annotator over nested replies.

The cache folder (default ``.bench-cache/``, git-ignored) holds sampled replies and trained models between
runs; delete it, or pass ``--fresh``, to recompute.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from components.demo_task import gold
from components.models.generation import generate

log = logging.getLogger("bench")

DEFAULT_CACHE = Path(".bench-cache")


def setup(threads: int) -> torch.device:
    """Log to stderr, set torch's CPU threads (0 = leave as is) and pick the device."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 numerics, as on CPU
        return torch.device("cuda")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"CPU ({torch.get_num_threads()} torch threads)"


def cached(path: Path, compute: Callable[[], Any], fresh: bool = False) -> Any:
    """``compute()``'s JSON-serialisable result, stored at ``path`` and read back on later runs."""
    if path.is_file() and not fresh:
        log.info("reusing %s", path)
        return json.loads(path.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(value) + "\n", encoding="utf-8")
    partial.rename(path)  # whole or absent: another process may be waiting for this file
    log.info("wrote %s (%.0f s)", path, time.perf_counter() - t0)
    return value


@torch.no_grad()
def sample_replies(
    model,
    tok,
    prompts: Sequence[str],
    k: int,
    *,
    system: str | None,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
) -> list[list[str]]:
    """``k`` sampled replies per prompt (a prompt's copies are consecutive in a batch), seeded per batch."""
    requests = [p for p in prompts for _ in range(k)]
    texts: list[str] = []
    for i, start in enumerate(range(0, len(requests), batch_size)):
        out = generate(
            model,
            tok,
            requests[start : start + batch_size],
            system=system,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            generator_seed=seed + i,
        )
        texts += out.texts
        log.info("sampled %d / %d replies", len(texts), len(requests))
    return [texts[j * k : (j + 1) * k] for j in range(len(prompts))]


def gold_scores(prompts: Sequence[str], replies: Sequence[Sequence[str]]) -> list[list[float]]:
    """The gold annotator's score of every reply (same nesting as ``replies``)."""
    return [[gold.score(p, r) for r in rs] for p, rs in zip(prompts, replies)]


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    log.info("results in %s", path)
