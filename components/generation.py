"""Chat formatting and batched sampling shared by seeding, evaluation, PPO rollouts and serving.

Letters: B batch, P prompt tokens (left padded), R response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def chat_text(tok: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> str:
    """The model's chat template applied to one user message, ending with the assistant header."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so left padding does not shift positions; shape (B, T)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


@dataclass(frozen=True)
class Generation:
    """A batch of sampled replies with the tensors PPO needs."""

    texts: list[str]
    """Decoded replies, cut at the first EOS."""
    query_ids: torch.Tensor  # shape: (B, P), left padded
    query_mask: torch.Tensor  # shape: (B, P)
    response_ids: torch.Tensor  # shape: (B, R), right padded after EOS
    response_mask: torch.Tensor  # shape: (B, R), 1 up to and including the first EOS
    ended: torch.Tensor  # shape: (B,), True where the reply produced EOS
    logits: torch.Tensor | None = None
    """With ``return_internals``: the raw (unscaled) logits that sampled each reply token, (B, R, V)."""
    hidden: torch.Tensor | None = None
    """With ``return_internals``: the last hidden state at the position before each reply token (the one
    whose logits sampled it), (B, R, H): what a value head on the policy's trunk reads."""


def response_mask_from_eos(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask every token up to and including the first EOS; also return which rows ended.

    Masks by position, never by comparing with the pad id (pad == EOS for SmolLM2).
    """
    is_eos = response_ids == eos_id  # shape: (B, R)
    ended = is_eos.any(dim=1)  # shape: (B,)
    first = torch.where(
        ended, is_eos.float().argmax(dim=1), torch.full_like(ended, response_ids.shape[1], dtype=torch.long)
    )
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)  # shape: (R,)
    mask = (positions.unsqueeze(0) <= first.unsqueeze(1)).long()  # shape: (B, R)
    return mask, ended


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    max_new_tokens: int = 48,
    temperature: float = 0.7,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator_seed: int | None = None,
    return_internals: bool = False,
) -> Generation:
    """Sample one reply per prompt in a single left-padded batch with the KV cache.

    ``return_internals`` also keeps the logits and last hidden states the sampling computed anyway, so
    PPO needs no second policy forward pass for its rollout log-probs and values.
    """
    tok.padding_side = "left"
    texts = [chat_text(tok, p, system) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    sampling = {} if greedy else {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        use_cache=True,
        return_dict_in_generate=True,
        output_logits=return_internals,
        output_hidden_states=return_internals,
        **{k: v for k, v in sampling.items() if k != "do_sample"},
    )
    response = out.sequences[:, enc["input_ids"].shape[1] :]  # shape: (B, R)
    mask, ended = response_mask_from_eos(response, tok.eos_token_id)
    replies = []
    for row, m in zip(response, mask):
        kept = row[m.bool()]
        if len(kept) and kept[-1].item() == tok.eos_token_id:
            kept = kept[:-1]
        replies.append(tok.decode(kept, skip_special_tokens=True).strip())
    logits = hidden = None
    if return_internals:
        logits = torch.stack(out.logits, dim=1)  # shape: (B, R, V)
        # Step 0 (prefill) holds every prompt position; its last one sampled reply token 0. Step k > 0
        # ran reply token k-1 through the model and sampled token k. [-1]: the last layer's output.
        steps = out.hidden_states
        hidden = torch.cat([steps[0][-1][:, -1:], *(h[-1] for h in steps[1:])], dim=1)  # shape: (B, R, H)
    return Generation(replies, enc["input_ids"], enc["attention_mask"], response, mask, ended, logits, hidden)
