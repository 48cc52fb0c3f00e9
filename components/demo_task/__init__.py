"""The bundled demo task: customer-support prompts written for this project, and a gold annotator.

``prompts.jsonl`` (package data) holds 440 prompts over 11 topics (shipping, returns, billing, account,
technical, product, subscription, order changes, policy, complaints, general), each tagged ``train`` (400)
or ``heldout`` (40). The first 240 lines are the original set (every sixth prompt held out, so every topic
is represented); the 200 lines after them were written later, on new subjects, and are all ``train``, so
the held-out prompts stay the same 40.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Literal

Split = Literal["train", "heldout"]


@lru_cache(maxsize=1)
def _all_prompts() -> tuple[dict, ...]:
    text = resources.files(__package__).joinpath("prompts.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def load_prompts(split: Split | None = None) -> list[dict]:
    """The demo prompts (``{"prompt", "topic", "split"}``), optionally one split only, in file order."""
    return [dict(p) for p in _all_prompts() if split is None or p["split"] == split]
