"""Reading preference pairs for the reward model and splitting them into train / held-out by prompt."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.prompt_pool import Prompt, from_record, prompt_key

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
"""Columns the reward model reads; ``margin`` (float, nullable) is optional, other columns are ignored."""


class PairsError(ValueError):
    """A pairs file the reward model cannot train on, with what to do about it."""


@dataclass(frozen=True)
class Pairs:
    """Preference pairs as plain lists (margins: null -> 0.0)."""

    prompts: list[Prompt]
    """Each pair's prompt: a string, or a conversation's messages (``prompt_messages`` in the stored pairs)."""
    chosen: list[str]
    rejected: list[str]
    margins: list[float]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: np.ndarray | list[int]) -> Pairs:
        return Pairs(
            [self.prompts[i] for i in idx],
            [self.chosen[i] for i in idx],
            [self.rejected[i] for i in idx],
            [self.margins[i] for i in idx],
        )


def read_pairs(path: Path) -> Pairs:
    """Read a Parquet (or JSONL) pairs file; missing columns or empty texts are errors naming the rows."""
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"{path}: pairs file not found (seed or import feedback first, then validate it)")
    df = pd.read_json(path, lines=True) if path.suffix in {".jsonl", ".json"} else pd.read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise PairsError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(map(str, df.columns))})")
    if df.empty:
        raise PairsError(f"{path}: no preference pairs; the reward model needs at least 2")
    for col in REQUIRED_COLUMNS:
        bad = df.index[df[col].isna() | (df[col].astype(str).str.strip() == "")].tolist()
        if bad:
            raise PairsError(
                f"{path}: column {col!r} is empty or null in {len(bad)} row(s), first rows {bad[:5]}; "
                "validate the feedback (rlhf validate) so such rows are quarantined"
            )
    if "margin" in df.columns:
        margins = pd.to_numeric(df["margin"], errors="raise").fillna(0.0).astype(float).tolist()
    else:
        margins = [0.0] * len(df)
    if "prompt_messages" in df.columns:
        prompts = [from_record(r) for r in df.loc[:, ["prompt", "prompt_messages"]].to_dict("records")]
    else:
        prompts = df["prompt"].astype(str).tolist()
    return Pairs(
        prompts,
        df["chosen"].astype(str).tolist(),
        df["rejected"].astype(str).tolist(),
        margins,
    )


SPLIT_SALT = "rlhf-loop/reward-split/v1"
"""Mixed into the split's hash, so it is independent of the judge slice's hash split of the same prompts."""


def split_position(key: str, seed: int) -> float:
    """A prompt's fixed position in [0, 1) for the held-out split under ``seed`` (64 bits of a salted SHA-256)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}\0{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_prompt(pairs: Pairs, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, held_out)``: a prompt is held out with all its pairs when its salted hash position
    (:func:`split_position`) is below ``eval_fraction``, so no held-out prompt is seen in training and a prompt
    stays on its side as the pairs grow round after round (a reward model trained on from an earlier one never
    meets its parent's training prompts among its held-out ones). With two or more prompts and a positive
    fraction, at least one prompt is held out (the lowest position) and at least one trains (the highest)."""
    keys = [p if isinstance(p, str) else prompt_key(p) for p in pairs.prompts]
    unique = sorted(set(keys))
    position = {k: split_position(k, seed) for k in unique}
    held = {k for k in unique if position[k] < eval_fraction} if eval_fraction > 0 else set()
    if eval_fraction > 0 and len(unique) >= 2:
        if not held:
            held = {min(unique, key=position.__getitem__)}
        elif len(held) == len(unique):
            held.discard(max(unique, key=position.__getitem__))
    is_eval = np.array([k in held for k in keys], dtype=bool)
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def pool_heldout_rows(pairs: Pairs, heldout: set[str]) -> np.ndarray:
    """Rows whose prompt is one of the prompt pool's held-out prompts (``heldout``: their keys): they never
    train the reward model."""
    return np.array([i for i, p in enumerate(pairs.prompts) if prompt_key(p) in heldout], dtype=int)


def file_md5(path: Path) -> str:
    """MD5 of a file's bytes (the same hash DVC uses for files)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_pair_per_prompt(pairs: Pairs) -> np.ndarray:
    """Row index of each prompt's first pair, in file order. The demo's seeding writes a prompt's best-vs-worst
    pair first, so these rows are the widest-gap pairs: the comparison held-out accuracy is quoted on."""
    seen: set[str] = set()
    rows = []
    for i, prompt in enumerate(pairs.prompts):
        key = prompt if isinstance(prompt, str) else prompt_key(prompt)
        if key not in seen:
            seen.add(key)
            rows.append(i)
    return np.array(rows, dtype=int)
