"""What PPO optimises: anything with ``score(prompts, responses) -> (B,) float tensor``.

The reward model (``components.models.reward.model.RewardModel``) is the real scorer; two simple stand-ins
let the loop be tested and demonstrated without one:
- ``CountScorer``: occurrences of a word in the reply (a known, easily learned reward for tests);
- ``VaderScorer``: VADER compound sentiment of the reply in [-1, 1] (a cheap "be positive" reward).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Scorer(Protocol):
    """Scores replies; higher is better. Must be deterministic for resume to be exact."""

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """One float per (prompt, response) pair, shape (B,)."""
        ...


class CountScorer:
    """Reward = number of occurrences of ``word`` in the reply (case-insensitive, capped at ``cap``)."""

    def __init__(self, word: str, cap: float | None = None) -> None:
        if not word:
            raise ValueError("CountScorer needs a non-empty word")
        self.word = word
        self.cap = cap
        self._pattern = re.compile(re.escape(word), re.IGNORECASE)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        counts = torch.tensor([float(len(self._pattern.findall(r))) for r in responses])
        return counts.clamp_max(self.cap) if self.cap is not None else counts


class VaderScorer:
    """Reward = VADER compound sentiment of the reply (a stand-in reward until the reward model exists)."""

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([float(self._analyzer.polarity_scores(r)["compound"]) for r in responses])


def load_scorer(spec: str | Path) -> Scorer:
    """A scorer from a spec: ``builtin:vader``, ``builtin:count:WORD``, or a reward-model folder.

    The reward model is imported lazily so this module works on branches where it does not exist yet.
    """
    text = str(spec)
    if text == "builtin:vader":
        return VaderScorer()
    if text.startswith("builtin:count:"):
        return CountScorer(text.removeprefix("builtin:count:"))
    if text.startswith("builtin:"):
        raise ValueError(f"unknown built-in scorer {text!r} (use builtin:vader or builtin:count:WORD)")
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(
            f"reward model {path} not found: train it first (dvc repro train_reward), "
            "or set policy.reward_model to builtin:vader for a stand-in reward"
        )
    from components.models.reward.model import RewardModel  # lazy: built on its own branch

    return RewardModel.load(path)


def scorer_fingerprint(spec: str | Path) -> str:
    """A hash that changes when the scorer changes: the spec for built-ins, file contents for a folder."""
    text = str(spec)
    digest = hashlib.sha256()
    path = Path(text)
    if text.startswith("builtin:") or not path.exists():
        digest.update(text.encode())
        return digest.hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
