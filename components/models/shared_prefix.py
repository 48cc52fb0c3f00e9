"""Encode the opening every sequence of a batch shares once, and run only the rest of each sequence.

Every text the reward model reads starts with the same chat-template opening (the system turn and the
user turn's header, ~20 of ~75 tokens), and every PPO sequence with the policy's system prompt. Under a
causal mask a token's keys, values and hidden states depend only on the tokens up to it, so that opening's
are the same in every row: computed once for one row (a KV cache), copied to the batch, and the batch runs
only the remaining tokens, with the cache in front. The result equals the full pass up to float rounding
(the same sums, other matrix shapes); tested against it.

Used by the reward model's frozen blocks, its training steps (top blocks, with gradient) and its scoring, the
PPO reference pass, PPO's update (the policy with LoRA, with gradient: the opening runs once per micro-batch,
and its gradient is the sum over the rows, as in the full pass), the evaluation's KL, and the serving engine
(``serve.prefix_cache``: the chat template's opening, :func:`template_prefix`, runs once per served model and
each admitted prompt that starts with it prefills only its suffix after a copy of that cache,
:func:`prefixed_inputs`).

Letters: B rows, P shared tokens, S remaining tokens (padded), T = P + S.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from components.models.generation import encode_chat, left_pad, position_ids_from_mask, reply_logits

MIN_SHARED = 4
"""Shorter shared openings are not worth the extra prefix pass."""


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """The longest token prefix all ``rows`` share, leaving each row at least one token after it."""
    if not rows:
        return 0
    first = rows[0]
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def prefix_cache(
    model: torch.nn.Module, prefix: Sequence[int], rows: int, device: torch.device, **kwargs: object
) -> DynamicCache:
    """The KV cache of ``prefix`` (one pass of one row through every block), copied for ``rows`` rows; under
    autograd the copies' gradients add up in the one pass. ``kwargs`` go to the model (``logits_to_keep=1``
    for a causal LM)."""
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)  # shape: (1, P)
    past = DynamicCache(config=model.config)
    model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=past, use_cache=True, **kwargs)
    if rows > 1:
        past.batch_repeat_interleave(rows)
    return past


def suffix_inputs(suffix_mask: torch.Tensor, shared: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch run after a cached prefix of ``shared`` tokens: the attention mask over prefix + suffix
    (B, P+S) and the suffix tokens' position ids (B, S), counting only real tokens (left or right padding)."""
    ones = torch.ones((suffix_mask.shape[0], shared), dtype=suffix_mask.dtype, device=suffix_mask.device)
    return torch.cat([ones, suffix_mask], dim=1), shared + position_ids_from_mask(suffix_mask)


def repeat_cache(cache: DynamicCache, rows: int) -> DynamicCache:
    """A new cache with ``rows`` copies of one-row ``cache``, which stays as it was (a forward pass appends to
    the copy, so one prefix cache serves any number of batches)."""
    out = copy.deepcopy(cache)
    if rows > 1:
        out.batch_repeat_interleave(rows)
    return out


def template_prefix(tok: Any, system: str) -> list[int]:
    """The token ids every prompt with system prompt ``system`` opens with, as :func:`encode_chat` renders it:
    the system turn and the first user turn's header. Derived from the tokenizer, not assumed: the longest
    common prefix of two renderings whose user texts differ from their first character on. A caller still
    checks each prompt against it (:func:`starts_with`): a request with its own system prompt does not."""
    a, b = (encode_chat(tok, [{"role": "system", "content": system}, {"role": "user", "content": t}]) for t in "0x")
    return a[: common_prefix_length([a, b])]


def starts_with(ids: Sequence[int], prefix: Sequence[int]) -> bool:
    """Whether ``ids`` opens with ``prefix`` and has at least one token after it (the one whose logits are read)."""
    return 0 < len(prefix) < len(ids) and list(ids[: len(prefix)]) == list(prefix)


def prefixed_inputs(
    suffixes: Sequence[Sequence[int]], shared: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of a batch prefilled after a cached prefix of ``shared`` tokens: the suffixes left padded (B, S),
    the attention mask over prefix + suffix (B, P+S) (ones, then each suffix's padding as zeros in the middle,
    then its tokens) and the suffix tokens' position ids (B, S): a real token's position is the one it has in
    the whole left-padded prompt (prefix length + its index in its suffix), so RoPE sees the same positions."""
    ids, mask = left_pad(suffixes, pad_id)
    full, positions = suffix_inputs(mask, shared)
    return ids, full, positions


def suffix_after_prefix(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, shared: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose first ``shared`` real tokens are the common prefix (left padded before them, right padded
    after a reply if need be): the columns after each row's prefix, all ending at the last column as before,
    ``(ids, mask)`` of shape (B, S); a row's columns up to its prefix's end are masked."""
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)  # shape: (T,)
    first = (attention_mask * (attention_mask.shape[1] - columns)).argmax(dim=1)  # shape: (B,) first real column
    start = first + shared  # shape: (B,)
    width = input_ids.shape[1] - int(start.min().item())
    keep = (columns[-width:].unsqueeze(0) >= start.unsqueeze(1)).to(attention_mask.dtype)  # shape: (B, S)
    return input_ids[:, -width:], attention_mask[:, -width:] * keep


def shared_real_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """The real tokens every row starts with (at most each row's real length minus one)."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())]
    return rows[0][: common_prefix_length(rows)] if rows else []


def split_opening(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, reply_len: int
) -> tuple[list[int], torch.Tensor, torch.Tensor] | None:
    """Prompt+reply rows (left padded, replies right padded) as ``(opening, rest_ids, rest_mask)``: the real
    tokens every row starts with, and each row's columns after them (:func:`suffix_after_prefix`); None when
    they share fewer than :data:`MIN_SHARED` tokens or the opening reaches into the last ``reply_len`` + 1
    columns (the positions whose outputs are read)."""
    prefix = shared_real_prefix(input_ids, attention_mask)
    if len(prefix) < MIN_SHARED:
        return None
    ids, mask = suffix_after_prefix(input_ids, attention_mask, len(prefix))
    if ids.shape[1] < reply_len + 1 or not bool((mask[:, -(reply_len + 1)] == 1).all()):
        return None
    return prefix, ids, mask


def causal_lm_after_opening(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, reply_len: int, **kwargs: object
) -> object | None:
    """``model``'s output over the last ``reply_len`` + 1 positions of prompt+reply rows (``logits_to_keep``),
    with the shared opening run once (:func:`prefix_cache`) and the batch after it: logits and hidden states
    cover the rest columns only, which end at the same last column as the full rows. None when nothing worth
    sharing (:func:`split_opening`); gradients flow when autograd is on."""
    split = split_opening(input_ids, attention_mask, reply_len)
    if split is None:
        return None
    prefix, ids, mask = split
    full_mask, positions = suffix_inputs(mask, len(prefix))
    past = prefix_cache(model, prefix, ids.shape[0], input_ids.device, logits_to_keep=1)
    return model(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=positions,
        past_key_values=past,
        logits_to_keep=reply_len + 1,
        use_cache=True,
        **kwargs,
    )


@torch.no_grad()
def reply_logits_shared(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, reply_len: int
) -> torch.Tensor:
    """:func:`components.models.generation.reply_logits` (frozen model, no gradient) of prompt+reply rows with their
    common opening (the system prompt) encoded once; the plain pass where :func:`split_opening` finds none."""
    out = causal_lm_after_opening(model, input_ids, attention_mask, reply_len)
    if out is None:
        return reply_logits(model, input_ids, attention_mask, reply_len)
    return out.logits[:, :-1]  # shape: (B, R, V)
