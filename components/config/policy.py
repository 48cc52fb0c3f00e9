"""``PolicyConfig``: every knob of the policy stage (``params.yaml`` section ``policy``, called ``ppo`` before the
stage had several optimisers; a file with the old name is still read).

Defaults are sized for the CPU demo (SmolLM2-135M-Instruct with LoRA, a few minutes); the reference values
from the literature are given beside each field where they differ, and the measurements behind the defaults are
in ``docs/benchmarks.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Algorithm = Literal["ppo", "rloo", "grpo", "dpo", "online_dpo", "bon_sft"]
"""The policy optimisers (docs/optimisers.md); ``ppo`` is the default."""


@dataclass(frozen=True)
class RLOOConfig:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): k samples per prompt, each baselined by the other k-1."""

    k: int = 4
    """Samples per prompt (Ahmadian et al.: 2-4); a step samples ``batch_size / k`` prompts."""
    epochs: int = 1
    """Updates over each batch; above 1 the PPO-style ``clip_range`` keeps them near the sampling policy."""
    clip_range: float | None = 0.2
    """Clip of the sequence-level ratio pi/pi_old (TRL ``RLOOTrainer``: 0.2); null = plain REINFORCE."""
    whiten_advantages: bool = False
    """Whiten the leave-one-out advantages over the batch (TRL ``normalize_advantage``, default off)."""
    max_kl: float | None = 5.0
    """Bound on the KL to the reference (the parent), in nats per reply: the mean KL of each step's own samples, summed
    exactly along each reply (the batch's ``objective/kl_exact``, measured before the update); a step whose batch is
    beyond it makes no update, training stops there and the policy goes back to its weights at the last batch within the
    bound; the last step's update is measured on samples of its own (as ``dpo.max_kl``). null = no bound: the KL
    controller's penalty alone holds the policy. 5.0 leaves 1 nat below the gate's default ``gate.max_kl`` (6)
    (docs/optimisers.md)."""


@dataclass(frozen=True)
class GRPOConfig:
    """Group relative policy optimisation (Shao et al. 2024), optionally length-unbiased (Dr. GRPO)."""

    k: int = 4
    """Samples per prompt, the group (TRL ``num_generations``); a step samples ``batch_size / k`` prompts."""
    kl_coef: float = 0.04
    """beta of the k3 KL to the reference in the loss (TRL 0.x default 0.04; 0 drops the reference pass's use)."""
    variant: Literal["grpo", "dr_grpo"] = "grpo"
    """``grpo``: advantages divided by the group's std, loss averaged per reply; ``dr_grpo`` (Liu et al. 2025):
    no std division, every token weighs 1 / (B * max_new_tokens)."""
    epochs: int = 1
    """Updates over each batch (TRL ``num_iterations``: 1); the ratio clip acts from the second on."""
    clip_range: float = 0.2
    """Token ratio clip epsilon (TRL ``epsilon``: 0.2)."""
    max_kl: float | None = 5.0
    """Bound on the KL to the reference (the parent), in nats per reply: the mean KL of each step's own samples, summed
    exactly along each reply (the batch's ``objective/kl_exact``, measured before the update); a step whose batch is
    beyond it makes no update, training stops there and the policy goes back to its weights at the last batch within the
    bound; the last step's update is measured on samples of its own (as ``dpo.max_kl``). null = no bound: ``kl_coef``
    alone holds the policy. 5.0 leaves 1 nat below the gate's default ``gate.max_kl`` (6) (docs/optimisers.md)."""


@dataclass(frozen=True)
class DPOConfig:
    """Direct preference optimisation on the versioned pairs (Rafailov et al. 2023), the parent as reference."""

    pairs: str = "data/feedback/pairs.parquet"
    """The accepted preference pairs (``prompt, chosen, rejected``), relative to the project root."""
    beta: float = 0.1
    """Strength of the implicit KL to the reference (Rafailov et al.: 0.1-0.5; TRL: 0.1)."""
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """``sigmoid``: DPO; ``ipo`` (Azar et al. 2023): squared loss on length-averaged log-ratios."""
    max_reply_tokens: int = 64
    """Reply tokens kept per side of a pair (longer replies are cut)."""
    rpo_alpha: float = 0.0
    """Weight of the chosen replies' negative log-likelihood (token mean) added to the DPO loss: RPO (Pang et al.
    2024; TRL's ``rpo_alpha``, 1.0 in the paper). It keeps the chosen replies likely, so the policy moves towards
    them rather than only away from the rejected ones. 0 = plain DPO."""
    epochs: int = 1
    """Passes over each step's pairs."""
    max_kl: float | None = 5.0
    """Bound on the KL to the reference (the parent), in nats per reply: every ``kl_every`` steps and after the last one
    the policy samples replies to ``kl_prompts`` training prompts (``policy.prompts``) and their mean KL to the
    reference is measured on them, exactly along each reply (``ppo_math.reply_kl``), as ``bon_sft`` measures its bound;
    once it exceeds ``max_kl``, training stops (no further update) and the policy goes back to its weights at the last
    measurement within the bound (the parent's if none), the ones exported. null = no bound: the pairs' loss alone
    decides how far it goes. 5.0 leaves 1 nat below the gate's default ``gate.max_kl`` (6) for the held-out prompts' KL
    scattering around the training prompts' one (the steps since the last measurement within the bound are undone)."""
    kl_every: int = 1
    """Steps between two measurements of the bounded KL. Each costs one batched generation of ``kl_prompts``
    replies and a reference pass (on CPU about as long as an offline DPO step); a stop goes back to the last
    measurement within the bound, so the steps since it are lost (on the demo the KL grew up to about 2.6 nats in a
    step), hence 1."""
    kl_prompts: int = 16
    """Training prompts (a fixed seeded draw, one reply each, the same sampling seed every time) the bounded KL
    is measured on."""
    served_weight: float = 1.0
    """How often a pair people chose between two replies of a served model (source ``served``: the loop's own,
    on-policy feedback) is drawn for a step, relative to any other pair (imported, seed). 1 = uniform over pairs."""

    def __post_init__(self) -> None:
        if self.served_weight <= 0:
            raise ValueError(f"policy.dpo.served_weight must be > 0, got {self.served_weight}")


@dataclass(frozen=True)
class OnlineDPOConfig:
    """Online DPO (Guo et al. 2024): two samples per prompt, the reward model picks the chosen one."""

    beta: float = 0.1
    """As ``dpo.beta``."""
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """As ``dpo.loss``."""
    epochs: int = 1
    """Passes over each step's pairs."""
    max_kl: float | None = 5.0
    """Bound on the KL to the reference (the parent), in nats per reply: the mean KL of each step's own samples, summed
    exactly along each reply (the batch's ``objective/kl_exact``, measured before the update); a step whose batch is
    beyond it makes no update, training stops there and the policy goes back to its weights at the last batch within the
    bound; the last step's update is measured on samples of its own (as ``dpo.max_kl``). null = no bound: ``beta`` alone
    holds the policy. 5.0 leaves 1 nat below the gate's default ``gate.max_kl`` (6) (docs/optimisers.md)."""


@dataclass(frozen=True)
class BoNSFTConfig:
    """Best-of-n distillation (RAFT, Dong et al. 2023): supervised steps on the reward model's best of n samples."""

    n: int = 4
    """Samples per prompt; the best one (by the reward model) is the target. A step samples ``batch_size / n``
    prompts."""
    epochs: int = 2
    """Supervised passes over each step's best replies."""
    max_kl: float | None = 5.0
    """Bound on the KL to the parent (nats per reply, the exact KL summed along each of the policy's own samples,
    measured on each step's batch before the update: ``objective/kl_exact``): a step whose samples are further away
    makes no update, training stops there and the policy goes back to its weights at the last batch within the bound;
    the last step's update is measured on samples of its own (as ``grpo.max_kl``). null = no bound."""


@dataclass(frozen=True)
class PolicyConfig:
    """Fine-tuning of the policy: ``algorithm`` picks the optimiser (PPO by default), the rest is shared or PPO's."""

    algorithm: Algorithm = "ppo"
    """The optimiser (docs/optimisers.md): ``ppo``, ``rloo``, ``grpo``, ``dpo`` (offline, from the pairs),
    ``online_dpo`` or ``bon_sft``; its own knobs are in the section of the same name below. The fields below
    are shared; the advantage/loss fields under "advantages and losses" are PPO's."""

    # --- inputs and outputs -----------------------------------------------------------------
    reward_model: str = "models/reward"
    """Scorer: a reward-model folder (``components.models.reward``), or a built-in stand-in:
    ``builtin:vader`` (VADER sentiment of the reply) or ``builtin:count:WORD`` (occurrences of WORD)."""
    prompts: str = "data/prompts/train.jsonl"
    """JSONL file of training prompts, one ``{"prompt": ...}`` per line (relative to the project root)."""
    output_dir: str = "models/policy"
    """Where the exported policy goes: a plain transformers folder (LoRA merged) + manifest.json."""
    checkpoint_dir: str = "models/ppo-checkpoints"
    """Where resumable checkpoints go (not a DVC output; kept across runs for ``--resume``)."""

    # --- schedule ---------------------------------------------------------------------------
    steps: int = 16
    """PPO steps (rollout + update). Each step samples ``batch_size`` prompts per process."""
    batch_size: int = 16
    """Prompts (= replies) per step per process (N-details: 512 on 8 GPUs; small for CPU)."""
    mini_batch_size: int = 8
    """Replies per optimiser step; ``batch_size`` must be a multiple of it."""
    micro_batch_size: int | Literal["auto"] = 8
    """Replies per forward/backward pass; gradients are accumulated up to ``mini_batch_size``. ``auto``: on CUDA
    the largest divisor of ``mini_batch_size`` whose activations fit half the free GPU memory (the rule in
    ``components/models/policy/batch_sizing.py``), on the CPU 8."""
    forward_batch_size: int | Literal["auto"] | None = None
    """Replies per no-grad pass of step 2 (the reference's log-probs; with a separate value trunk also the
    policy's); ``None``: the whole batch in one pass. Smaller only bounds memory: on a GPU each pass costs about
    the same whatever its size. ``auto``: on CUDA the most replies that fit half the free GPU memory, on the CPU
    the whole batch."""
    ppo_epochs: int = 2
    """Passes over each rollout batch (N-details / Ziegler et al.: 4; 2 keeps CPU steps short)."""
    seed: int = 0
    """Base seed; process ``r`` uses ``seed + r`` (a different seed per process, N-details)."""
    save_every: int = 4
    """Write a resumable checkpoint every this many steps (and always at the last step)."""

    # --- rollout ----------------------------------------------------------------------------
    max_new_tokens: int = 32
    """Reply length cap; replies stop at EOS and are truncated after it."""
    temperature: float = 0.7
    """Sampling temperature; log-probs are computed from logits divided by it (N-details: 0.7)."""
    top_k: int = 0
    """0 = no top-k filtering (PPO needs the full distribution it computes log-probs from)."""
    top_p: float = 1.0
    """1.0 = no nucleus filtering (same reason)."""
    missing_eos_penalty: float = 0.5
    """Subtracted from the score of replies that hit ``max_new_tokens`` without EOS (TRL, N-details)."""

    # --- rewards and KL ---------------------------------------------------------------------
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator in the reward: k1 = log p - log q (Ziegler et al.), k3 = non-negative (Schulman)."""
    adaptive_kl: bool = True
    """Adapt the KL coefficient toward ``kl_target`` (Ziegler et al. 2019); false = fixed ``init_kl_coef``."""
    init_kl_coef: float = 0.4
    """Initial (or fixed) KL coefficient beta (Ziegler et al.: 0.1-0.2; TRL: 0.05)."""
    kl_target: float = 4.0
    """Target KL (nats, summed over a reply) for the adaptive controller (Ziegler et al.: 6 for 24-token replies)."""
    kl_horizon: int = 64
    """Controller horizon in samples (Ziegler et al.: 10000). Each step multiplies beta by at most
    ``1 ± 0.2 * batch_size / kl_horizon``, so a short run needs a short horizon for beta to move at all."""
    reward_normalization: Literal["model", "rollouts"] = "model"
    """How scores are normalised before PPO adds the KL penalty: ``model`` uses the scorer's own scale (the
    reward model's statistics from its training pairs); ``rollouts`` first samples ``normalization_samples``
    replies from the initial policy at ``temperature`` (what PPO's first rollouts look like), and makes the
    scores mean 0 and std 1 on them (Ziegler et al. 2019 normalise on samples of the policy likewise). The
    statistics are measured once, at step 0, and kept in checkpoints."""
    normalization_samples: int = 64
    """With ``reward_normalization: rollouts``: replies (per process) the statistics are measured on."""
    whiten_rewards: bool = False
    """Whiten the KL-shaped per-token rewards per batch (TRL ``whiten_rewards``); the RM is normalised already."""

    # --- advantages and losses --------------------------------------------------------------
    gamma: float = 1.0
    """Discount (N-details: 1)."""
    lam: float = 0.95
    """GAE lambda (N-details: 0.95)."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch's response tokens (N-details)."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon (Schulman et al. 2017: 0.2)."""
    clip_range_value: float = 0.2
    """Value clip around the rollout-time values (N-details: 0.2)."""
    vf_coef: float = 0.1
    """Weight of the value loss (TRL: 0.1)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (0 = off, as in N-details)."""
    early_stop_kl: float | None = 0.1
    """Stop the step's remaining PPO epochs once a minibatch's approx KL (0.5 E[log-ratio^2]) exceeds this;
    null = never (cleanrl ``target_kl``)."""

    # --- optimiser --------------------------------------------------------------------------
    learning_rate: float = 5e-4
    """Adam learning rate (LoRA; use ~1e-5 for full fine-tuning)."""
    lr_decay: bool = True
    """Anneal the learning rate linearly to 0 over ``steps`` (N-details, cleanrl)."""
    adam_eps: float = 1e-5
    """Adam epsilon (N-details: 1e-5, as in OpenAI's TF code)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (TRL: 1.0)."""

    # --- model ------------------------------------------------------------------------------
    init_from: Literal["base", "champion"] = "champion"
    """Where PPO starts: ``champion`` = the registry's current champion (iterative RLHF: each round fine-tunes
    the policy users were served; its folder is also the KL reference, so the evaluation's KL and the gate's
    ``max_kl`` measure the step from that champion), or ``model.base`` while the champion is the base or
    there is no registry yet; ``base`` = always ``model.base``. The flow writes the starting point to
    ``registry/ppo_parent.json`` before training, a dep of the ``ppo`` stage, so a new champion reruns PPO."""
    lora: bool = True
    """Train LoRA adapters (peft) instead of all weights; the reference is the base with adapters disabled."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")
    """Linear layers that get adapters (all of a Llama block's projections)."""
    value_model: Literal["shared", "separate"] = "shared"
    """Value head on the policy's trunk (``shared``) or on its own copy of the base (``separate``)."""
    bf16: bool = True
    """Run rollouts, forward passes, scoring and updates under bf16 autocast (weights stay float32) where the
    device computes bf16 natively: CUDA GPUs with bf16, CPUs with AVX512-BF16 / AMX
    (``components/models/precision.py``); float32 elsewhere."""

    # --- the other optimisers' own knobs --------------------------------------------------
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    """``algorithm: rloo``: samples per prompt, update epochs, ratio clip."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """``algorithm: grpo``: group size, KL coefficient in the loss, ``grpo`` or ``dr_grpo``."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """``algorithm: dpo``: the pairs file, beta, DPO or IPO."""
    online_dpo: OnlineDPOConfig = field(default_factory=OnlineDPOConfig)
    """``algorithm: online_dpo``: beta, DPO or IPO."""
    bon_sft: BoNSFTConfig = field(default_factory=BoNSFTConfig)
    """``algorithm: bon_sft``: samples per prompt, supervised epochs, the KL bound."""

    def __post_init__(self) -> None:
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of mini_batch_size {self.mini_batch_size}"
            )
        if self.micro_batch_size != "auto" and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or auto, got {self.micro_batch_size}")
        if self.micro_batch_size != "auto" and self.mini_batch_size % self.micro_batch_size:
            raise ValueError(
                f"mini_batch_size {self.mini_batch_size} must be a multiple of micro_batch_size {self.micro_batch_size}"
            )
        if self.forward_batch_size not in (None, "auto") and self.forward_batch_size < 1:
            raise ValueError(
                f"forward_batch_size must be >= 1, null (whole batch) or auto, got {self.forward_batch_size}"
            )
        for name in ("steps", "batch_size", "ppo_epochs", "save_every", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.normalization_samples < 2:
            raise ValueError(f"normalization_samples must be >= 2, got {self.normalization_samples}")
        if self.top_k != 0 or self.top_p != 1.0:
            # PPO's log-probs come from the full softmax; a filtered sampler would make them off-policy.
            raise ValueError("PPO needs top_k=0 and top_p=1.0 (log-probs are computed from the unfiltered softmax)")

        self._check_algorithm()

    def _check_algorithm(self) -> None:
        group = self.group_size
        if self.batch_size % group:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of {self.algorithm}'s {group} samples per prompt"
            )
        odd_micro = self.micro_batch_size != "auto" and self.micro_batch_size % 2
        if self.algorithm in ("dpo", "online_dpo") and (self.mini_batch_size % 2 or odd_micro):
            raise ValueError(f"{self.algorithm} keeps each pair in one micro-batch: mini/micro_batch_size must be even")
        for name in ("rloo", "grpo", "dpo", "online_dpo", "bon_sft"):
            if getattr(self, name).epochs < 1:
                raise ValueError(f"{name}.epochs must be >= 1, got {getattr(self, name).epochs}")
        if self.rloo.k < 2 or self.grpo.k < 2 or self.bon_sft.n < 2:
            raise ValueError("rloo.k, grpo.k and bon_sft.n must be >= 2 (they compare samples of one prompt)")
        if self.dpo.beta <= 0 or self.online_dpo.beta <= 0:
            raise ValueError("dpo.beta and online_dpo.beta must be > 0")
        for name in ("rloo", "grpo", "dpo", "online_dpo", "bon_sft"):
            max_kl = getattr(self, name).max_kl
            if max_kl is not None and max_kl <= 0:
                raise ValueError(f"{name}.max_kl must be > 0 nats or null (no bound), got {max_kl}")
        if self.dpo.kl_every < 1 or self.dpo.kl_prompts < 1:
            raise ValueError(
                f"dpo.kl_every and dpo.kl_prompts must be >= 1, got {self.dpo.kl_every} and {self.dpo.kl_prompts}"
            )
        if self.dpo.rpo_alpha < 0:
            raise ValueError(f"dpo.rpo_alpha must be >= 0 (0 = plain DPO), got {self.dpo.rpo_alpha}")

    @property
    def group_size(self) -> int:
        """Replies per prompt in a step's batch: k for RLOO/GRPO, n for best-of-n, 2 for (online) DPO, else 1."""
        return {"rloo": self.rloo.k, "grpo": self.grpo.k, "bon_sft": self.bon_sft.n, "dpo": 2, "online_dpo": 2}.get(
            self.algorithm, 1
        )

    @property
    def controller_kl_target(self) -> float | None:
        """The KL the adaptive controller steers toward (``kl_target``), for the optimisers whose KL penalty it sets
        (PPO, RLOO); None for the others (GRPO's ``kl_coef`` and DPO's ``beta`` are fixed) or without it."""
        return self.kl_target if self.adaptive_kl and self.algorithm in ("ppo", "rloo") else None

    @property
    def grad_accumulation(self) -> int | None:
        """Micro-batches per optimiser step (None with ``micro_batch_size: auto``: known once resolved)."""
        if self.micro_batch_size == "auto":
            return None
        return self.mini_batch_size // self.micro_batch_size


# Fields that change where files go or how often they are written, never the numbers: not part of the
# fingerprint that guards ``--resume``.
OPERATIONAL_FIELDS = frozenset({"output_dir", "checkpoint_dir", "save_every"})
