"""Train the reward model on preference pairs (Bradley–Terry), evaluate it, normalise it, save it.

``train_reward`` reads top to bottom as numbered steps, one function each:
1. read the pairs and split them by prompt (train / held-out): :func:`read_and_split`;
2. build the backbone + scalar head and choose what trains: :func:`_fit_with_cache`, :func:`select_trainable`;
3. optimise the Bradley–Terry loss (chosen and rejected in one forward pass), logging every step: :func:`_fit`;
4. normalise: mean and std of the raw rewards of the training prompts' responses, computed as the saved
   model's ``score`` computes them (its function and its precision), so its scores are centred by construction:
   :func:`normalisation_statistics`;
5. evaluate on the held-out pairs: :func:`evaluate_heldout`;
6. save the transformers folder + manifest, the metrics JSON, the step log and its plot: :func:`reward_manifest`.

Letters: B pairs per batch.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from components.common.fsutil import atomic_dir
from components.common.progress import Progress, report
from components.config import to_dict
from components.config.reward import RewardConfig
from components.data.prompt_pool import heldout_keys
from components.models.precision import autocast
from components.models.reward.disk_cache import DiskActivationCache
from components.models.reward.frozen_cache import FrozenBlockCache
from components.models.reward.losses import (
    bradley_terry_loss,
    center_loss,
    normalise,
    preference_accuracy,
    reward_stats,
)
from components.models.reward.model import (
    RewardModel,
    build_reward_model,
    count_trainable,
    load_trained_weights,
    pair_scores,
    reward_ids,
    transformer_layers,
    truncation_stats,
)
from components.models.reward.pairs import (
    Pairs,
    file_md5,
    first_pair_per_prompt,
    pool_heldout_rows,
    read_pairs,
    split_by_prompt,
)
from components.records.lineage import code_revision, data_version

log = logging.getLogger(__name__)

STEP_LOG = "reward_train.jsonl"
STEP_CSV = "reward_train.csv"
STEP_PNG = "reward_train.png"
METRICS_JSON = "reward.json"
MANIFEST = "manifest.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class RewardResult:
    """What a training run produced."""

    model_dir: Path
    metrics: dict[str, Any]
    """The content of ``metrics/reward.json`` (``eval``, ``train``, ``normalization`` groups)."""
    manifest: dict[str, Any] = field(repr=False)

    @property
    def eval_accuracy(self) -> float | None:
        return self.metrics["eval"].get("accuracy")


# ---------------------------------------------------------------------------------------------
# 2. what trains
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmStart:
    """A registered reward model to train on from (``reward.init_from: champion``)."""

    version: str
    path: Path
    champion: str
    """The champion policy version it trained."""


def select_trainable(model: PreTrainedModel, cfg: RewardConfig) -> PreTrainedModel:
    """Freeze what ``cfg.trainable`` says; returns the module to optimise (a PeftModel for ``lora``).

    The forward pass always goes through the original model object (LoRA layers are injected in place).
    """
    if cfg.trainable == "all":
        model.requires_grad_(True)
        return model
    if cfg.trainable == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
        peft_model = get_peft_model(model, lora)
        model.score.weight.requires_grad_(True)
        return peft_model
    model.requires_grad_(False)
    model.score.requires_grad_(True)
    if cfg.trainable == "top" and cfg.train_layers > 0:
        layers = transformer_layers(model)
        for block in layers[-cfg.train_layers :]:
            block.requires_grad_(True)
        norm = getattr(getattr(model, model.base_model_prefix), "norm", None)
        if norm is not None:
            norm.requires_grad_(True)
    return model


def _merged(trained: PreTrainedModel) -> PreTrainedModel:
    """The plain transformers model to save (LoRA adapters merged into the weights)."""
    if hasattr(trained, "merge_and_unload"):
        return trained.merge_and_unload()
    return trained


# ---------------------------------------------------------------------------------------------
# 3. optimise
# ---------------------------------------------------------------------------------------------


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _trainable_state(trainable: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the weights that train (the only ones early stopping or averaging changes)."""
    return {n: p.detach().clone() for n, p in trainable.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable(trainable: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for n, p in trainable.named_parameters():
        if n in state:
            p.copy_(state[n])


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several snapshots of the same weights (checkpoint averaging)."""
    if not states:
        raise ValueError("average_states needs at least one snapshot")
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}


@torch.no_grad()
def _validation_loss(model: PreTrainedModel, tok: PreTrainedTokenizerBase, val: Pairs, cfg: RewardConfig) -> float:
    """Bradley-Terry loss (no margin) on the validation pairs; the model is put back in train mode."""
    r_c, r_r = score_pairs(model, tok, val, cfg, desc="validation")
    model.train()
    return bradley_terry_loss(r_c, r_r).item()


@dataclass
class _FitLog:
    """What the optimisation loop keeps between steps."""

    step: int = 0
    truncated: int = 0
    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    """The validation point with the lowest loss so far: (loss, step, trainable weights)."""
    val_curve: list[dict[str, float]] = field(default_factory=list)
    epoch_ends: list[dict[str, torch.Tensor]] = field(default_factory=list)


def _optimiser(params: list[torch.nn.Parameter], cfg: RewardConfig, total: int) -> tuple[Any, Any]:
    """AdamW and its schedule: linear warmup then linear decay to 0 (Ouyang et al. 2022 / TRL RewardConfig's
    default scheduler)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)


def _train_step(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    batch: Pairs,
    cfg: RewardConfig,
    cache: FrozenBlockCache | None,
    params: list[torch.nn.Parameter],
    opt: Any,
    sched: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One optimiser step on B pairs: chosen and rejected in one forward pass (the top blocks only, from
    ``cache``, when given), the Bradley–Terry loss (with the margin and the centring term when configured),
    gradient clipping, the step and the schedule's step. Returns ``(loss, r_chosen, r_rejected, truncated)``,
    the rewards detached, shape (B,)."""
    with autocast(next(model.parameters()).device, cfg.bf16):
        if cache is not None:
            r_c, r_r, truncated = cache.pair_scores(batch.prompts, batch.chosen, batch.rejected)
        else:
            r_c, r_r, truncated = pair_scores(model, tok, batch.prompts, batch.chosen, batch.rejected, cfg.max_length)
    r_c, r_r = r_c.float(), r_r.float()  # shape: (B,) each
    margin = torch.tensor(batch.margins, dtype=r_c.dtype) if cfg.use_margin else None
    loss = bradley_terry_loss(r_c, r_r, margin)
    if cfg.center_rewards_coef > 0:
        loss = loss + cfg.center_rewards_coef * center_loss(r_c, r_r)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    sched.step()
    return loss.detach(), r_c.detach(), r_r.detach(), truncated


def _step_record(
    fit: _FitLog, epoch: int, steps_per_epoch: int, loss: float, accuracy: float, margin: float, lr: float, t0: float
) -> dict[str, Any]:
    """One line of the step log (``metrics/reward_train.jsonl``)."""
    return {
        "step": fit.step,
        "epoch": epoch + step_fraction(fit.step, steps_per_epoch, epoch),
        "loss": round(loss, 6),
        "accuracy": round(accuracy, 6),
        "margin": round(margin, 6),
        "lr": lr,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _validation_point(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, val: Pairs, cfg: RewardConfig, trainable: torch.nn.Module,
    fit: _FitLog,
) -> None:  # fmt: skip
    """Measure the validation loss; keep the weights when it is the lowest so far (early stopping)."""
    loss = _validation_loss(model, tok, val, cfg)
    fit.val_curve.append({"step": fit.step, "loss": round(loss, 6)})
    if fit.best is None or loss < fit.best[0]:
        fit.best = (loss, fit.step, _trainable_state(trainable))


def _keep_weights(trainable: torch.nn.Module, fit: _FitLog, val: Pairs | None, total: int) -> dict[str, Any]:
    """Load the weights to keep: the best validation point's, else the mean of the last epochs' ends, else the
    last ones (already loaded). Returns what the metrics record about the choice."""
    if fit.best is not None:
        loss, step, state = fit.best
        _load_trainable(trainable, state)
        log.info("early stopping: kept step %d of %d (validation loss %.4f)", step, total, loss)
        return {"best_step": step, "best_val_loss": round(loss, 6), "val_pairs": len(val or []), "val": fit.val_curve}
    if len(fit.epoch_ends) > 1:
        _load_trainable(trainable, average_states(fit.epoch_ends))
        return {"averaged_epochs": len(fit.epoch_ends)}
    return {}


def _fit(
    model: PreTrainedModel,
    trainable: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    train: Pairs,
    cfg: RewardConfig,
    step_log: Path,
    val: Pairs | None = None,
    progress: Progress | None = None,
    cache: FrozenBlockCache | None = None,
) -> dict[str, Any]:
    """Optimise the reward model on ``train``; returns the training metrics.

    1. AdamW on the weights that train, warmup then linear decay over ``epochs`` passes (:func:`_optimiser`);
    2. per batch of pairs (seeded order), one optimiser step (:func:`_train_step`), a line in ``step_log``
       every ``log_every`` steps;
    3. with ``val``: the validation loss ``evals_per_epoch`` times per epoch (:func:`_validation_point`);
    4. with ``average_epochs``: the trainable weights at the last epochs' ends;
    5. keep the best validation point's weights, else the average, else the last (:func:`_keep_weights`).

    With ``cache`` (the frozen blocks' output for every training text) each step runs only the top blocks."""
    params = [p for p in trainable.parameters() if p.requires_grad]
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt, sched = _optimiser(params, cfg, total)  # 1.
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_points = {max(1, round(j * steps_per_epoch / cfg.evals_per_epoch)) for j in range(1, cfg.evals_per_epoch + 1)}
    fit, t0 = _FitLog(), time.perf_counter()
    model.train()
    bar = tqdm(total=total, desc="reward model", unit="step", mininterval=2.0, disable=progress is not None)
    with open(step_log, "w", encoding="utf-8") as logf, bar:
        for epoch in range(cfg.epochs):
            for idx in _batches(len(train), cfg.batch_size, gen):
                loss, r_c, r_r, truncated = _train_step(model, tok, train.subset(idx), cfg, cache, params, opt, sched)
                fit.step, fit.truncated = fit.step + 1, fit.truncated + truncated  # 2.
                accuracy = preference_accuracy(r_c, r_r).item()
                fit.losses.append(loss.item())
                fit.accuracies.append(accuracy)
                if fit.step % cfg.log_every == 0 or fit.step == total:
                    margin = (r_c - r_r).mean().item()
                    record = _step_record(fit, epoch, steps_per_epoch, loss.item(), accuracy, margin,
                                          sched.get_last_lr()[0], t0)  # fmt: skip
                    logf.write(json.dumps(record) + "\n")
                    logf.flush()
                bar.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{accuracy:.2f}")
                bar.update(1)
                report(progress, fit.step, total, f"reward model loss {loss.item():.3f}")
                if val is not None and len(val) and fit.step - epoch * steps_per_epoch in eval_points:
                    _validation_point(model, tok, val, cfg, trainable, fit)  # 3.
            if cfg.average_epochs and epoch >= cfg.epochs - cfg.average_epochs:
                fit.epoch_ends.append(_trainable_state(trainable))  # 4.
    extra = _keep_weights(trainable, fit, val, total)  # 5.
    seconds = time.perf_counter() - t0
    tail = max(1, steps_per_epoch)  # the last epoch's worth of steps
    return {
        "pairs": len(train),
        "steps": fit.step,
        "epochs": cfg.epochs,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(fit.step, 1), 4),
        "last_epoch_loss": round(float(np.mean(fit.losses[-tail:])), 6),
        "last_epoch_accuracy": round(float(np.mean(fit.accuracies[-tail:])), 6),
        "truncated_texts": fit.truncated,
        "trainable_params": count_trainable(trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        **extra,
    }


def step_fraction(step: int, steps_per_epoch: int, epoch: int) -> float:
    """Fraction of the current epoch done after ``step`` (for a fractional epoch axis)."""
    return round((step - epoch * steps_per_epoch) / steps_per_epoch, 4)


# ---------------------------------------------------------------------------------------------
# 4.-5. normalise and evaluate
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def score_pairs(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    pairs: Pairs,
    cfg: RewardConfig,
    desc: str = "scoring",
    cache: FrozenBlockCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rewards of every pair's chosen and rejected reply, shape (len(pairs),) each; pairs whose texts
    are all in ``cache`` run only the top blocks."""
    model.eval()
    device = next(model.parameters()).device
    rc, rr = [], []
    batches = range(0, len(pairs), cfg.eval_batch_size)
    for i in tqdm(batches, desc=desc, unit="batch", mininterval=2.0, disable=None):  # None: no bar off a terminal
        b = pairs.subset(list(range(i, min(i + cfg.eval_batch_size, len(pairs)))))
        keys = [*zip(b.prompts, b.chosen), *zip(b.prompts, b.rejected)]
        with autocast(device, cfg.bf16):
            if cache is not None and all(key in cache for key in keys):
                c, r, _ = cache.pair_scores(b.prompts, b.chosen, b.rejected)
            else:
                c, r, _ = pair_scores(model, tok, b.prompts, b.chosen, b.rejected, cfg.max_length)
        rc.append(c.float().cpu())
        rr.append(r.float().cpu())
    return torch.cat(rc), torch.cat(rr)


@torch.no_grad()
def normalisation_scores(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    pairs: Pairs,
    cfg: RewardConfig,
    cache: FrozenBlockCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rewards of the normalisation pairs' chosen and rejected replies, computed as the saved model's
    ``score`` computes them: :meth:`RewardModel.raw_scores` (texts in ``2 * eval_batch_size`` batches) in the
    model's precision ``cfg.bf16``. With the frozen-block cache the same blocks run in the same precision from
    the cached lower-block output (the full pass split at the frozen boundary, without paying the lower
    blocks a second time)."""
    if cache is not None:
        return score_pairs(model, tok, pairs, cfg, desc="normalisation", cache=cache)
    scorer = RewardModel(model, tok, max_length=cfg.max_length, bf16=cfg.bf16)
    raw = scorer.raw_scores([*pairs.prompts, *pairs.prompts], [*pairs.chosen, *pairs.rejected], 2 * cfg.eval_batch_size)
    return raw[: len(pairs)], raw[len(pairs) :]


def evaluate_scores(
    raw_c: torch.Tensor, raw_r: torch.Tensor, margins: torch.Tensor | None, mean: float, std: float
) -> dict[str, float]:
    """Held-out metrics: accuracy and the loss on raw rewards; margin and reward statistics in normalised
    units (what PPO sees)."""
    r_c, r_r = normalise(raw_c, mean, std), normalise(raw_r, mean, std)
    both = torch.cat([r_c, r_r])
    return {
        "pairs": int(r_c.numel()),
        "accuracy": round(preference_accuracy(r_c, r_r).item(), 6),
        "loss": round(bradley_terry_loss(raw_c, raw_r, margins).item(), 6),
        "mean_margin": round((r_c - r_r).mean().item(), 6),
        "reward_mean": round(both.mean().item(), 6),
        "reward_std": round(both.std(unbiased=False).item(), 6),
        "chosen_mean": round(r_c.mean().item(), 6),
        "rejected_mean": round(r_r.mean().item(), 6),
    }


# ---------------------------------------------------------------------------------------------
# 6. lineage and outputs
# ---------------------------------------------------------------------------------------------


def write_step_table(step_log: Path, csv_path: Path, png_path: Path) -> None:
    """The step log as CSV (``dvc plots`` reads CSV, not JSONL) and as a PNG of loss and accuracy."""
    rows = [json.loads(line) for line in step_log.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        values = np.array([r[key] for r in rows], dtype=float)
        ax.plot(steps, values, alpha=0.35, label="per step")
        window = max(1, len(values) // 10)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=f"mean of {window}")
        ax.set_xlabel("step")
        ax.set_title(f"reward model: train {key}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def fit_reward_model(
    train: Pairs,
    cfg: RewardConfig,
    step_log: Path,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Steps 2-3: build the model, optimise it on ``train`` and return it (LoRA merged) with its
    training metrics. With ``cfg.val_fraction`` > 0 that share of the training *prompts* is set aside
    to pick the best evaluation point (early stopping). Runs on CUDA when it is available."""
    model, tok, metrics, _ = _fit_with_cache(train, cfg, step_log, device, progress)
    return model, tok, metrics


def frozen_cache(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    train: Pairs,
    cfg: RewardConfig,
    progress: Progress | None,
    store: DiskActivationCache | None = None,
) -> FrozenBlockCache | None:
    """The frozen blocks' output for every training text when only the top blocks train and it fits in
    ``cfg.feature_cache_gib``; else None (every step then runs the whole model). Texts the disk cache ``store``
    holds are read from it, the others computed and written to it."""
    n_layers = len(transformer_layers(model)) if cfg.trainable == "top" else 0
    if not 0 < cfg.train_layers < n_layers or cfg.feature_cache_gib <= 0:
        return None
    sample = train.subset(list(range(min(len(train), 64))))
    lengths = [len(reward_ids(tok, p, r)) for p, r in zip(sample.prompts, sample.chosen)]
    mean_tokens = min(float(np.mean(lengths)), cfg.max_length)
    need = FrozenBlockCache.nbytes_estimate(2 * len(train), mean_tokens, model.config.hidden_size)
    if need > cfg.feature_cache_gib * 2**30:
        log.info("frozen-block cache would take %.1f GiB > reward.feature_cache_gib: every step runs the whole model",
                 need / 2**30)  # fmt: skip
        return None
    cache = FrozenBlockCache(model, tok, cfg.max_length, cfg.train_layers)
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    with autocast(device, cfg.bf16):
        cache.build(
            [*train.prompts, *train.prompts],
            [*train.chosen, *train.rejected],
            batch_size=2 * cfg.eval_batch_size,
            progress=lambda done, total: report(progress, done, total, "reward model: frozen blocks, once"),
            store=store,
        )
    log.info("cached the %d frozen blocks' output for %d texts in %.1f s (about %.0f MiB; %d from the disk cache)",
             n_layers - cfg.train_layers, len(cache.features), time.perf_counter() - t0, need / 2**20,
             store.hits if store is not None else 0)  # fmt: skip
    return cache


def _fits(cache: FrozenBlockCache, more_texts: int, cfg: RewardConfig) -> bool:
    """Whether ``more_texts`` texts like the cached ones still fit in ``cfg.feature_cache_gib``."""
    n = len(cache.features)
    held = sum(f.numel() * f.element_size() for f in cache.features.values())
    return n > 0 and held * (n + more_texts) / n <= cfg.feature_cache_gib * 2**30


def _fit_with_cache(
    train: Pairs,
    cfg: RewardConfig,
    step_log: Path,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    store: DiskActivationCache | None = None,
    init: WarmStart | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any], FrozenBlockCache | None]:
    """Steps 2-3; with ``init`` the model starts from that reward model's weights and trains
    ``cfg.warm_epochs`` passes instead of ``cfg.epochs``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    val = None
    if cfg.val_fraction > 0:
        fit_idx, val_idx = split_by_prompt(train, cfg.val_fraction, cfg.seed + 2)
        train, val = train.subset(fit_idx), train.subset(val_idx)
        log.info("early stopping on %d validation pairs (reward.val_fraction=%s)", len(val), cfg.val_fraction)
    model, tok = build_reward_model(cfg.backbone, seed=cfg.seed)
    if init is not None:
        load_trained_weights(model, init.path)
        cfg = replace(cfg, epochs=cfg.warm_epochs, average_epochs=min(cfg.average_epochs, cfg.warm_epochs))
        log.info("reward model starts from %s (the champion's), %d pass(es) over the pairs", init.version, cfg.epochs)
    model.to(device)
    trainable = select_trainable(model, cfg)
    log.info("reward model on %s: %d of %d parameters train (%s)", cfg.backbone, count_trainable(trainable),
             sum(p.numel() for p in model.parameters()), cfg.trainable)  # fmt: skip
    t_cache = time.perf_counter()
    cache = frozen_cache(model, tok, train, cfg, progress, store)
    t_cache = time.perf_counter() - t_cache
    train_metrics = _fit(model, trainable, tok, train, cfg, step_log, val, progress, cache)
    if train_metrics["truncated_texts"]:
        log.warning("%d texts were longer than reward.max_length=%d and lost their start",
                    train_metrics["truncated_texts"], cfg.max_length)  # fmt: skip
    train_metrics["frozen_block_cache"] = cache is not None
    train_metrics["frozen_cache_seconds"] = round(t_cache, 2)  # not in "seconds" (the optimisation loop)
    return _merged(trainable), tok, train_metrics, cache


def pairs_for_side(pairs: Pairs, fraction: float, side: str) -> tuple[Pairs, dict[str, Any]]:
    """The pairs one reward model may see: ``train`` drops the judge's slice, ``judge`` keeps only it."""
    from components.data.judge_slice import in_judge_slice, slice_record

    if side not in ("train", "judge"):
        raise ValueError(f"side must be 'train' or 'judge', got {side!r}")
    if side == "judge" and fraction <= 0:
        raise ValueError("the judge reward model needs reward.judge_fraction > 0 (its slice of the pairs)")
    judged = [in_judge_slice(p, fraction) for p in pairs.prompts]
    keep = [i for i, j in enumerate(judged) if j == (side == "judge")]
    if len(keep) < len(pairs):
        log.info("%d of %d pairs kept for the %s reward model (judge slice %.0f %% of prompts)",
                 len(keep), len(pairs), side, 100 * fraction)  # fmt: skip
    return pairs.subset(keep), slice_record(fraction, side, len(keep), len(pairs) - len(keep))


@dataclass(frozen=True)
class PairSplit:
    """Step 1's result: the pairs one side may see and their split by prompt."""

    pairs: Pairs
    train: Pairs
    held: Pairs
    judge_slice: dict[str, Any]
    """The judge-slice rule and counts (:func:`pairs_for_side`)."""
    pool_heldout: int
    """Pairs on the prompt pool's held-out prompts (always evaluated on, never trained on)."""


def read_and_split(pairs_path: Path, cfg: RewardConfig, side: str, root: Path) -> PairSplit:
    """Step 1: the pairs this side of the judge slice may see, split by prompt into train and held-out; pairs on
    the prompt pool's held-out prompts join the held-out side; train capped at ``max_train_pairs`` (a seeded
    subset)."""
    pairs, judge_slice = pairs_for_side(read_pairs(pairs_path), cfg.judge_fraction, side)
    if len(pairs) == 0:
        raise ValueError(
            f"{pairs_path}: no pairs left for the {side} side of the judge slice (reward.judge_fraction="
            f"{cfg.judge_fraction}); import more feedback or change the fraction"
        )
    train_idx, eval_idx = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
    pool_held = pool_heldout_rows(pairs, heldout_keys(root))
    if len(pool_held):  # held-out prompts of the pool never train anything: their pairs join the evaluation
        log.info("%d pairs are on held-out prompts of the prompt pool: evaluated on, never trained on", len(pool_held))
        train_idx = np.setdiff1d(train_idx, pool_held)
        eval_idx = np.union1d(eval_idx, pool_held)
    if cfg.max_train_pairs is not None and len(train_idx) > cfg.max_train_pairs:
        rng = np.random.default_rng(cfg.seed)
        train_idx = np.sort(rng.choice(train_idx, size=cfg.max_train_pairs, replace=False))
        log.info("using %d of the training pairs (reward.max_train_pairs)", cfg.max_train_pairs)
    train, held = pairs.subset(train_idx), pairs.subset(eval_idx)
    log.info("%d pairs: %d train, %d held-out (by prompt)", len(pairs), len(train), len(held))
    if len(train) == 0:
        raise ValueError(f"{pairs_path}: no training pairs left after the held-out split; add feedback")
    return PairSplit(pairs, train, held, judge_slice, len(pool_held))


def cache_heldout(
    model: PreTrainedModel,
    cache: FrozenBlockCache | None,
    held: Pairs,
    cfg: RewardConfig,
    disk_cache: DiskActivationCache | None,
) -> dict[str, Any]:
    """After step 3: the held-out texts' frozen blocks once, through the cache (the same arithmetic as the full
    pass) when they fit, so the disk cache keeps them too: a later retrain may train on these prompts or hold
    them out again. Returns the training metrics it adds."""
    if cache is None or not len(held) or not _fits(cache, 2 * len(held), cfg):
        return {}
    t0 = time.perf_counter()
    hits = disk_cache.hits if disk_cache is not None else 0
    with autocast(next(model.parameters()).device, cfg.bf16):
        cache.build([*held.prompts, *held.prompts], [*held.chosen, *held.rejected],
                    batch_size=2 * cfg.eval_batch_size, store=disk_cache)  # fmt: skip
    added: dict[str, Any] = {"frozen_cache_heldout_seconds": round(time.perf_counter() - t0, 2)}
    if disk_cache is not None:
        added["disk_cache_hits"] = disk_cache.hits
        log.info("held-out texts' frozen blocks in %.1f s (%d read from the disk cache)",
                 time.perf_counter() - t0, disk_cache.hits - hits)  # fmt: skip
    return added


def normalisation_statistics(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    train: Pairs,
    cfg: RewardConfig,
    cache: FrozenBlockCache | None,
) -> tuple[float, float, dict[str, Any]]:
    """Step 4: mean and std of the raw rewards of the training prompts' responses (both replies of up to
    ``normalize_max_pairs`` pairs, a seeded subset), scored as the saved model scores (:func:`normalisation_scores`);
    ``(0, 1)`` without ``center_rewards``. Returns ``(mean, std, training metrics it adds)``."""
    norm_set = train
    if cfg.normalize_max_pairs is not None and len(train) > cfg.normalize_max_pairs:
        pick = np.random.default_rng(cfg.seed + 1).choice(len(train), size=cfg.normalize_max_pairs, replace=False)
        norm_set = train.subset(np.sort(pick))
    tr_c, tr_r = normalisation_scores(model, tok, norm_set, cfg, cache)
    mean, std = reward_stats(torch.cat([tr_c, tr_r])) if cfg.center_rewards else (0.0, 1.0)
    added = {"accuracy": round(preference_accuracy(tr_c, tr_r).item(), 6), "accuracy_pairs": len(norm_set)}
    return mean, std, added


def evaluate_heldout(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    held: Pairs,
    cfg: RewardConfig,
    cache: FrozenBlockCache | None,
    mean: float,
    std: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 5: held-out metrics (:func:`evaluate_scores`, plus the first pair of each prompt's accuracy when
    prompts have several), and the ``check``: the raw scores of the first held-out pairs as the saved model will
    score them (its scoring function and precision), so a reload can be compared closely. Returns
    ``(eval metrics, check)``."""
    if not len(held):
        log.warning("no held-out pairs (reward.eval_fraction=%s): accuracy not measured", cfg.eval_fraction)
        return {"pairs": 0}, {}
    ev_c, ev_r = score_pairs(model, tok, held, cfg, desc="held-out eval", cache=cache)
    first_held = held.subset(list(range(min(4, len(held)))))
    scorer = RewardModel(model, tok, max_length=cfg.max_length, bf16=cfg.bf16)
    check = {
        "heldout_pairs": len(first_held),
        "precision": scorer.precision,
        "raw_chosen": [round(float(x), 6) for x in scorer.raw_scores(first_held.prompts, first_held.chosen)],
        "raw_rejected": [round(float(x), 6) for x in scorer.raw_scores(first_held.prompts, first_held.rejected)],
    }
    margins = torch.tensor(held.margins) if cfg.use_margin else None
    metrics = evaluate_scores(ev_c, ev_r, margins, mean, std)
    metrics["raw_mean_margin"] = round((ev_c - ev_r).mean().item(), 6)
    first = torch.as_tensor(first_pair_per_prompt(held))
    if len(first) < len(held):  # several pairs per prompt: also the accuracy on each prompt's first pair
        metrics["first_pair_accuracy"] = round(preference_accuracy(ev_c[first], ev_r[first]).item(), 6)
        metrics["first_pairs"] = len(first)
    log.info("held-out: accuracy %.3f on %d pairs, mean margin %.3f",
             metrics["accuracy"], len(held), metrics["mean_margin"])  # fmt: skip
    return metrics, check


def truncation_report(tok: PreTrainedTokenizerBase, pairs: Pairs, cfg: RewardConfig) -> dict[str, Any]:
    """How much ``max_length`` cuts from every text of the pairs (:func:`truncation_stats`), logged as a warning
    when it cuts anything."""
    cut = truncation_stats(tok, [*pairs.prompts, *pairs.prompts], [*pairs.chosen, *pairs.rejected], cfg.max_length)
    if cut["truncated"]:
        log.warning(
            "%d of %d texts are longer than reward.max_length=%d: %d tokens cut in all (mean %.1f, at most %d per "
            "text), from the start of the conversation, never from the reply scored%s",
            cut["truncated"], cut["texts"], cfg.max_length, cut["tokens_cut"], cut["mean_cut_of_truncated"],
            cut["max_cut"], f"; {cut['replies_cut']} replies alone are longer" if cut["replies_cut"] else "",
        )  # fmt: skip
    return cut


def reward_manifest(
    pairs_path: Path, cfg: RewardConfig, root: Path, *, metrics: dict[str, Any], judge_slice: dict[str, Any],
    mean: float, std: float, check: dict[str, Any], init: WarmStart | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Step 6's lineage record (``manifest.json``): a fresh version, the data, params, metrics, normalisation,
    the reload check, the code revision and the library versions; ``parent``: the reward model it was trained on
    from (None: from the backbone)."""
    from components.records.registry import new_version  # the reading side of the registry: no BentoML import

    return {
        "kind": "reward_model",
        "version": new_version("rm-"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": cfg.backbone,
        "parent": None if init is None else {"version": init.version, "champion": init.champion},
        "data": {
            "pairs_path": str(pairs_path),
            "pairs_md5": file_md5(pairs_path),
            "data_version": data_version(root),
        },
        "params": to_dict(cfg),
        "judge_slice": judge_slice,
        "metrics": metrics,
        "normalization": {"mean": mean, "std": std, "max_length": cfg.max_length, "bf16": cfg.bf16},
        "check": check,
        "code_revision": code_revision(),
        "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
    }


def train_reward(
    pairs_path: Path,
    cfg: RewardConfig,
    out_dir: Path,
    metrics_dir: Path,
    *,
    project_root: Path | None = None,
    progress: Progress | None = None,
    disk_cache: Path | None = None,
    side: str = "train",
    init: WarmStart | None = None,
) -> RewardResult:
    """Train, evaluate, normalise and save a reward model; returns its folder and metrics. The numbered steps
    are the module docstring's.

    ``side`` picks the pairs by the judge slice (``cfg.judge_fraction``, :mod:`components.data.judge_slice`):
    ``train`` (the training reward model) drops every pair whose prompt is in the judge's slice, ``judge`` (the
    judge reward model) keeps only those; the manifest's ``judge_slice`` records the rule and the counts.

    With ``disk_cache`` (a folder; ``cfg.disk_cache_gib`` > 0) the frozen blocks' output per text is
    kept there between runs and read back for texts seen before (:mod:`components.models.reward.disk_cache`).

    The manifest records a fresh ``version`` and, under ``check``, the raw scores the trained model (before
    saving) gave the first held-out pairs, so a reload can be compared with the model that was trained."""
    pairs_path, out_dir, metrics_dir = Path(pairs_path), Path(out_dir), Path(metrics_dir)
    root = Path(project_root) if project_root else Path.cwd()
    metrics_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    # 1. data
    split = read_and_split(pairs_path, cfg, side, root)
    train, held = split.train, split.held
    # 2.-3. model and optimisation
    step_log = metrics_dir / STEP_LOG
    disk = None
    if disk_cache is not None and cfg.disk_cache_gib > 0:
        disk = DiskActivationCache(disk_cache, int(cfg.disk_cache_gib * 2**30))
    model, tok, train_metrics, cache = _fit_with_cache(train, cfg, step_log, progress=progress, store=disk, init=init)
    train_metrics.update(cache_heldout(model, cache, held, cfg, disk))
    if disk is not None:
        disk.prune()
    # 4. normalise over the training prompts' responses (chosen and rejected)
    mean, std, added = normalisation_statistics(model, tok, train, cfg, cache)
    train_metrics.update(added)
    # 5. evaluate on held-out prompts
    eval_metrics, check = evaluate_heldout(model, tok, held, cfg, cache, mean, std)
    metrics = {
        "eval": eval_metrics,
        "train": train_metrics,
        "normalization": {"mean": round(mean, 6), "std": round(std, 6)},
        "truncation": truncation_report(tok, split.pairs, cfg),
        "pool_heldout_pairs": split.pool_heldout,
    }
    # 6. save: the model folder with its manifest (one atomic rename), the metrics, the step table and plot
    manifest = reward_manifest(pairs_path, cfg, root, metrics=metrics, judge_slice=split.judge_slice, mean=mean,
                               std=std, check=check, init=init)  # fmt: skip
    with atomic_dir(out_dir, replace=True) as staging:
        RewardModel(model, tok, mean=mean, std=std, max_length=cfg.max_length, bf16=cfg.bf16).save(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (metrics_dir / METRICS_JSON).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    write_step_table(step_log, metrics_dir / STEP_CSV, metrics_dir / STEP_PNG)
    return RewardResult(model_dir=out_dir, metrics=metrics, manifest=manifest)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
