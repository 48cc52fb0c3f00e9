"""One step's batch of replies: sampled from the policy (the rollout) or read from preference pairs, tokenised
the same way, with what the no-grad forward pass adds to it.

Letters: B replies, P prompt tokens (left padded), R reply tokens (right padded after EOS), V vocabulary,
H hidden size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from components.data.prompt_pool import Prompt
from components.models.generation import encode_prompts, encode_text

log = logging.getLogger(__name__)


@dataclass
class RolloutBatch:
    """One step's replies and everything computed from them (per process)."""

    prompts: list[str]
    texts: list[str]
    input_ids: torch.Tensor  # shape: (B, P+R)
    attention_mask: torch.Tensor  # shape: (B, P+R)
    context_length: int  # P
    response_ids: torch.Tensor  # shape: (B, R)
    mask: torch.Tensor  # shape: (B, R), 1 up to and including EOS
    ended: torch.Tensor  # shape: (B,)
    logp: torch.Tensor = field(default=None)  # shape: (B, R), the policy's at rollout time
    ref_logp: torch.Tensor = field(default=None)  # shape: (B, R)
    values: torch.Tensor | None = None  # shape: (B, R), PPO's value head only
    entropy: torch.Tensor | None = None  # shape: (B, R)
    gen_logits: torch.Tensor | None = None  # shape: (B, R, V), the logits sampling used (shared trunk only)
    gen_hidden: torch.Tensor | None = None  # shape: (B, R, H), the policy's last hidden states while sampling
    exact_kl: torch.Tensor | None = None  # shape: (B,), per reply the summed exact KL to the reference (a bound's)

    def __len__(self) -> int:
        return len(self.prompts)


def slice_rows(batch: RolloutBatch, idx: slice | torch.Tensor) -> RolloutBatch:
    """Rows ``idx`` of a batch (tensors indexed, lists picked)."""
    rows = range(len(batch.prompts))[idx] if isinstance(idx, slice) else idx.tolist()

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[idx]

    return replace(
        batch,
        prompts=[batch.prompts[i] for i in rows],
        texts=[batch.texts[i] for i in rows],
        input_ids=pick(batch.input_ids),
        attention_mask=pick(batch.attention_mask),
        response_ids=pick(batch.response_ids),
        mask=pick(batch.mask),
        ended=pick(batch.ended),
        logp=pick(batch.logp),
        ref_logp=pick(batch.ref_logp),
        values=pick(batch.values),
        entropy=pick(batch.entropy),
        gen_logits=pick(batch.gen_logits),
        gen_hidden=pick(batch.gen_hidden),
        exact_kl=pick(batch.exact_kl),
    )


def encode_replies(
    tok: PreTrainedTokenizerBase, prompts: list[Prompt], replies: list[str], *, system: str | None, max_tokens: int
) -> RolloutBatch:
    """Given prompt/reply texts in the rollout's layout: chat-templated prompts left padded, each reply's tokens
    followed by EOS (how the policy ends a turn) and right padded, cut at ``max_tokens`` (a cut reply has no
    EOS and ``ended`` False). For the offline preference optimisers, which score replies they did not sample.
    Prompt and reply text is encoded as text (:func:`~components.models.generation.encode_prompts`), so a pair whose
    text writes ``<|im_end|>`` or ``<|im_start|>`` cannot forge turns in training."""
    query_ids, query_mask = encode_prompts(tok, prompts, system)  # shape: (B, P)
    rows = []
    for text in replies:
        ids = [*encode_text(tok, text), tok.eos_token_id]
        rows.append(ids[:max_tokens])
    R = max(len(r) for r in rows)
    response_ids = torch.full((len(rows), R), tok.eos_token_id, dtype=torch.long)  # shape: (B, R)
    mask = torch.zeros((len(rows), R), dtype=torch.long)  # shape: (B, R)
    for i, ids in enumerate(rows):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    ended = torch.tensor([r[-1] == tok.eos_token_id for r in rows])
    return RolloutBatch(
        prompts=list(prompts),
        texts=list(replies),
        input_ids=torch.cat([query_ids, response_ids], dim=1),
        attention_mask=torch.cat([query_mask, mask], dim=1),
        context_length=query_ids.shape[1],
        response_ids=response_ids,
        mask=mask,
        ended=ended,
    )


def read_prompts(path: Path, root: Path | None = None) -> list[Prompt]:
    """Prompts from a pool file (``{"prompt"}`` / ``{"messages"}`` rows; a bad row is an error naming its line).

    With ``root`` (the project), a prompt that is one of the pool's held-out prompts is refused
    (:class:`~components.data.prompt_pool.HeldoutLeak`): held-out prompts never train the policy."""
    from components.data.prompt_pool import read_prompts as read_pool
    from components.data.prompt_pool import refuse_heldout

    prompts = read_pool(path)
    if root is not None:
        refuse_heldout(prompts, root, f"training prompts in {path}")
    return prompts


def read_pairs(path: Path, root: Path | None = None) -> list[tuple[Prompt, str, str]]:
    """``(prompt, chosen, rejected)`` rows of the versioned preference pairs (a conversation's prompt as its
    messages); none is an error saying what to do. With ``root`` (the project), pairs on the prompt pool's
    held-out prompts are left out: they never train the policy."""
    return [row[:3] for row in read_pairs_with_source(path, root)]


def read_pairs_with_source(path: Path, root: Path | None = None) -> list[tuple[Prompt, str, str, str]]:
    """:func:`read_pairs` with each pair's ``source`` (``served``: people chose between two served replies)."""
    from components.data.feedback.io import read_parquet
    from components.data.feedback.schema import PAIRS
    from components.data.prompt_pool import from_record, heldout_keys, prompt_key

    if not path.is_file():
        raise FileNotFoundError(f"preference pairs {path} not found: validate and store feedback first (rlhf import)")
    frame = read_parquet(path, PAIRS)
    prompts = [from_record(r) for r in frame.loc[:, ["prompt", "prompt_messages"]].to_dict("records")]
    sources = frame["source"].fillna("").astype(str) if "source" in frame.columns else [""] * len(frame)
    rows = list(zip(prompts, frame["chosen"], frame["rejected"], sources, strict=True))
    held = heldout_keys(root) if root is not None else set()
    if held:
        kept = [r for r in rows if prompt_key(r[0]) not in held]
        if len(kept) < len(rows):
            log.info("%d pairs on held-out prompts of the pool left out of policy training", len(rows) - len(kept))
        rows = kept
    if not rows:
        raise ValueError(f"{path}: no preference pairs to train on")
    return rows
