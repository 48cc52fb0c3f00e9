"""``SeedingConfig`` (params.yaml section ``seeding``): how much seed feedback the demo task makes.

Only the demo task reads it: replies sampled from the base policy, ranked by the gold annotator into preference
pairs (``components/demo_task/seed.py``). The measurements behind the defaults are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class SeedingConfig:
    """How many seed replies the demo task samples and how it turns them into pairs."""

    demo_task: bool = False
    """This project is the demo task (``rlhf demo``): its seed feedback is labelled by the demo annotator and the
    ``demo`` judge may evaluate it. Every other project leaves it false, and the demo judge refuses it."""
    seed_prompts: int = 200
    """How many train prompts of the demo task get seed replies (at most the number of train prompts)."""
    replies_per_prompt: int = 6
    """Replies sampled per prompt from the base policy; the gold annotator's best and worst make a pair. More
    replies give wider, clearer preference gaps, which the reward model learns from more easily."""
    pairs_per_prompt: int = 2
    """Disjoint pairs taken per prompt from its ranked replies: best vs worst, then 2nd best vs 2nd worst, ...
    (each needs two more distinct replies and a gap of at least ``min_gold_gap``). More pairs cost no extra
    sampling, only more reward-model training steps."""
    max_new_tokens: int = 32
    """Tokens per sampled seed reply."""
    temperature: float = 1.0
    """Sampling temperature for seed replies (1.0: the policy's own distribution, diverse enough to rank)."""
    batch_size: int = 120
    """Replies generated per forward batch while seeding (whole prompts: ``batch_size // replies_per_prompt``
    prompts per batch). Larger batches amortise the per-step overhead."""
    bf16: bool = True
    """Sample the seed replies under bf16 autocast where the device computes bf16 natively (see
    ``components/models/precision.py``); float32 elsewhere."""
    min_gold_gap: float = 0.05
    """A pair is made only if its two replies differ by at least this gold score (near-ties are noise, not
    preference); a prompt whose best and worst are closer yields none."""
    with_margin: bool = True
    """Store the gold-score difference as the pair's ``margin``."""
    seed: int = 0
    """Seed for sampling the seed replies."""

    def __post_init__(self) -> None:
        for name in ("seed_prompts", "max_new_tokens", "batch_size", "pairs_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.replies_per_prompt < 2:
            raise ValueError(f"replies_per_prompt must be >= 2 to make a pair, got {self.replies_per_prompt}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.min_gold_gap < 0:
            raise ValueError(f"min_gold_gap must be >= 0, got {self.min_gold_gap}")


TINY_SEEDING = dataclasses.replace(
    SeedingConfig(), seed_prompts=6, replies_per_prompt=2, max_new_tokens=8, batch_size=12
)
"""A preset for tests: a handful of prompts, short replies (seconds with the tiny model)."""
