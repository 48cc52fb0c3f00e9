"""``policy.micro_batch_size: auto`` and ``policy.forward_batch_size: auto``: batch sizes from free GPU memory.

On CUDA a pass costs about the same whatever its size until the GPU is full (the update is host-bound at small
sizes, docs/benchmarks.md), so the sizes that use the GPU best are the largest that fit. The rule, as pure
functions of the model's dimensions and the free memory (``torch.cuda.mem_get_info``):

- an update micro-step keeps, per reply, the activations of every layer for the backward pass, estimated at
  34 bytes per hidden unit per token per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in
  Large Transformer Models", section 4.1: ``s b h (34 + 5 a s / h)`` bytes per layer with 16-bit activations;
  the ``5 a s / h`` term is the attention-score matrix, which fused SDPA kernels do not keep), plus the reply
  positions' logits: bf16 logits, their float32 copy and log-softmax, and the gradients of both,
  2 + 4 + 4 + 4 + 2 = 16 bytes per vocabulary entry per position;
- a no-grad pass (step 2) keeps one layer's activations at a time and the bf16 logits of the reply positions
  (log-probs are taken a chunk of positions at a time, ``ppo_math.chunked_logprobs``): 34 bytes per hidden unit
  per token, plus 2 bytes per vocabulary entry per position;
- the batch fits :data:`MEMORY_FRACTION` of the free memory (the rest is headroom for the allocator's
  fragmentation, autocast's weight copies and the estimate's error); the micro-batch is the largest divisor of
  the minibatch (a multiple of the algorithm's group: a preference pair stays in one micro-batch) that fits,
  the forward batch the largest count of replies that fits.

On the CPU ``auto`` resolves to the fixed defaults (:data:`CPU_MICRO_BATCH`, the whole batch per no-grad pass),
where the measured CPU figures were taken.
"""

from __future__ import annotations

MEMORY_FRACTION = 0.5
"""Share of the free GPU memory the estimated activations may take."""
CPU_MICRO_BATCH = 8
"""``micro_batch_size: auto`` on the CPU (the stage's default)."""
ACTIVATION_BYTES_PER_HIDDEN = 34
"""Bytes per hidden unit per token per layer kept for backward (Korthikanti et al. 2022, 16-bit, no scores)."""
UPDATE_LOGIT_BYTES = 16
"""Bytes per vocabulary entry per reply position in an update (bf16 logits, float32 copy and log-softmax, grads)."""
FORWARD_LOGIT_BYTES = 2
"""Bytes per vocabulary entry per reply position kept by a no-grad pass (bf16 logits)."""


def update_bytes_per_reply(seq_len: int, reply_len: int, layers: int, hidden: int, vocab: int) -> int:
    """Estimated memory one reply of ``seq_len`` tokens (``reply_len`` of them the reply) costs in an update
    micro-step: every layer's activations for the backward pass, plus the reply positions' logits and grads."""
    return seq_len * layers * hidden * ACTIVATION_BYTES_PER_HIDDEN + (reply_len + 1) * vocab * UPDATE_LOGIT_BYTES


def forward_bytes_per_reply(seq_len: int, reply_len: int, hidden: int, vocab: int) -> int:
    """Estimated memory one reply costs in a no-grad pass: one layer's activations and the reply's bf16 logits."""
    return seq_len * hidden * ACTIVATION_BYTES_PER_HIDDEN + (reply_len + 1) * vocab * FORWARD_LOGIT_BYTES


def auto_micro_batch(free_bytes: int, per_reply: int, mini_batch: int, group: int = 1) -> int:
    """The largest divisor of ``mini_batch`` that is a multiple of ``group`` and whose replies fit
    :data:`MEMORY_FRACTION` of ``free_bytes`` at ``per_reply`` bytes each; ``group`` when none fits (the
    smallest micro-batch the algorithm allows)."""
    if mini_batch < 1 or group < 1 or per_reply < 1:
        raise ValueError(f"mini_batch, group and per_reply must be >= 1, got {mini_batch}, {group}, {per_reply}")
    budget = int(free_bytes * MEMORY_FRACTION)
    fitting = [d for d in range(group, mini_batch + 1, group) if mini_batch % d == 0 and d * per_reply <= budget]
    return max(fitting, default=group)


def auto_forward_batch(free_bytes: int, per_reply: int, batch: int) -> int:
    """The most replies (at most ``batch``, at least 1) whose no-grad pass fits :data:`MEMORY_FRACTION` of
    ``free_bytes`` at ``per_reply`` bytes each."""
    if batch < 1 or per_reply < 1:
        raise ValueError(f"batch and per_reply must be >= 1, got {batch}, {per_reply}")
    return max(1, min(batch, int(free_bytes * MEMORY_FRACTION) // per_reply))
