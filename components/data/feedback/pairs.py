"""Preference pairs from ratings: replies to the same prompt, the higher-rated one chosen over the lower.

This is how served-output ratings (``POST /feedback {"id", "rating"}``) become training pairs for the
Bradley–Terry reward model: for every prompt, every two distinct replies with different ratings make one
pair, ``margin`` = the rating difference (the margin term of Llama 2's reward loss, Touvron et al. 2023,
eq. 2, can use it). Equal ratings carry no preference and make no pair.
"""

from __future__ import annotations

import itertools

import pandas as pd

from components.data.feedback.schema import PAIRS, RATINGS, SCHEMAS, conform, empty_frame


def ratings_to_pairs(
    ratings: pd.DataFrame,
    *,
    min_margin: float = 1.0,
    max_pairs_per_prompt: int | None = None,
    now: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Pairs (stored pairs schema) from stored-schema ratings.

    A reply rated several times counts once, with its mean rating (and its first served id). Pairs are
    formed within a prompt only; ``max_pairs_per_prompt`` keeps the largest-margin pairs when set.
    """
    missing = [c for c in SCHEMAS[RATINGS].required if c not in ratings.columns]
    if missing:
        raise ValueError(f"ratings frame lacks column(s) {', '.join(missing)}")
    if ratings.empty:
        return empty_frame(PAIRS)
    now = now or pd.Timestamp.now(tz="UTC")
    frame = ratings.copy()
    for col in ("served_id", "annotator", "prompt_messages"):
        if col not in frame.columns:
            frame[col] = None
    replies = (
        frame.groupby(["prompt", "response"], sort=False)
        .agg(
            rating=("rating", "mean"),
            served_id=("served_id", "first"),
            prompt_messages=("prompt_messages", "first"),
            annotators=("annotator", lambda s: sorted({str(a) for a in s.dropna()})),
        )
        .reset_index()
    )
    rows = []
    for prompt, group in replies.groupby("prompt", sort=False):
        candidates = []
        for a, b in itertools.combinations(group.itertuples(index=False), 2):
            hi, lo = (a, b) if a.rating >= b.rating else (b, a)
            margin = float(hi.rating - lo.rating)
            if margin < min_margin or margin == 0:
                continue
            annotators = sorted(set(hi.annotators) | set(lo.annotators))
            candidates.append(
                {
                    "prompt": prompt,
                    "chosen": hi.response,
                    "rejected": lo.response,
                    "source": "ratings",
                    "annotator": annotators[0] if len(annotators) == 1 else "ratings",
                    "created_at": now,
                    "margin": margin,
                    "chosen_id": hi.served_id,
                    "rejected_id": lo.served_id,
                    "prompt_messages": hi.prompt_messages,
                }
            )
        candidates.sort(key=lambda r: -r["margin"])
        rows += candidates[:max_pairs_per_prompt] if max_pairs_per_prompt else candidates
    if not rows:
        return empty_frame(PAIRS)
    return conform(pd.DataFrame(rows), PAIRS)
