"""The PPO loop for RLHF (Ziegler et al. 2019; Huang et al., "The N Implementation Details of RLHF with PPO").

One step reads top to bottom:
  1. rollout   - sample one reply per prompt (left padding, KV cache, temperature, stop at EOS)
  2. forward   - log-probs of the policy and of the frozen reference, values, entropy (no grad)
  3. score     - the scorer on prompt + reply; penalty for replies without EOS
  4. rewards   - score on the last reply token minus the per-token KL penalty (adaptive beta)
  5. advantages- GAE over the reply tokens, whitened
  6. update    - PPO epochs over minibatches (grad accumulation, clipping, early stop on approx KL)
  7. log       - one JSONL/CSV row of metrics
  8. checkpoint- every ``save_every`` steps: everything needed to resume bit-for-bit

Letters: B replies in the step (per process), b a micro-batch, P prompt tokens (left padded),
R reply tokens (right padded after EOS), V vocabulary, H hidden size.

Devices: CPU or CUDA, with bf16 autocast (``accelerate``) where the device computes bf16 natively
(``ppo.bf16``; CPUs with AVX512-BF16 or AMX, GPUs with bf16; float32 elsewhere); several processes with
``accelerate launch`` (data parallel: each process samples its own prompts with its own seed, gradients
are all-reduced by DDP).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.base_model import accelerator_device, load_base
from components.config import to_dict
from components.config.model import ModelConfig
from components.config.ppo import PPOConfig
from components.generation import generate, position_ids_from_mask
from components.paths import ProjectPaths
from components.ppo import core
from components.ppo.checkpoint import (
    CheckpointError,
    fingerprint,
    incomplete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from components.ppo.metrics import MetricsWriter
from components.ppo.scorers import Scorer
from components.precision import bf16_fast, cast_frozen_weights_once
from components.progress import Progress, report
from components.shared_prefix import causal_lm_after_opening, reply_logits_shared

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Model: policy + value head (shared trunk or separate trunk)
# ---------------------------------------------------------------------------------------------


class ActorCritic(nn.Module):
    """The policy LM and a scalar value head, in one module so DDP wraps and syncs both.

    ``value_trunk=None``: the value head reads the policy's last hidden state (shared trunk, one
    forward pass). Otherwise it reads ``value_trunk``'s (its own copy of the base, its own LoRA).
    Default ``shared``: a separate trunk costs twice the weights and several times the training time per
    micro-batch (``bench/bench_value_head.py``; figures in ``docs/benchmarks.md``).
    """

    def __init__(self, policy: nn.Module, hidden_size: int, value_trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_trunk = value_trunk
        self.value_head = nn.Linear(hidden_size, 1)
        # N-details: heads initialised with std 1/sqrt(H + 1), bias 0.
        nn.init.normal_(self.value_head.weight, std=1.0 / np.sqrt(hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits predicting each reply token and the value before it: ``(B, R, V)`` and ``(B, R)``."""
        R = input_ids.shape[1] - context_length
        if self.value_trunk is None:
            # the system prompt every row opens with runs once, for one row (components/shared_prefix.py)
            out = causal_lm_after_opening(self.policy, input_ids, attention_mask, R, output_hidden_states=True)
            if out is not None:
                hidden = out.hidden_states[-1]  # shape: (B, S, H), the same last columns as the full rows
                values = self.value_head(hidden[:, -(R + 1) : -1].float()).squeeze(-1)  # shape: (B, R)
                return out.logits[:, :-1], values
        position_ids = position_ids_from_mask(attention_mask)  # shape: (B, P+R), left padding aware
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=self.value_trunk is None,
            logits_to_keep=R + 1,  # only the positions that predict reply tokens (+1 dropped below)
            use_cache=False,
        )
        logits = out.logits[:, :-1]  # shape: (B, R, V): position P-1+t predicts reply token t
        if self.value_trunk is None:
            hidden = out.hidden_states[-1]  # shape: (B, P+R, H)
        else:
            hidden = self.value_trunk(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=False,
            ).hidden_states[-1]  # shape: (B, P+R, H)
        values = self.value_head(hidden[:, context_length - 1 : -1].float()).squeeze(-1)  # shape: (B, R)
        return logits, values


def build_actor_critic(cfg: PPOConfig, base: PreTrainedModel) -> tuple[ActorCritic, nn.Module | None]:
    """Wrap ``base`` for training; return ``(actor_critic, reference)`` (reference None with LoRA)."""
    hidden = base.config.hidden_size
    value_base = copy.deepcopy(base) if cfg.value_model == "separate" else None
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        def lora(model: PreTrainedModel) -> nn.Module:
            # lora_dropout=0: dropout off everywhere (N-details), so rollout and update log-probs agree.
            lcfg = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=0.0,
                target_modules=list(cfg.lora_target_modules),
                task_type="CAUSAL_LM",
            )
            return get_peft_model(model, lcfg)

        policy, reference = lora(base), None
        value_trunk = lora(value_base) if value_base is not None else None
    else:
        reference = copy.deepcopy(base).requires_grad_(False).eval()
        policy, value_trunk = base.requires_grad_(True), value_base
        if value_trunk is not None:
            value_trunk.requires_grad_(True)
    ac = ActorCritic(policy, hidden, value_trunk)
    ac.eval()  # dropout off (N-details); gradients still flow in eval mode
    return ac, reference


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def read_prompts(path: Path) -> list[str]:
    """Prompts from a JSONL file of ``{"prompt": ...}`` rows; a bad row is an error naming its line."""
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found (seed the demo data first, or set ppo.prompts)")
    prompts = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = row["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{i}: expected a JSON object with a 'prompt' key ({exc})") from exc
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}:{i}: 'prompt' must be a non-empty string")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One step's rollout and everything computed from it (per process)."""

    prompts: list[str]
    texts: list[str]
    input_ids: torch.Tensor  # shape: (B, P+R)
    attention_mask: torch.Tensor  # shape: (B, P+R)
    context_length: int  # P
    response_ids: torch.Tensor  # shape: (B, R)
    mask: torch.Tensor  # shape: (B, R), 1 up to and including EOS
    ended: torch.Tensor  # shape: (B,)
    logp: torch.Tensor = field(default=None)  # shape: (B, R)
    ref_logp: torch.Tensor = field(default=None)  # shape: (B, R)
    values: torch.Tensor = field(default=None)  # shape: (B, R)
    entropy: torch.Tensor = field(default=None)  # shape: (B, R)
    gen_logits: torch.Tensor | None = None  # shape: (B, R, V), the logits sampling used (shared trunk only)
    gen_hidden: torch.Tensor | None = None  # shape: (B, R, H), the policy's last hidden states while sampling


@dataclass
class TrainResult:
    actor_critic: ActorCritic
    tokenizer: PreTrainedTokenizerBase
    metrics: list[dict[str, float]]
    accelerator: Accelerator
    steps_run: int
    export_dir: Path | None = None
    """Set by ``components.ppo.train.run`` once the policy version folder is written."""


def make_accelerator(*, cpu: bool, mixed_precision: str) -> Accelerator:
    """An ``Accelerator`` for this run, also in a long-lived process that trained before with other settings.

    accelerate keeps one process-wide ``AcceleratorState`` and refuses a second ``Accelerator`` with another
    ``mixed_precision`` (seen on a GPU: a bf16 run, then a float32 run in the same worker process). A single,
    non-launched process may safely start over; a launched (distributed) process keeps its state.
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if state and not launched and str(state.get("_mixed_precision", "no")) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


class PPOTrainer:
    """Owns the models, optimiser and state; ``train()`` runs the numbered steps."""

    def __init__(
        self,
        cfg: PPOConfig,
        model_cfg: ModelConfig,
        scorer: Scorer,
        paths: ProjectPaths,
        *,
        scorer_id: str = "",
        base: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
    ) -> None:
        self.cfg, self.model_cfg, self.scorer, self.paths = cfg, model_cfg, scorer, paths
        device = accelerator_device()
        precision = "bf16" if cfg.bf16 and bf16_fast(device) else "no"
        self.acc = make_accelerator(cpu=device.type == "cpu", mixed_precision=precision)
        rank = self.acc.process_index
        # A different seed per process (N-details), so processes sample different replies.
        self.seed = cfg.seed + rank
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.prompt_rng = np.random.default_rng(self.seed)

        if base is None:
            base = load_base(model_cfg.base, dtype=model_cfg.dtype, device=self.acc.device)
        model, self.tok = base
        self.ac, self.reference = build_actor_critic(cfg, model)
        params = [p for p in self.ac.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_eps)
        # Linear anneal per PPO step, frac = 1 - step/steps (cleanrl / TRL); stepped once per PPO step.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: core.linear_decay(s, cfg.steps) if cfg.lr_decay else 1.0
        )
        self.model, self.optimizer = self.acc.prepare(self.ac, optimizer)
        if callable(getattr(scorer, "to", None)):
            scorer.to(self.acc.device)  # the reward model scores on the policy's device, not the CPU
        if self.reference is not None:
            self.reference.to(self.acc.device)
        self.kl_ctl = core.make_kl_controller(cfg.adaptive_kl, cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.all_prompts = read_prompts(paths.root / cfg.prompts)
        self.fingerprint = fingerprint(cfg, model_cfg, scorer_id, self.acc.num_processes)
        self.step = 0
        self.metrics: list[dict[str, float]] = []
        self.score_norm: tuple[float, float] | None = None
        """(mean, std) the scores are normalised with (``reward_normalization: rollouts``), set at step 0."""
        n_train = sum(p.numel() for p in params)
        if self.acc.is_main_process:
            log.info(
                "PPO on %s: %d trainable parameters, %d process(es)", self.acc.device, n_train, self.acc.num_processes
            )

    # -- helpers -----------------------------------------------------------------------------

    @property
    def unwrapped(self) -> ActorCritic:
        return self.acc.unwrap_model(self.model)

    def _sample_prompts(self) -> list[str]:
        idx = self.prompt_rng.choice(len(self.all_prompts), size=self.cfg.batch_size, replace=True)
        return [self.all_prompts[i] for i in idx]

    def _reference_logits(self, batch: Batch) -> torch.Tensor:
        """Logits of the frozen reference: the base with LoRA disabled, or the frozen copy."""
        ac = self.unwrapped
        ctx = ac.policy.disable_adapter() if self.reference is None else nullcontext()
        model = ac.policy if self.reference is None else self.reference
        with ctx:
            # the system prompt every row opens with runs once (components/shared_prefix.py)
            return reply_logits_shared(model, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1])

    def _mean(self, x: torch.Tensor | float) -> float:
        """Mean of a per-process scalar over all processes."""
        t = torch.as_tensor(x, dtype=torch.float32, device=self.acc.device)
        return self.acc.reduce(t, reduction="mean").item()

    # -- 1. rollout --------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Batch:
        cfg = self.cfg
        # Frozen base weights are cast to bf16 once per rollout, not at each of its decode steps.
        with self.acc.autocast(), cast_frozen_weights_once(self.unwrapped.policy):
            gen = generate(
                self.unwrapped.policy,
                self.tok,
                prompts,
                system=self.model_cfg.system_prompt,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                # Shared trunk: keep the logits and hidden states sampling computed, so step 2 needs no
                # second policy forward (a separate value trunk needs its own forward anyway).
                return_internals=self.unwrapped.value_trunk is None,
            )
        input_ids = torch.cat([gen.query_ids, gen.response_ids], dim=1)  # shape: (B, P+R)
        attention_mask = torch.cat([gen.query_mask, gen.response_mask], dim=1)  # shape: (B, P+R)
        return Batch(
            prompts=list(prompts),
            texts=gen.texts,
            input_ids=input_ids,
            attention_mask=attention_mask,
            context_length=gen.query_ids.shape[1],
            response_ids=gen.response_ids,
            mask=gen.response_mask,
            ended=gen.ended,
            gen_logits=gen.logits,
            gen_hidden=gen.hidden,
        )

    # -- 2. forward (no grad) ----------------------------------------------------------------

    @torch.no_grad()
    def forward_batch(self, batch: Batch) -> None:
        """Fill the rollout-time log-probs, reference log-probs, values and entropy, ``forward_batch_size``
        replies per pass (default: the whole batch at once).

        With the shared trunk, the policy's part comes from the rollout itself: the logits that sampled each
        token and the last hidden state before it (KV-cached, equal to a full forward pass up to float
        rounding); only the reference needs a forward pass. A separate value trunk needs its own pass.
        """
        cfg = self.cfg
        fb = cfg.forward_batch_size or len(batch.prompts)  # replies per no-grad pass
        if batch.gen_logits is not None:
            ac = self.unwrapped
            logits = batch.gen_logits  # shape: (B, R, V)
            batch.logp = core.logprobs_from_logits(logits, batch.response_ids, cfg.temperature)  # shape: (B, R)
            batch.entropy = core.entropy_from_logits(logits.float() / cfg.temperature)  # shape: (B, R)
            with self.acc.autocast():
                batch.values = ac.value_head(batch.gen_hidden.float()).squeeze(-1).float()  # shape: (B, R)
            batch.gen_logits = batch.gen_hidden = None  # free (B, R, V) before the update
            ref_logp = []
            parts = [_slice(batch, slice(s, s + fb)) for s in range(0, len(batch.prompts), fb)]
            # one autocast region for the whole reference pass, with the frozen base weights cast to bf16 once in
            # it (not at each pass's and each shared opening's forward call); the same values
            frozen = self.unwrapped.policy if self.reference is None else self.reference
            with self.acc.autocast(), cast_frozen_weights_once(frozen):
                ref_logits = [self._reference_logits(part) for part in parts]
            for part, logits in zip(parts, ref_logits):
                ref_logp.append(core.logprobs_from_logits(logits, part.response_ids, cfg.temperature))
            batch.ref_logp = torch.cat(ref_logp)  # shape: (B, R)
            return
        logp, ref_logp, values, entropy = [], [], [], []
        for s in range(0, len(batch.prompts), fb):
            part = _slice(batch, slice(s, s + fb))
            with self.acc.autocast():
                logits, v = self.unwrapped(part.input_ids, part.attention_mask, part.context_length)
                ref_logits = self._reference_logits(part)
            logp.append(core.logprobs_from_logits(logits, part.response_ids, cfg.temperature))
            ref_logp.append(core.logprobs_from_logits(ref_logits, part.response_ids, cfg.temperature))
            entropy.append(core.entropy_from_logits(logits.float() / cfg.temperature))
            values.append(v.float())
        batch.logp, batch.ref_logp = torch.cat(logp), torch.cat(ref_logp)  # shape: (B, R)
        batch.values, batch.entropy = torch.cat(values), torch.cat(entropy)  # shape: (B, R)

    # -- 3. score ----------------------------------------------------------------------------

    def score(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores and the scores PPO optimises (normalised, then the missing-EOS penalty), both (B,)."""
        with self.acc.autocast():
            raw = self.scorer.score(batch.prompts, batch.texts).float().to(self.acc.device)  # shape: (B,)
        if raw.shape != (len(batch.prompts),):
            raise ValueError(f"scorer returned shape {tuple(raw.shape)}, expected ({len(batch.prompts)},)")
        scores = raw
        if self.score_norm is not None:
            scores = core.normalise_scores(raw, *self.score_norm)  # shape: (B,)
        return raw, core.apply_missing_eos_penalty(scores, batch.ended.to(raw.device), self.cfg.missing_eos_penalty)

    @torch.no_grad()
    def rollout_score_stats(self) -> tuple[float, float]:
        """Mean and std of the scorer over ``normalization_samples`` replies of the current policy (per
        process; pooled over processes), sampled at PPO's temperature from a seeded draw of the prompts."""
        rng = np.random.default_rng(self.seed + 7919)
        n = self.cfg.normalization_samples
        prompts = [self.all_prompts[i] for i in rng.choice(len(self.all_prompts), size=n, replace=True)]
        scores = []
        for s in range(0, n, self.cfg.batch_size):
            part = self.rollout(prompts[s : s + self.cfg.batch_size])
            scores.append(self.scorer.score(part.prompts, part.texts).float().to(self.acc.device))
        pooled = self.acc.gather(torch.cat(scores))  # shape: (n * processes,)
        mean, std = core.score_stats(pooled)
        if self.acc.is_main_process:
            log.info("score normalisation on %d policy rollouts: mean %.4f, std %.4f", pooled.numel(), mean, std)
        return mean, std

    # -- 6. update ---------------------------------------------------------------------------

    def update(self, batch: Batch, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """PPO epochs over shuffled minibatches; returns mean losses/diagnostics over the minibatches run."""
        cfg = self.cfg
        B = len(batch.prompts)
        stats: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "clipfrac", "vclipfrac", "approx_kl", "ratio")}
        stopped = False
        for _epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(B)
            for m0 in range(0, B, cfg.mini_batch_size):
                mini = perm[m0 : m0 + cfg.mini_batch_size]
                mb_stats = self._minibatch_step(batch, advantages, returns, mini)
                for k, v in mb_stats.items():
                    stats[k].append(v)
                # Early stop when the policy moved too far from the rollout policy (cleanrl target_kl);
                # the KL is averaged over processes so every process stops at the same minibatch.
                if cfg.early_stop_kl is not None and self._mean(mb_stats["approx_kl"]) > cfg.early_stop_kl:
                    stopped = True
                    break
            if stopped:
                break
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        out["minibatches"] = float(len(stats["pg"]))
        out["early_stopped"] = float(stopped)
        return out

    def _minibatch_step(
        self, batch: Batch, advantages: torch.Tensor, returns: torch.Tensor, mini: torch.Tensor
    ) -> dict[str, float]:
        cfg = self.cfg
        acc_steps = cfg.grad_accumulation
        sums = dict.fromkeys(("pg", "vf", "clipfrac", "vclipfrac", "approx_kl", "ratio"), 0.0)
        for i in range(acc_steps):
            idx = mini[i * cfg.micro_batch_size : (i + 1) * cfg.micro_batch_size]
            part = _slice(batch, idx)
            last = i == acc_steps - 1
            # Gradients are all-reduced only on the last micro-batch of the minibatch.
            with self.acc.no_sync(self.model) if not last else nullcontext(), self.acc.autocast():
                logits, values = self.model(part.input_ids, part.attention_mask, part.context_length)
                logp = core.logprobs_from_logits(logits, part.response_ids, cfg.temperature)  # shape: (b, R)
                pl = core.clipped_policy_loss(logp, part.logp, advantages[idx], part.mask, cfg.clip_range)
                vf, vclip = core.clipped_value_loss(
                    values.float(), part.values, returns[idx], part.mask, cfg.clip_range_value
                )
                loss = pl.loss + cfg.vf_coef * vf
                if cfg.ent_coef:
                    ent = core.masked_mean(core.entropy_from_logits(logits.float() / cfg.temperature), part.mask)
                    loss = loss - cfg.ent_coef * ent
                self.acc.backward(loss / acc_steps)
            for k, v in (
                ("pg", pl.loss),
                ("vf", vf),
                ("clipfrac", pl.clipfrac),
                ("vclipfrac", vclip),
                ("approx_kl", pl.approx_kl),
                ("ratio", pl.ratio_mean),
            ):
                sums[k] += v.item() / acc_steps
        self.acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    # -- the loop ----------------------------------------------------------------------------

    def _clock(self) -> float:
        """A wall-clock reading after the device's queued work is done (CUDA runs asynchronously: without the
        wait, one phase's kernels would be billed to the next)."""
        if self.acc.device.type == "cuda":
            torch.cuda.synchronize(self.acc.device)
        return time.perf_counter()

    def train(
        self, *, resume: bool = False, stop_after: int | None = None, progress: Progress | None = None
    ) -> TrainResult:
        """Run (or resume) the loop to ``cfg.steps``; ``stop_after`` ends the process early (crash drills);
        ``progress(step, steps, note)`` after every step (main process only)."""
        cfg, acc = self.cfg, self.acc
        ckpt_root = self.paths.root / cfg.checkpoint_dir
        writer = MetricsWriter(self.paths.metrics, enabled=acc.is_main_process)
        if resume:
            self._resume(ckpt_root)
        writer.start(self.metrics)
        if cfg.reward_normalization == "rollouts" and self.score_norm is None:
            self.score_norm = self.rollout_score_stats()
        steps_run = 0
        progress_log = _progress(cfg.steps, self.step, acc.is_main_process)
        while self.step < cfg.steps:
            if stop_after is not None and steps_run >= stop_after:
                break
            t0 = self._clock()
            prompts = self._sample_prompts()

            # 1. rollout: one sampled reply per prompt
            batch = self.rollout(prompts)
            t1 = self._clock()

            # 2. forward: rollout-time log-probs, reference log-probs, values, entropy
            self.forward_batch(batch)
            t2 = self._clock()

            # 3. score: the scorer on prompt + reply, minus the missing-EOS penalty
            raw_scores, scores = self.score(batch)
            t3 = self._clock()

            # 4. rewards: score on the last reply token, per-token KL penalty (beta from the controller)
            kl_coef = self.kl_ctl.value
            rewards, kl = core.kl_shaped_rewards(
                scores, batch.logp, batch.ref_logp, batch.mask, kl_coef, cfg.kl_estimator
            )  # shape: (B, R)
            if cfg.whiten_rewards:
                rewards = core.masked_whiten(rewards, batch.mask, shift_mean=False)

            # 5. advantages: GAE over reply tokens, whitened over the batch
            advantages, returns = core.gae(rewards, batch.values, batch.mask, cfg.gamma, cfg.lam)  # shape: (B, R)
            if cfg.whiten_advantages:
                advantages = core.masked_whiten(advantages, batch.mask)

            # 6. update: PPO epochs over minibatches
            upd = self.update(batch, advantages, returns)
            self.scheduler.step()
            t4 = self._clock()

            # KL controller sees the global mean summed k1 KL per reply (Ziegler et al. 2019, eq. 3).
            m = batch.mask.float()
            seq_kl = ((batch.logp - batch.ref_logp) * m).sum(1).mean()
            mean_kl = self._mean(seq_kl)
            self.kl_ctl.update(mean_kl, n_steps=cfg.batch_size * acc.num_processes)
            self.step += 1
            steps_run += 1

            # 7. log
            row = self._metrics_row(batch, raw_scores, scores, kl, mean_kl, kl_coef, upd, (t0, t1, t2, t3, t4))
            self.metrics.append(row)
            writer.append(row)
            progress_log(row)
            if acc.is_main_process:
                report(progress, self.step, cfg.steps, f"PPO score {row['objective/score']:.3f} kl {mean_kl:.2f}")

            # 8. checkpoint
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self._save(ckpt_root)
        writer.finish()
        return TrainResult(self.unwrapped, self.tok, self.metrics, acc, steps_run)

    def _metrics_row(
        self,
        batch: Batch,
        raw_scores: torch.Tensor,
        scores: torch.Tensor,
        kl: torch.Tensor,
        mean_kl: float,
        kl_coef: float,
        upd: dict[str, float],
        t: tuple[float, ...],
    ) -> dict[str, float]:
        m = batch.mask.float()
        n_tokens = self._mean(m.sum()) * self.acc.num_processes
        step_time = t[4] - t[0]
        mean_score = self._mean(raw_scores.mean())
        return {
            "step": self.step,
            "objective/score": mean_score,
            "objective/score_penalised": self._mean(scores.mean()),
            "objective/kl": mean_kl,
            "objective/kl_estimator": self._mean((kl * m).sum(1).mean()),
            "objective/kl_coef": kl_coef,
            "objective/rlhf_reward": self._mean(scores.mean()) - kl_coef * mean_kl,
            "objective/entropy": self._mean(core.masked_mean(batch.entropy, m)),
            "loss/policy": self._mean(upd["pg"]),
            "loss/value": self._mean(upd["vf"]),
            "policy/clipfrac": self._mean(upd["clipfrac"]),
            "policy/approx_kl": self._mean(upd["approx_kl"]),
            "policy/minibatches": upd["minibatches"],
            "policy/early_stopped": upd["early_stopped"],
            "val/ratio": self._mean(upd["ratio"]),
            "val/clipfrac": self._mean(upd["vclipfrac"]),
            "val/mean_value": self._mean(core.masked_mean(batch.values, m)),
            "val/eos_fraction": self._mean(batch.ended.float().mean()),
            "val/response_length": self._mean(m.sum(1).mean()),
            "lr": self.scheduler.get_last_lr()[0],
            "charts/samples_per_s": len(batch.prompts) * self.acc.num_processes / step_time,
            "charts/tokens_per_s": n_tokens / step_time,
            "time/rollout": t[1] - t[0],
            "time/forward": t[2] - t[1],
            "time/score": t[3] - t[2],
            "time/update": t[4] - t[3],
            "time/step": step_time,
        }

    # -- checkpoint / resume -----------------------------------------------------------------

    def _save(self, root: Path) -> None:
        trainable = {n: p.detach().cpu() for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        save_checkpoint(
            root,
            step=self.step,
            accelerator=self.acc,
            trainable=trainable,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            kl_ctl=self.kl_ctl.state_dict(),
            metrics=self.metrics,
            fingerprint=self.fingerprint,
            params={"ppo": to_dict(self.cfg), "model": to_dict(self.model_cfg)},
            prompt_rng=self.prompt_rng.bit_generator.state,
            score_norm=self.score_norm,
        )

    def _resume(self, root: Path) -> None:
        ckpt = latest_checkpoint(root)
        partial = incomplete_checkpoints(root)
        if partial and self.acc.is_main_process:
            log.info("ignoring incomplete checkpoint folder(s) a killed run left: %s", [p.name for p in partial])
        if ckpt is None:
            # Fresh start rather than refusal: re-running the same command after a kill before the first
            # checkpoint must work. The warning says the run does not continue anything.
            if self.acc.is_main_process:
                log.warning("--resume: no complete checkpoint under %s; starting from step 0", root)
            return
        state = load_checkpoint(ckpt, self.acc.process_index, expected_fingerprint=self.fingerprint)
        missing = self.unwrapped.load_state_dict(state["trainable"], strict=False)
        unexpected = [k for k in state["trainable"] if k in missing.unexpected_keys]
        if unexpected:
            raise CheckpointError(f"{ckpt}: checkpoint has parameters this model does not: {unexpected[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        norm = state.get("score_norm")
        self.score_norm = (float(norm[0]), float(norm[1])) if norm is not None else None
        self.metrics = list(state["metrics"])
        self.step = int(state["step"])
        self.prompt_rng.bit_generator.state = state["rng"]["prompt_rng"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        log.info("resumed from %s at step %d", ckpt, self.step)


def _slice(batch: Batch, idx: slice | torch.Tensor) -> Batch:
    """Rows ``idx`` of a batch (tensors indexed, lists picked)."""
    rows = range(len(batch.prompts))[idx] if isinstance(idx, slice) else idx.tolist()

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[idx]

    return Batch(
        prompts=[batch.prompts[i] for i in rows],
        texts=[batch.texts[i] for i in rows],
        input_ids=pick(batch.input_ids),
        attention_mask=pick(batch.attention_mask),
        context_length=batch.context_length,
        response_ids=pick(batch.response_ids),
        mask=pick(batch.mask),
        ended=pick(batch.ended),
        logp=pick(batch.logp),
        ref_logp=pick(batch.ref_logp),
        values=pick(batch.values),
        entropy=pick(batch.entropy),
    )


def _progress(total: int, start: int, enabled: bool) -> Callable[[dict[str, float]], None]:
    """A log line per step (the CLI shows a progress bar around the whole stage)."""

    def report(row: dict[str, float]) -> None:
        if enabled:
            log.info(
                "ppo step %d/%d score %.3f kl %.3f beta %.4f approx_kl %.4f clipfrac %.3f %.1f samples/s",
                row["step"],
                total,
                row["objective/score"],
                row["objective/kl"],
                row["objective/kl_coef"],
                row["policy/approx_kl"],
                row["policy/clipfrac"],
                row["charts/samples_per_s"],
            )

    return report


def replicas_in_sync(acc: Accelerator, ac: nn.Module) -> bool:
    """True when every process holds the same trainable weights (data parallel sanity check)."""
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in ac.parameters() if p.requires_grad]).sum()
    gathered = acc.gather(total.reshape(1).to(acc.device))
    return bool(torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=0, atol=1e-9))


def summary(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """First/last score and KL and mean throughput, for metrics/ppo.json."""
    if not metrics:
        return {}
    first, last = metrics[0], metrics[-1]
    tail = metrics[-max(1, len(metrics) // 4) :]
    return {
        "steps": int(last["step"]),
        "score_first": first["objective/score"],
        "score_last": last["objective/score"],
        "score_last_quarter": float(np.mean([m["objective/score"] for m in tail])),
        "kl_last": last["objective/kl"],
        "kl_max": max(m["objective/kl"] for m in metrics),
        "kl_coef_last": last["objective/kl_coef"],
        "samples_per_s": float(np.mean([m["charts/samples_per_s"] for m in metrics])),
        "seconds_total": float(sum(m["time/step"] for m in metrics)),
    }
