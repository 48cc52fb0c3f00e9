"""The judge's slice of the human pairs: decided by a hash of the normalised prompt, so a prompt stays on the
same side in every round and the two reward models never share a prompt (Gao et al. 2022's gold-RM protocol
keeps the gold model's data apart from the proxy's)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

SALT = "rlhf-loop/judge-slice/v1"
"""Mixed into the hash, so this split is independent of any other hash split of the same prompts."""
RULE = f"sha256({SALT!r} + normalised prompt) / 2**64 < fraction"
"""The rule in words, recorded in both reward models' manifests."""


def normalise_prompt(prompt: str | Sequence[dict[str, str]]) -> str:
    """Case-folded, whitespace-collapsed text; a conversation as JSON of its normalised turns."""
    from components.data.prompt_pool import as_messages

    if isinstance(prompt, str):
        return " ".join(prompt.split()).casefold()
    return json.dumps([[m["role"], " ".join(m["content"].split()).casefold()] for m in as_messages(prompt)])


def slice_position(prompt: str | Sequence[dict[str, str]]) -> float:
    """A prompt's fixed position in [0, 1) (the first 64 bits of a salted SHA-256)."""
    digest = hashlib.sha256(f"{SALT}\0{normalise_prompt(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_judge_slice(prompt: str | Sequence[dict[str, str]], fraction: float) -> bool:
    """Whether the prompt's pairs belong to the judge reward model (and never to the training one)."""
    return fraction > 0 and slice_position(prompt) < fraction


def slice_record(fraction: float, side: str, kept: int, dropped: int) -> dict:
    """What a reward model's manifest says about the judge slice (``side``: ``judge`` or ``train``)."""
    return {"fraction": fraction, "side": side, "rule": RULE, "pairs_kept": kept, "pairs_dropped": dropped}
