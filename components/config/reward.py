"""``RewardConfig``: the reward-model stage's settings (``params.yaml`` section ``reward``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RewardConfig:
    """How the reward model is built, trained on preference pairs and evaluated.

    Defaults run on a CPU in minutes (the measurements behind them are in ``docs/benchmarks.md``); the ``tiny``
    backbone makes the whole stage run in seconds for tests.
    """

    backbone: str = "smollm2-135m-instruct"
    """Model spec the reward model is initialised from (same specs as ``model.base``: the embedded
    SmolLM2, ``tiny``, a local transformers folder or a hub id). A scalar head is added on top."""
    trainable: Literal["all", "top", "lora", "head"] = "top"
    """Which weights train: ``all`` (full fine-tune), ``top`` (the top ``train_layers`` blocks, the
    final norm and the head; lower blocks and embeddings frozen), ``lora`` (LoRA adapters on every
    block's attention/MLP projections plus the head, merged on save) or ``head`` (the head alone)."""
    train_layers: int = 4
    """With ``trainable: top``: how many of the top transformer blocks train."""
    lora_r: int = 16
    """With ``trainable: lora``: adapter rank."""
    lora_alpha: int = 32
    """With ``trainable: lora``: adapter scale numerator (scale = alpha / r)."""
    max_length: int = 256
    """Token budget per prompt+response; longer texts lose their *start* (the prompt's beginning), so
    the response and its final token, where the score is read, are always kept."""
    lr: float = 3e-4
    """Peak AdamW learning rate, decayed linearly to 0 over training (after ``warmup_ratio``)."""
    warmup_ratio: float = 0.05
    """Fraction of the optimiser steps spent warming the learning rate up linearly from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    epochs: int = 3
    """Passes over the training pairs (from the backbone with a fresh head)."""
    init_from: Literal["base", "champion"] = "base"
    """Where training starts: ``base`` (the backbone with a fresh head, every time) or ``champion`` (the reward
    model the champion policy was trained with, from the registry, for ``warm_epochs`` passes over all the pairs;
    the base model as champion, a reward model of another backbone or one missing from the store start from
    ``base``). The champion is the one ``registry/ppo_parent.json`` names, a dep of the stage."""
    warm_epochs: int = 1
    """With ``init_from: champion``: passes over the training pairs when a reward model to start from exists."""
    batch_size: int = 8
    """Preference pairs per optimiser step (2 x batch_size sequences in one forward pass)."""
    eval_batch_size: int = 16
    """Pairs per forward pass when scoring (evaluation, normalisation)."""
    max_train_pairs: int | None = None
    """Cap on the training pairs (a seeded random subset) to bound CPU time; null = all."""
    seed: int = 0
    """Seed for the head's initialisation, the split and the batch order."""
    eval_fraction: float = 0.2
    """Fraction of *prompts* held out for evaluation (all pairs of a prompt land on the same side)."""
    use_margin: bool = True
    """Subtract the pair's ``margin`` column inside the loss (null margins count as 0)."""
    center_rewards: bool = True
    """Normalise the saved model's scores to mean 0, std 1 over the training prompts' responses (the
    statistics are stored with the model and applied by ``RewardModel.score``); false = raw scores."""
    center_rewards_coef: float = 0.0
    """Weight of the auxiliary loss coef * mean((r_c + r_r)^2) that keeps raw rewards near 0 (TRL's
    ``center_rewards_coefficient``, Eisenstein et al. 2023); 0 = off."""
    normalize_max_pairs: int | None = 256
    """Pairs (a seeded random subset of the training pairs, both replies) the normalisation statistics are
    estimated from; null = all. lm-human-preferences estimates them from 256 samples likewise."""
    log_every: int = 1
    """Write a line to the step log every this many optimiser steps."""
    val_fraction: float = 0.0
    """Early stopping: this share of the training *prompts* (with their pairs) is set aside as a validation
    split, the validation loss is measured ``evals_per_epoch`` times per epoch, and the weights of the
    lowest one are kept; 0 = off (train for ``epochs`` and keep the last weights)."""
    evals_per_epoch: int = 2
    """With ``val_fraction`` > 0: validation points per epoch."""
    average_epochs: int = 0
    """Checkpoint averaging: keep the mean of the trainable weights at the ends of the last this many
    epochs instead of the last weights; 0 or 1 = off. Ignored when early stopping is on."""
    bf16: bool = True
    """Forward passes under bf16 autocast where the device computes bf16 natively (``components/models/precision.py``);
    weights, loss and optimiser stay float32; float32 everywhere else."""
    feature_cache_gib: float = 2.0
    """With ``trainable: top``: memory allowed for caching the frozen lower blocks' output for every training
    text (computed once; each step then runs only the top blocks: same scores, a fraction of the compute).
    0 = off; a cache that would be larger is not built."""
    disk_cache_gib: float = 2.0
    """With the frozen-block cache: disk space its per-text output may keep in the project's
    ``staging/reward-features`` between runs (least recently used first out), so a retrain on texts seen
    before (the seed pairs, trained on again in every later round) reads their frozen-block output instead of
    recomputing it (the same bytes: keyed by the frozen weights, the arithmetic and the token ids). 0 = off."""
    judge_fraction: float = 0.0
    """Share of the prompts (by a hash of the normalised prompt, :mod:`components.data.judge_slice`) whose pairs
    are reserved for the judge reward model (``eval.judge: reward_model``): this reward model never trains or
    evaluates on them; 0 = no judge slice (the demo judges with its own annotator)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size and eval_batch_size must be >= 1")
        if self.epochs < 1 or self.warm_epochs < 1:
            raise ValueError("epochs and warm_epochs must be >= 1")
        if self.init_from not in ("base", "champion"):
            raise ValueError(f"init_from must be base or champion, got {self.init_from!r}")
        if not 0.0 <= self.judge_fraction < 1.0:
            raise ValueError(f"judge_fraction must be in [0, 1), got {self.judge_fraction}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {self.max_length}")
        if self.train_layers < 0:
            raise ValueError("train_layers must be >= 0")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.max_train_pairs is not None and self.max_train_pairs < 1:
            raise ValueError("max_train_pairs must be >= 1 or null")
        if self.normalize_max_pairs is not None and self.normalize_max_pairs < 1:
            raise ValueError("normalize_max_pairs must be >= 1 or null")
        if self.log_every < 1:
            raise ValueError("log_every must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.evals_per_epoch < 1:
            raise ValueError("evals_per_epoch must be >= 1")
        if not 0 <= self.average_epochs <= self.epochs:
            raise ValueError(f"average_epochs must be in [0, epochs={self.epochs}], got {self.average_epochs}")
