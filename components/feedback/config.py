"""``DataConfig`` (params.yaml section ``data``): validation limits and the demo seeding size."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    """Feedback validation limits and how much seed feedback the demo task makes."""

    max_prompt_chars: int = 8000
    """Longest accepted prompt in characters (longer is 'absurdly long' and quarantined). HH-RLHF multi-turn
    prompts stay well under this."""
    max_reply_chars: int = 4000
    """Longest accepted reply (chosen / rejected / response) in characters."""
    seed_prompts: int = 200
    """How many train prompts of the demo task get seed replies (at most the number of train prompts)."""
    replies_per_prompt: int = 2
    """Replies sampled per prompt from the base policy; the gold annotator's best and worst make a pair."""
    max_new_tokens: int = 32
    """Tokens per sampled seed reply. Measured: a batch of 16 x 40 tokens of SmolLM2-135M costs about 11 CPU-seconds
    (one thread), so 200 prompts x 2 replies x 32 tokens is about 3.5 CPU-minutes, 2-3 minutes on 2 cores."""
    temperature: float = 1.0
    """Sampling temperature for seed replies (1.0: the policy's own distribution, diverse enough to rank)."""
    batch_size: int = 16
    """Replies generated per forward batch while seeding."""
    min_gold_gap: float = 0.05
    """A prompt yields a pair only if its best and worst reply differ by at least this gold score (near-ties
    are noise, not preference)."""
    with_margin: bool = True
    """Store the gold-score difference as the pair's ``margin``."""
    seed: int = 0
    """Seed for sampling the seed replies."""

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_reply_chars", "seed_prompts", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.replies_per_prompt < 2:
            raise ValueError(f"replies_per_prompt must be >= 2 to make a pair, got {self.replies_per_prompt}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.min_gold_gap < 0:
            raise ValueError(f"min_gold_gap must be >= 0, got {self.min_gold_gap}")


TINY_DATA = dataclasses.replace(DataConfig(), seed_prompts=6, replies_per_prompt=2, max_new_tokens=8, batch_size=12)
"""A preset for tests: a handful of prompts, short replies (seconds with the tiny model)."""
