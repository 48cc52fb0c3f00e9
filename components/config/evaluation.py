"""``EvalConfig`` (params.yaml section ``eval``): how the evaluate stage compares a candidate with the champion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.config.judges import HumanJudgeConfig, JudgeRewardConfig, LLMJudgeConfig


@dataclass(frozen=True)
class EvalConfig:
    """How a candidate policy is evaluated against the champion (``params.yaml`` section ``eval``)."""

    prompts: str = "data/prompts/heldout.jsonl"
    """Held-out prompts (JSONL, ``{"prompt": ...}``), never used to train the reward model or PPO."""
    max_prompts: int | None = None
    """Use only the first this many prompts (null = all). With ``samples_per_prompt`` it sizes the evidence: the
    win rate's 95 % half-width is about 0.98 * sd(per-prompt win rate) / sqrt(prompts) (see docs/judges.md)."""
    samples_per_prompt: int = 4
    """Seeded samples per prompt from each model; sample k of the candidate and of the champion use the same
    seed, and each (prompt, sample) is one comparison. 4 keeps the demo's win-rate interval (52 held-out prompts)
    within 7 points either side (docs/benchmarks.md, "Measurements behind the defaults")."""
    max_new_tokens: int = 32
    """Reply length cap (the PPO rollout's, so the candidate is judged at the length it was trained for)."""
    temperature: float = 0.7
    """Sampling temperature (PPO's; the KL is computed from logits divided by it, as in training)."""
    batch_size: int = 128
    """Replies generated per batch: ``batch_size // samples_per_prompt`` prompts with all their samples (each prompt
    encoded once). On CPU a decode step costs about the same for 50 rows as for 100, so larger batches are
    cheaper per reply (docs/benchmarks.md, "A faster evaluation")."""
    seed: int = 1234
    """Base sampling seed (different from PPO's so evaluation never replays training rollouts)."""
    confidence: float = 0.95
    """Confidence level of the win rate's interval."""
    bootstrap_resamples: int = 2000
    """Resamples of prompts for the percentile bootstrap interval (Efron & Tibshirani 1993)."""
    repeat_ngram: int = 3
    """A reply is *repetitive* (degenerate) when under ``min_distinct_ngrams`` of its word n-grams of this size are
    distinct."""
    min_distinct_ngrams: float = 0.5
    """See ``repeat_ngram``; empty replies are degenerate too."""
    overopt_tolerance: float = 0.02
    """Disagreement flags: the judge and the training reward model lean opposite ways, the one preferring the
    champion by more than this (its win rate below 0.5 - tolerance). Both directions are flagged: reward model
    for the candidate and judge against (over-optimisation), and judge for it while the reward model is against."""
    bf16: bool = True
    """Sample, score and compute the KL under bf16 autocast where the device computes bf16 natively (see
    ``components/models/precision.py``); float32 elsewhere."""
    judge: Literal["demo", "reward_model", "llm", "human"] = "demo"
    """Who decides which reply is better (``components/decide/judges``, docs/judges.md): ``demo`` (the demo task's
    annotator; only with ``seeding.demo_task: true``), ``reward_model`` (a judge reward model trained on the slice
    ``reward.judge_fraction`` of the human pairs the training reward model never sees) or ``llm`` (a pairwise
    LLM judge over an OpenAI-compatible endpoint, ``llm_judge``) or ``human`` (people on the rater page compare the
    candidate, served on canary, with the champion; ``human_judge``)."""
    judge_min_accuracy: float = 0.6
    """With ``judge: reward_model``: the judge's held-out accuracy on human pairs below this and the gate refuses
    to decide (a judge that agrees with people little more than a coin cannot promote anything)."""
    judge_reward: JudgeRewardConfig = field(default_factory=JudgeRewardConfig)
    """The judge reward model (``judge: reward_model``)."""
    llm_judge: LLMJudgeConfig = field(default_factory=LLMJudgeConfig)
    """The LLM judge's endpoint and protocol (``judge: llm``)."""
    human_judge: HumanJudgeConfig = field(default_factory=HumanJudgeConfig)
    """How many human comparisons, how long to wait for them, how often to count (``judge: human``)."""
    aa_check: bool = True
    """An A/A figure: the champion's sample 2i judged against its sample 2i+1 (other seeds) on every prompt; it
    should read about 50 %. Needs ``samples_per_prompt`` >= 2; costs judge calls, no generation."""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError("max_prompts must be >= 1 or null")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.bootstrap_resamples < 100:
            raise ValueError("batch_size, max_new_tokens must be >= 1 and bootstrap_resamples >= 100")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0.0 <= self.judge_min_accuracy <= 1.0:
            raise ValueError(f"judge_min_accuracy must be in [0, 1], got {self.judge_min_accuracy}")
