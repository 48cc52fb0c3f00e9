"""The policy optimisation loop every optimiser shares (PPO, RLOO, GRPO, DPO, online DPO, best-of-n SFT).

One step reads top to bottom:
  1. batch     - sample k replies per prompt (left padding, KV cache, temperature, stop at EOS; one prompt pass
                 for a prompt's k samples), or, offline, read preference pairs
  2. forward   - log-probs of the policy and of the frozen reference, values (PPO), entropy (no grad); offline
                 DPO only the reference's (its policy log-probs and entropy come from the update's first pass)
  3. score     - the scorer on prompt + reply; penalty for replies without EOS (not offline)
  4. targets   - what the loss fits: the algorithm's part (``components/models/policy/algorithms/``)
  5. update    - epochs over minibatches (grad accumulation, clipping, PPO's early stop on approx KL)
  6. KL        - the controller sees the mean KL per reply to the reference (Ziegler et al. 2019, eq. 3);
                 with a KL bound (``max_kl``), the KL on the policy's own samples (the step's batch, before
                 step 5; offline DPO: samples of its own every few steps), and no further update once it is beyond
  7. log       - one JSONL/CSV row of metrics
  8. checkpoint- every ``save_every`` steps: everything needed to resume bit-for-bit

Letters: B replies in the step (per process), b a micro-batch, P prompt tokens (left padded),
R reply tokens (right padded after EOS), V vocabulary, H hidden size.

Devices: CPU or CUDA, with bf16 autocast (``accelerate``) where the device computes bf16 natively
(``ppo.bf16``; float32 elsewhere); several processes with ``accelerate launch`` (data parallel: each process
samples its own prompts with its own seed, gradients are all-reduced by DDP).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.common.progress import Progress, report
from components.config import to_dict
from components.config.model import ModelConfig
from components.config.policy import PolicyConfig
from components.models.base_model import accelerator_device, load_base
from components.models.generation import generate
from components.models.policy import batch_sizing, ppo_math
from components.models.policy.algorithms import Algorithm, Forward, Targets, make_algorithm
from components.models.policy.batch import RolloutBatch, read_prompts, slice_rows
from components.models.policy.checkpoint import (
    CheckpointError,
    fingerprint,
    incomplete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from components.models.policy.metrics import MetricsWriter
from components.models.policy.model import ActorCritic, build_actor_critic, make_accelerator
from components.models.policy.scorers import Scorer
from components.models.precision import bf16_fast, cast_frozen_weights_once
from components.models.shared_prefix import reply_logits_shared
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)


@dataclass
class Within:
    """Trainable weights (on the CPU) at a KL measurement within the bound: after ``step`` steps, measured ``kl``."""

    step: int
    kl: float
    weights: dict[str, torch.Tensor]


@dataclass
class TrainResult:
    actor_critic: ActorCritic
    tokenizer: PreTrainedTokenizerBase
    metrics: list[dict[str, float]]
    accelerator: Accelerator
    steps_run: int
    export_dir: Path | None = None
    """Set by ``components.models.policy.train.run`` once the policy version folder is written."""


class PolicyTrainer:
    """Owns the models, optimiser and state; ``train()`` runs the numbered steps with ``cfg.algorithm``'s parts."""

    def __init__(
        self,
        cfg: PolicyConfig,
        model_cfg: ModelConfig,
        scorer: Scorer | None,
        paths: ProjectPaths,
        *,
        scorer_id: str = "",
        base: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
    ) -> None:
        self.cfg, self.model_cfg, self.scorer, self.paths = cfg, model_cfg, scorer, paths
        self.algo: Algorithm = make_algorithm(cfg)
        if self.algo.uses_scorer and scorer is None:
            raise ValueError(f"{cfg.algorithm} needs a scorer (the reward model) and got none")
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
        self.ac, self.reference = build_actor_critic(cfg, model, with_value=self.algo.uses_values)
        params = [p for p in self.ac.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.learning_rate, eps=cfg.adam_eps)
        # Linear anneal per step, frac = 1 - step/steps (cleanrl / TRL); stepped once per step.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: ppo_math.linear_decay(s, cfg.steps) if cfg.lr_decay else 1.0
        )
        self.model, self.optimizer = self.acc.prepare(self.ac, optimizer)
        if scorer is not None and callable(getattr(scorer, "to", None)):
            scorer.to(self.acc.device)  # the reward model scores on the policy's device, not the CPU
        if self.reference is not None:
            self.reference.to(self.acc.device)
        self.kl_ctl = ppo_math.make_kl_controller(cfg.adaptive_kl, cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        samples = self.algo.uses_scorer or self.algo.kl_bound is not None
        self.all_prompts = read_prompts(paths.root / cfg.prompts, paths.root) if samples else []
        self.fingerprint = fingerprint(cfg, model_cfg, scorer_id, self.acc.num_processes)
        self.step = 0
        self.metrics: list[dict[str, float]] = []
        self.score_norm: tuple[float, float] | None = None
        """(mean, std) the scores are normalised with (``reward_normalization: rollouts``), set at step 0."""
        self.bounded_kl = 0.0
        """With ``algo.kl_bound``: the latest KL measured on the policy's own samples (0 at the start: the policy
        is the reference)."""
        self.stopped = False
        """With ``algo.kl_bound``: the measured KL went beyond the bound; no further step runs."""
        self.within: Within | None = None
        """With ``algo.kl_bound``: the trainable weights at the latest measurement within the bound (at the start:
        the parent, KL 0); a measurement beyond the bound puts them back, so the exported policy is one measured
        within ``max_kl``."""
        n_train = sum(p.numel() for p in params)
        if self.acc.is_main_process:
            log.info(
                "%s on %s: %d trainable parameters, %d process(es)",
                cfg.algorithm,
                self.acc.device,
                n_train,
                self.acc.num_processes,
            )

    # -- helpers -----------------------------------------------------------------------------

    @property
    def unwrapped(self) -> ActorCritic:
        return self.acc.unwrap_model(self.model)

    def sample_prompts(self, n: int | None = None) -> list[str]:
        """``n`` prompts (default ``batch_size``) drawn with replacement by the seeded prompt sampler."""
        idx = self.prompt_rng.choice(len(self.all_prompts), size=n or self.cfg.batch_size, replace=True)
        return [self.all_prompts[i] for i in idx]

    def _reference_logits(self, batch: RolloutBatch) -> torch.Tensor:
        """Logits of the frozen reference: the base with LoRA disabled, or the frozen copy."""
        ac = self.unwrapped
        ctx = ac.policy.disable_adapter() if self.reference is None else nullcontext()
        model = ac.policy if self.reference is None else self.reference
        with ctx:
            # the system prompt every row opens with runs once (components/models/shared_prefix.py)
            return reply_logits_shared(model, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1])

    def mean_kl(self, batch: RolloutBatch) -> float:
        """The mean summed k1 KL per reply of ``batch`` to the reference, over all processes (nats)."""
        kl = ((batch.logp - batch.ref_logp) * batch.mask.float()).sum(1)  # shape: (B,)
        return self._mean(kl.mean())

    def _model_dims(self) -> tuple[int, int, int]:
        """(layers, hidden size, vocabulary) of the policy, for the batch-size rule."""
        c = self.unwrapped.policy.config
        return c.num_hidden_layers, c.hidden_size, c.vocab_size

    def micro_batch_size(self, batch: RolloutBatch, mini: int) -> int:
        """Replies per update micro-step: ``micro_batch_size``, or with ``auto`` the largest divisor of the
        minibatch that fits the free GPU memory (``batch_sizing``; 8 on the CPU)."""
        cfg = self.cfg
        if cfg.micro_batch_size != "auto":
            return cfg.micro_batch_size
        if self.acc.device.type != "cuda":
            return batch_sizing.CPU_MICRO_BATCH
        layers, hidden, vocab = self._model_dims()
        seq, reply = batch.input_ids.shape[1], batch.response_ids.shape[1]
        per_reply = batch_sizing.update_bytes_per_reply(seq, reply, layers, hidden, vocab)
        free, _total = torch.cuda.mem_get_info(self.acc.device)
        return batch_sizing.auto_micro_batch(free, per_reply, mini, self.algo.group)

    def forward_batch_size(self, batch: RolloutBatch) -> int:
        """Replies per no-grad pass of step 2: ``forward_batch_size`` (null: the whole batch), or with ``auto``
        the most that fit the free GPU memory (``batch_sizing``; the whole batch on the CPU)."""
        cfg, n = self.cfg, len(batch.prompts)
        if cfg.forward_batch_size != "auto":
            return cfg.forward_batch_size or n
        if self.acc.device.type != "cuda":
            return n
        _layers, hidden, vocab = self._model_dims()
        seq, reply = batch.input_ids.shape[1], batch.response_ids.shape[1]
        free, _total = torch.cuda.mem_get_info(self.acc.device)
        return batch_sizing.auto_forward_batch(free, batch_sizing.forward_bytes_per_reply(seq, reply, hidden, vocab), n)

    def _mean(self, x: torch.Tensor | float) -> float:
        """Mean of a per-process scalar over all processes."""
        t = torch.as_tensor(x, dtype=torch.float32, device=self.acc.device)
        return self.acc.reduce(t, reduction="mean").item()

    # -- 1. batch ----------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: list[str], samples_per_prompt: int = 1, seed: int | None = None) -> RolloutBatch:
        """``samples_per_prompt`` sampled replies per prompt, prompt by prompt (rows ``i*k .. i*k+k-1``); ``seed``
        samples with a generator of its own (the global RNG untouched), else with torch's global one."""
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
                samples_per_prompt=samples_per_prompt,
                static_cache=self.model_cfg.static_cache,
                generator_seed=seed,
            )
        input_ids = torch.cat([gen.query_ids, gen.response_ids], dim=1)  # shape: (B, P+R)
        attention_mask = torch.cat([gen.query_mask, gen.response_mask], dim=1)  # shape: (B, P+R)
        return RolloutBatch(
            prompts=[p for p in prompts for _ in range(samples_per_prompt)],
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
    def forward_batch(self, batch: RolloutBatch, exact_kl: bool = False) -> None:
        """Fill the rollout-time log-probs, reference log-probs, values and entropy, ``forward_batch_size``
        replies per pass (default: the whole batch at once); with ``exact_kl``, or a KL bound measured on the
        batch (the online optimisers'), also ``batch.exact_kl``: per reply the exact KL to the reference summed
        along it (:func:`~components.models.policy.ppo_math.reply_kl`), from the same logits.

        With the shared trunk, the policy's part comes from the rollout itself: the logits that sampled each
        token and the last hidden state before it (KV-cached, equal to a full forward pass up to float
        rounding); only the reference needs a forward pass. A separate value trunk needs its own pass.
        """
        cfg = self.cfg
        fb = self.forward_batch_size(batch)  # replies per no-grad pass
        ac = self.unwrapped
        bound = self.algo.kl_bound
        exact = exact_kl or (bound is not None and bound.prompts is None and self.algo.needs_old_logp)

        if batch.gen_logits is not None:
            logits = batch.gen_logits  # shape: (B, R, V)
            # shapes: (B, R) each; a chunk of positions at a time, never a float32 (B, R, V) copy
            batch.logp, batch.entropy = ppo_math.chunked_logprobs(
                logits, batch.response_ids, cfg.temperature, with_entropy=True
            )
            if ac.value_head is not None:
                with self.acc.autocast():
                    batch.values = ac.value_head(batch.gen_hidden.float()).squeeze(-1).float()  # shape: (B, R)
            batch.gen_logits = batch.gen_hidden = None  # free (B, R, V) before the update
            ref_logp = []
            parts = [slice_rows(batch, slice(s, s + fb)) for s in range(0, len(batch.prompts), fb)]
            # one autocast region for the whole reference pass, with the frozen base weights cast to bf16 once in
            # it (not at each pass's and each shared opening's forward call); the same values
            frozen = ac.policy if self.reference is None else self.reference
            with self.acc.autocast(), cast_frozen_weights_once(frozen):
                ref_logits = [self._reference_logits(part) for part in parts]
            for part, ref in zip(parts, ref_logits):
                ref_logp.append(ppo_math.chunked_logprobs(ref, part.response_ids, cfg.temperature)[0])
            batch.ref_logp = torch.cat(ref_logp)  # shape: (B, R)
            if exact:
                starts = range(0, len(batch.prompts), fb)  # the parts' rows in ``logits``, the sampling's
                batch.exact_kl = torch.cat(
                    [
                        ppo_math.reply_kl(logits[s : s + fb], ref, p.mask, cfg.temperature)
                        for s, p, ref in zip(starts, parts, ref_logits)
                    ]
                )
            return
        if not self.algo.needs_old_logp and not exact:
            # the policy's log-probs and entropy come from the update's first pass (``update``), not a pass here
            ref_logp = []
            for s in range(0, len(batch.prompts), fb):
                part = slice_rows(batch, slice(s, s + fb))
                with self.acc.autocast():
                    ref_logits = self._reference_logits(part)
                ref_logp.append(ppo_math.chunked_logprobs(ref_logits, part.response_ids, cfg.temperature)[0])
            batch.ref_logp = torch.cat(ref_logp)  # shape: (B, R)
            return
        logp, ref_logp, values, entropy, exact_kls = [], [], [], [], []
        for s in range(0, len(batch.prompts), fb):
            part = slice_rows(batch, slice(s, s + fb))
            with self.acc.autocast():
                logits, v = ac(part.input_ids, part.attention_mask, part.context_length)
                ref_logits = self._reference_logits(part)
            part_logp, part_entropy = ppo_math.chunked_logprobs(
                logits, part.response_ids, cfg.temperature, with_entropy=True
            )
            logp.append(part_logp)
            ref_logp.append(ppo_math.chunked_logprobs(ref_logits, part.response_ids, cfg.temperature)[0])
            entropy.append(part_entropy)
            if v is not None:
                values.append(v.float())
            if exact:
                exact_kls.append(ppo_math.reply_kl(logits, ref_logits, part.mask, cfg.temperature))
        batch.logp, batch.ref_logp = torch.cat(logp), torch.cat(ref_logp)  # shape: (B, R)
        batch.exact_kl = torch.cat(exact_kls) if exact else None  # shape: (B,)
        batch.values = torch.cat(values) if values else None  # shape: (B, R)
        batch.entropy = torch.cat(entropy)  # shape: (B, R)

    # -- 3. score ----------------------------------------------------------------------------

    def score(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores and the scores the optimiser sees (normalised, then the missing-EOS penalty), both (B,)."""
        with self.acc.autocast():
            raw = self.scorer.score(batch.prompts, batch.texts).float().to(self.acc.device)  # shape: (B,)
        if raw.shape != (len(batch.prompts),):
            raise ValueError(f"scorer returned shape {tuple(raw.shape)}, expected ({len(batch.prompts)},)")
        scores = raw
        if self.score_norm is not None:
            scores = ppo_math.normalise_scores(raw, *self.score_norm)  # shape: (B,)
        return raw, ppo_math.apply_missing_eos_penalty(scores, batch.ended.to(raw.device), self.cfg.missing_eos_penalty)

    @torch.no_grad()
    def rollout_score_stats(self) -> tuple[float, float]:
        """Mean and std of the scorer over ``normalization_samples`` replies of the current policy (per
        process; pooled over processes), sampled at the rollout temperature from a seeded draw of the prompts."""
        rng = np.random.default_rng(self.seed + 7919)
        n = self.cfg.normalization_samples
        prompts = [self.all_prompts[i] for i in rng.choice(len(self.all_prompts), size=n, replace=True)]
        scores = []
        for s in range(0, n, self.cfg.batch_size):
            part = self.rollout(prompts[s : s + self.cfg.batch_size])
            scores.append(self.scorer.score(part.prompts, part.texts).float().to(self.acc.device))
        pooled = self.acc.gather(torch.cat(scores))  # shape: (n * processes,)
        mean, std = ppo_math.score_stats(pooled)
        if self.acc.is_main_process:
            log.info("score normalisation on %d policy rollouts: mean %.4f, std %.4f", pooled.numel(), mean, std)
        return mean, std

    # -- 6. KL bound -------------------------------------------------------------------------

    def sampled_kl(self, n: int) -> float:
        """The mean KL per reply to the reference on the policy's own replies to ``n`` training prompts: the exact
        KL of the next-token distributions at each position of a sampled reply, summed over the reply
        (:func:`~components.models.policy.ppo_math.chunked_token_kl`; the same mean as the summed k1 the batches
        report, with about a quarter of its variance, so a few replies measure it). The same seeded draw of
        prompts and the same sampling seed every time, so two measurements differ by the policy only; the global
        RNG is not touched, so the training's numbers are those of a run without the measurement."""
        rng = np.random.default_rng(self.seed + 104729)
        prompts = [self.all_prompts[i] for i in rng.choice(len(self.all_prompts), size=n, replace=True)]
        batch = self.rollout(prompts, seed=self.seed + 15485863)
        self.forward_batch(batch, exact_kl=True)
        return self._mean(batch.exact_kl.mean())

    def _trainable(self) -> dict[str, torch.Tensor]:
        """The parameters training changes (LoRA adapters, or every weight), by name."""
        return {n: p for n, p in self.unwrapped.named_parameters() if p.requires_grad}

    def keep_within(self) -> None:
        """Remember the trainable weights as they are now, with the latest measured KL (within the bound)."""
        weights = {n: p.detach().to("cpu", copy=True) for n, p in self._trainable().items()}
        self.within = Within(self.step, self.bounded_kl, weights)

    def restore_within(self) -> None:
        """Put back the weights of the latest measurement within the bound."""
        assert self.within is not None
        with torch.no_grad():
            for n, p in self._trainable().items():
                p.copy_(self.within.weights[n].to(p.device))

    def check_kl_bound(self, batch_kl: float | None = None) -> bool:
        """The KL bound on the policy's own samples (``algo.kl_bound``); beyond ``max_kl``, stop: the loop runs no
        further step. With ``batch_kl`` (step 4, before the update; a bound without ``prompts``): the step's batch
        is the measurement, and the step makes no update. Without (after step 6): with ``prompts``, every ``every``
        steps and after the last, a measurement of its own; without (no batch follows the last step), after the last
        step only, on one sample to each of ``batch_size`` training prompts. Within the bound, the weights measured
        are kept (:meth:`keep_within`); beyond it, the kept ones are put back. Returns whether this call stopped
        training."""
        bound = self.algo.kl_bound
        on_batch = batch_kl is not None
        if bound is None or (on_batch and bound.prompts is not None):
            return False
        last = self.step >= self.cfg.steps
        if on_batch:
            self.bounded_kl, step, what = batch_kl, self.step + 1, "this step's batch, its update skipped"
        elif bound.prompts is None:
            if not last:
                return False
            self.bounded_kl, step, what = self.sampled_kl(self.cfg.batch_size), self.step, "samples after the last step"
        elif self.step % bound.every and not last:
            return False
        else:
            self.bounded_kl, step, what = self.sampled_kl(bound.prompts), self.step, "samples after this step"
        self.stopped = self.bounded_kl > bound.max_kl
        if not self.stopped:
            self.keep_within()
            return False
        self.restore_within()
        if self.acc.is_main_process:
            kept = self.within
            log.info(
                "%s: KL to the reference on the policy's own samples (%s) %.3f nats > max_kl %g at step %d of %d: "
                "training stops; the policy goes back to its weights after step %d (measured KL %.3f) and is "
                "exported with them",
                self.cfg.algorithm, what, self.bounded_kl, bound.max_kl, step, self.cfg.steps, kept.step, kept.kl,
            )  # fmt: skip
        return True

    # -- 5. update ---------------------------------------------------------------------------

    def update(self, targets: Targets) -> dict[str, float]:
        """``algo.epochs`` passes over shuffled minibatches of the target rows (a preference pair's two rows stay
        together); returns the mean of each loss diagnostic over the minibatches run.

        When the batch has no policy log-probs yet (``algo.needs_old_logp`` off), the first epoch fills
        ``batch.logp`` and ``batch.entropy`` from its own forward passes (detached): a row's values are those of
        the policy its minibatch was trained from."""
        cfg, algo, batch = self.cfg, self.algo, targets.batch
        if batch is None or len(batch) == 0:
            return {"policy/minibatches": 0.0, "policy/early_stopped": 0.0}
        record = batch.logp is None
        if record:
            batch.logp = torch.zeros_like(batch.ref_logp)  # shape: (B, R)
            batch.entropy = torch.zeros_like(batch.ref_logp)  # shape: (B, R)
        g = algo.group
        units = len(batch) // g  # shuffled together: single rows, or pairs
        mini = max(1, min(cfg.mini_batch_size, len(batch)) // g)
        stats: dict[str, list[float]] = {}
        stopped, n_mini = False, 0
        for epoch in range(algo.epochs):
            perm = torch.randperm(units)
            for m0 in range(0, units, mini):
                rows = (perm[m0 : m0 + mini].unsqueeze(1) * g + torch.arange(g)).reshape(-1)  # shape: (mini * g,)
                mb_stats = self._minibatch_step(batch, targets.per_row, rows, record=record and epoch == 0)
                n_mini += 1
                for k, v in mb_stats.items():
                    stats.setdefault(k, []).append(v)
                # Early stop when the policy moved too far from the rollout policy (cleanrl target_kl);
                # the KL is averaged over processes so every process stops at the same minibatch.
                if (
                    algo.early_stop
                    and cfg.early_stop_kl is not None
                    and self._mean(mb_stats["policy/approx_kl"]) > cfg.early_stop_kl
                ):
                    stopped = True
                    break
            if stopped:
                break
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        out["policy/minibatches"] = float(n_mini)
        out["policy/early_stopped"] = float(stopped)
        return out

    def _minibatch_step(
        self, batch: RolloutBatch, per_row: dict[str, torch.Tensor], mini: torch.Tensor, *, record: bool = False
    ) -> dict:
        """One optimiser step over the rows ``mini``; ``record`` writes their detached log-probs and entropy into
        ``batch.logp`` / ``batch.entropy``."""
        cfg = self.cfg
        micro = max(self.algo.group, min(self.micro_batch_size(batch, len(mini)), len(mini)))
        acc_steps = -(-len(mini) // micro)
        sums: dict[str, float] = {}
        for i in range(acc_steps):
            idx = mini[i * micro : (i + 1) * micro]
            part = slice_rows(batch, idx)
            tgt = {k: v[idx] for k, v in per_row.items()}
            last = i == acc_steps - 1
            # Gradients are all-reduced only on the last micro-batch of the minibatch.
            with self.acc.no_sync(self.model) if not last else nullcontext(), self.acc.autocast():
                logits, values = self.model(part.input_ids, part.attention_mask, part.context_length)
                logp = ppo_math.logprobs_from_logits(logits, part.response_ids, cfg.temperature)  # shape: (b, R)
                loss, loss_stats = self.algo.loss(part, Forward(logits, logp, values), tgt)
                self.acc.backward(loss / acc_steps)
            if record:
                with torch.no_grad():
                    batch.logp[idx] = logp.detach().float()
                    _, entropy = ppo_math.chunked_logprobs(
                        logits.detach(), part.response_ids, cfg.temperature, with_entropy=True
                    )
                    batch.entropy[idx] = entropy  # shape: (b, R)
            for k, v in loss_stats.items():
                sums[k] = sums.get(k, 0.0) + float(torch.as_tensor(v).detach()) / acc_steps
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
        cfg, acc, algo = self.cfg, self.acc, self.algo
        ckpt_root = self.paths.root / cfg.checkpoint_dir
        writer = MetricsWriter(self.paths.metrics, enabled=acc.is_main_process)
        if resume:
            self._resume(ckpt_root)
        writer.start(self.metrics)
        if algo.kl_bound is not None and self.within is None and not self.stopped:
            self.keep_within()  # the parent (KL 0), or where a checkpoint without a kept copy left the policy
        if algo.uses_scorer and cfg.reward_normalization == "rollouts" and self.score_norm is None:
            self.score_norm = self.rollout_score_stats()
        steps_run = 0
        progress_log = _progress(cfg.algorithm, cfg.steps, acc.is_main_process)
        while self.step < cfg.steps and not self.stopped:
            if stop_after is not None and steps_run >= stop_after:
                break
            t0 = self._clock()

            # 1. batch: k sampled replies per prompt (or preference pairs, offline)
            batch = algo.make_batch(self)
            t1 = self._clock()

            # 2. forward: rollout-time log-probs, reference log-probs, values, entropy
            self.forward_batch(batch)
            t2 = self._clock()

            # 3. score: the scorer on prompt + reply, minus the missing-EOS penalty
            raw, scores = self.score(batch) if algo.uses_scorer else (None, None)
            t3 = self._clock()

            # 4. targets: advantages, preferences or the best replies (the algorithm's part); the mean summed k1
            # KL per reply over all processes, for a KL bound and (step 6) the controller
            mean_kl = self.mean_kl(batch) if algo.needs_old_logp else float("nan")
            kl_coef = algo.kl_coef(self.kl_ctl.value)
            targets = algo.targets(batch, raw, scores, kl_coef, mean_kl)
            # A KL bound measured on the step's own batch (the online optimisers', the exact KL per reply):
            # beyond it, no update, and stop.
            batch_kl = mean_kl if batch.exact_kl is None else self._mean(batch.exact_kl.mean())
            if self.check_kl_bound(batch_kl):
                targets = Targets(None, {}, targets.stats)

            # 5. update: epochs over minibatches
            upd = self.update(targets)
            self.scheduler.step()
            if not algo.needs_old_logp:
                mean_kl = self.mean_kl(batch)  # from the update's first pass (offline DPO)
            t4 = self._clock()

            # 6. KL: the controller sees the global mean KL per reply (Ziegler et al. 2019, eq. 3).
            self.kl_ctl.update(mean_kl, n_steps=cfg.batch_size * acc.num_processes)
            self.step += 1
            steps_run += 1
            # A KL bound measured on samples of its own (offline DPO's max_kl every few steps; any bound after the
            # last step, which no batch follows): beyond it, back to the last weights within it, and stop.
            if not self.stopped:
                self.check_kl_bound()
            t5 = self._clock()

            # 7. log
            row = self._metrics_row(batch, raw, scores, mean_kl, kl_coef, targets, upd, (t0, t1, t2, t3, t4, t5))
            self.metrics.append(row)
            writer.append(row)
            progress_log(row)
            if acc.is_main_process:
                report(progress, self.step, cfg.steps, _note(cfg.algorithm, row))

            # 8. checkpoint (also where a KL bound stops the run, so a resume stops there too)
            if self.step % cfg.save_every == 0 or self.step == cfg.steps or self.stopped:
                self._save(ckpt_root)
        writer.finish()
        return TrainResult(self.unwrapped, self.tok, self.metrics, acc, steps_run)

    def _metrics_row(
        self,
        batch: RolloutBatch,
        raw: torch.Tensor | None,
        scores: torch.Tensor | None,
        mean_kl: float,
        kl_coef: float,
        targets: Targets,
        upd: dict[str, float],
        t: tuple[float, ...],
    ) -> dict[str, float]:
        m = batch.mask.float()
        n_tokens = self._mean(m.sum()) * self.acc.num_processes
        step_time = t[5] - t[0]
        row: dict[str, float] = {"step": self.step}
        if raw is not None:
            penalised = self._mean(scores.mean())
            row["objective/score"] = self._mean(raw.mean())
            row["objective/score_penalised"] = penalised
            row["objective/rlhf_reward"] = penalised - kl_coef * mean_kl
        row["objective/kl"] = mean_kl
        if batch.exact_kl is not None:  # the same mean as objective/kl, measured exactly (a bound's measurement)
            row["objective/kl_exact"] = self._mean(batch.exact_kl.mean())
        row["objective/kl_coef"] = kl_coef
        if batch.entropy is not None:
            row["objective/entropy"] = self._mean(ppo_math.masked_mean(batch.entropy, m))
        for k, v in targets.stats.items():
            row[k] = self._mean(v)
        for k, v in upd.items():
            row[k] = v if k in ("policy/minibatches", "policy/early_stopped") else self._mean(v)
        if self.algo.kl_bound is not None:
            row["kl_bound/sampled_kl"] = self.bounded_kl
            row["kl_bound/stopped"] = float(self.stopped)
            row["time/kl_bound"] = t[5] - t[4]
            if self.stopped:  # the weights the policy went back to (kept whenever a bound is set)
                row["kl_bound/kept_step"] = float(self.within.step)
                row["kl_bound/kept_kl"] = self.within.kl
        row.update(
            {
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
        )
        return row

    # -- 8. checkpoint / resume --------------------------------------------------------------

    def _save(self, root: Path) -> None:
        trainable = {n: p.detach().cpu() for n, p in self._trainable().items()}
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
            params={"policy": to_dict(self.cfg), "model": to_dict(self.model_cfg)},
            prompt_rng=self.prompt_rng.bit_generator.state,
            score_norm=self.score_norm,
            within=self._within_state(),
        )

    def _within_state(self) -> dict[str, Any] | None:
        """The kept copy for a checkpoint, where it differs from the weights saved beside it (so a resumed run
        goes back to the same weights as an uninterrupted one); after a stop they are the saved weights."""
        w = self.within
        if w is None or self.stopped or w.step == self.step:
            return None
        return {"step": w.step, "kl": w.kl, "weights": w.weights}

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
        last = self.metrics[-1] if self.metrics else {}
        self.bounded_kl = float(last.get("kl_bound/sampled_kl", 0.0))
        self.stopped = last.get("kl_bound/stopped", 0.0) == 1.0
        kept = state.get("within")
        if kept is not None:
            self.within = Within(int(kept["step"]), float(kept["kl"]), dict(kept["weights"]))
        self.prompt_rng.bit_generator.state = state["rng"]["prompt_rng"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        log.info("resumed from %s at step %d", ckpt, self.step)


def _note(algorithm: str, row: dict[str, float]) -> str:
    """The progress bar's note: the score when there is one, the KL, and a KL bound's measurement and stop."""
    score = f" score {row['objective/score']:.3f}" if "objective/score" in row else ""
    bound = f" sampled kl {row['kl_bound/sampled_kl']:.2f}" if "kl_bound/sampled_kl" in row else ""
    stop = ": stopped at its KL bound" if row.get("kl_bound/stopped") == 1.0 else ""
    return f"{algorithm}{score} kl {row['objective/kl']:.2f}{bound}{stop}"


_PROGRESS_FIELDS = (
    ("score", "objective/score", "%.3f"),
    ("kl", "objective/kl", "%.3f"),
    ("beta", "objective/kl_coef", "%.4f"),
    ("loss", "loss/policy", "%.4f"),
    ("approx_kl", "policy/approx_kl", "%.4f"),
    ("accuracy", "dpo/accuracy", "%.2f"),
    ("sampled_kl", "kl_bound/sampled_kl", "%.3f"),
    ("stopped", "kl_bound/stopped", "%d"),
)
"""What a step's log line shows, where the algorithm logs it: (label, metric key, format)."""


def _progress(algorithm: str, total: int, enabled: bool) -> Callable[[dict[str, float]], None]:
    """A log line per step with the fields the algorithm has (the CLI shows a progress bar around the stage)."""

    def report(row: dict[str, float]) -> None:
        if enabled:
            fields = [(f"{label} {fmt}", row[key]) for label, key, fmt in _PROGRESS_FIELDS if key in row]
            fmt = " ".join(["%s step %d/%d", *(f for f, _ in fields), "%.1f samples/s"])
            log.info(fmt, algorithm, row["step"], total, *(v for _, v in fields), row["charts/samples_per_s"])

    return report


def summary(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """First/last score (when a scorer is in the loop) and KL, and mean throughput, for metrics/ppo.json; with a
    KL bound, the last measured KL (``kl_sampled_last``) and, where the bound stopped the run, the step and the
    KL it stopped at (``stopped_at_step``, ``kl_at_stop``) and the step and KL of the weights it went back to and
    exported (``exported_step``, ``exported_kl``)."""
    if not metrics:
        return {}
    first, last = metrics[0], metrics[-1]
    tail = metrics[-max(1, len(metrics) // 4) :]
    out: dict[str, float] = {"steps": int(last["step"])}
    if "objective/score" in last:
        out["score_first"] = first["objective/score"]
        out["score_last"] = last["objective/score"]
        out["score_last_quarter"] = float(np.mean([m["objective/score"] for m in tail]))
    out.update(
        {
            "kl_last": last["objective/kl"],
            "kl_max": max(m["objective/kl"] for m in metrics),
            "kl_coef_last": last["objective/kl_coef"],
            "samples_per_s": float(np.mean([m["charts/samples_per_s"] for m in metrics])),
            "seconds_total": float(sum(m["time/step"] for m in metrics)),
        }
    )
    if "kl_bound/sampled_kl" in last:
        out["kl_sampled_last"] = last["kl_bound/sampled_kl"]
    stop = next((m for m in metrics if m.get("kl_bound/stopped") == 1.0), None)
    if stop is not None:
        out["stopped_at_step"] = int(stop["step"])
        out["kl_at_stop"] = stop["kl_bound/sampled_kl"]
        if "kl_bound/kept_step" in stop:
            out["exported_step"] = int(stop["kl_bound/kept_step"])
            out["exported_kl"] = stop["kl_bound/kept_kl"]
    return out
