"""The policy being trained: the LM (LoRA adapters or all weights), an optional value head, the frozen reference.

Every optimiser trains the same :class:`ActorCritic`; only PPO gives it a value head (the others estimate
advantages from the scores of several samples per prompt, or need none). With LoRA the reference is the same
weights with the adapters disabled (no copy); without it, a frozen copy.

Letters: B replies, P prompt tokens (left padded), R reply tokens (right padded), V vocabulary, H hidden size.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedModel

from components.config.policy import PolicyConfig
from components.models.generation import position_ids_from_mask
from components.models.shared_prefix import causal_lm_after_opening


class ActorCritic(nn.Module):
    """The policy LM and (PPO only) a scalar value head, in one module so DDP wraps and syncs both.

    ``value_trunk=None``: the value head reads the policy's last hidden state (shared trunk, one
    forward pass). Otherwise it reads ``value_trunk``'s (its own copy of the base, its own LoRA).
    Default ``shared``, by measurement (docs/benchmarks.md; ``python -m bench ppo_steps --value-model shared
    separate`` compares the two): a separate trunk costs more time per micro-batch and twice the weights.
    ``with_value=False``: no value head.
    """

    def __init__(
        self, policy: nn.Module, hidden_size: int, value_trunk: nn.Module | None = None, with_value: bool = True
    ) -> None:
        super().__init__()
        self.policy = policy
        self.value_trunk = value_trunk
        self.value_head = nn.Linear(hidden_size, 1) if with_value else None
        if self.value_head is not None:
            # N-details: heads initialised with std 1/sqrt(H + 1), bias 0.
            nn.init.normal_(self.value_head.weight, std=1.0 / np.sqrt(hidden_size + 1))
            nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits predicting each reply token and the value before it: ``(B, R, V)`` and ``(B, R)`` (None
        without a value head)."""
        R = input_ids.shape[1] - context_length
        want_hidden = self.value_head is not None and self.value_trunk is None
        if self.value_trunk is None:
            # the system prompt every row opens with runs once, for one row (components/models/shared_prefix.py)
            out = causal_lm_after_opening(self.policy, input_ids, attention_mask, R, output_hidden_states=want_hidden)
            if out is not None:
                if not want_hidden:
                    return out.logits[:, :-1], None
                hidden = out.hidden_states[-1]  # shape: (B, S, H), the same last columns as the full rows
                values = self.value_head(hidden[:, -(R + 1) : -1].float()).squeeze(-1)  # shape: (B, R)
                return out.logits[:, :-1], values
        position_ids = position_ids_from_mask(attention_mask)  # shape: (B, P+R), left padding aware
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=want_hidden,
            logits_to_keep=R + 1,  # only the positions that predict reply tokens (+1 dropped below)
            use_cache=False,
        )
        logits = out.logits[:, :-1]  # shape: (B, R, V): position P-1+t predicts reply token t
        if self.value_head is None:
            return logits, None
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


def build_actor_critic(
    cfg: PolicyConfig, base: PreTrainedModel, with_value: bool = True
) -> tuple[ActorCritic, nn.Module | None]:
    """Wrap ``base`` for training; return ``(actor_critic, reference)`` (reference None with LoRA).
    ``with_value=False``: no value head (and no separate value trunk), for the optimisers that need none."""
    hidden = base.config.hidden_size
    value_base = copy.deepcopy(base) if with_value and cfg.value_model == "separate" else None
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
    ac = ActorCritic(policy, hidden, value_trunk, with_value=with_value)
    ac.eval()  # dropout off (N-details); gradients still flow in eval mode
    return ac, reference


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


def replicas_in_sync(acc: Accelerator, ac: nn.Module) -> bool:
    """True when every process holds the same trainable weights (data parallel sanity check)."""
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in ac.parameters() if p.requires_grad]).sum()
    gathered = acc.gather(total.reshape(1).to(acc.device))
    return bool(torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=0, atol=1e-9))
