"""Raters as people in the data: how much each one gave, and how far they agree where they judged the same item.

- **Ratings** (1..5 on one reply): Krippendorff's alpha with the interval metric, ``alpha = 1 - D_o / D_e``
  (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011, sec. "interval"), over the replies
  rated by two raters or more. 1 is perfect agreement, 0 is what chance gives, below 0 is systematic
  disagreement.
- **Pairwise choices** (the better of two replies): the agreement rate, the share of (ordered) pairs of
  raters judging the same two replies who chose the same one, pooled over every pair judged more than once.

Pairs made from ratings (:func:`made_from_ratings`) are not choices anyone made: they count for nobody.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import pandas as pd

DERIVED = "ratings"
"""The ``source`` of pairs made from two ratings (:func:`components.data.feedback.pairs.ratings_to_pairs`)."""
SERVED = "served"


def _squared_spread(values: Sequence[float]) -> float:
    """Sum over ordered pairs ``i != j`` of ``(v_i - v_j) ** 2``, as ``2 m sum(v^2) - 2 (sum v)^2``."""
    m, total, squares = len(values), sum(values), sum(v * v for v in values)
    return 2.0 * m * squares - 2.0 * total * total


def krippendorff_alpha_interval(units: Sequence[Sequence[float]]) -> float | None:
    """Krippendorff's alpha (interval metric) over ``units``, each the values raters gave one item.

    Units with fewer than two values are not pairable and are left out. ``D_o`` sums each unit's squared
    differences over its ordered pairs, weighted by ``1 / (m_u - 1)``, divided by ``n`` (the pairable values);
    ``D_e`` sums them over every ordered pair of pairable values, divided by ``n (n - 1)``. None when nothing is
    pairable or every value is the same (``D_e = 0``: alpha is undefined).
    """
    pairable = [list(u) for u in units if len(u) >= 2]
    n = sum(len(u) for u in pairable)
    if n < 2:
        return None
    observed = sum(_squared_spread(u) / (len(u) - 1) for u in pairable) / n
    expected = _squared_spread([v for u in pairable for v in u]) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


def agreement_rate(units: Sequence[Sequence[Hashable]]) -> float | None:
    """The share of ordered pairs of judgements on the same item that agree, pooled over units of two or more
    judgements (None when there is none)."""
    agree = total = 0
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        counts: dict[Hashable, int] = defaultdict(int)
        for value in unit:
            counts[value] += 1
        agree += sum(c * (c - 1) for c in counts.values())
        total += m * (m - 1)
    return agree / total if total else None


def _rating_units(ratings: pd.DataFrame) -> list[list[float]]:
    """One unit per reply rated by two raters or more (a rater's repeated rating of one reply counts once)."""
    if ratings.empty or "annotator" not in ratings:
        return []
    frame = ratings.assign(item=_item(ratings, ("served_id",), ("prompt", "response")))
    once = frame.drop_duplicates(["item", "annotator"])
    return [g["rating"].astype(float).tolist() for _, g in once.groupby("item") if len(g) >= 2]


def _choice_units(pairs: pd.DataFrame) -> list[list[str]]:
    """One unit per two replies chosen between by two raters or more; a judgement is the chosen reply."""
    if pairs.empty or "annotator" not in pairs:
        return []
    chosen = _item(pairs, ("chosen_id",), ("chosen",))
    rejected = _item(pairs, ("rejected_id",), ("rejected",))
    frame = pairs.assign(
        item=[f"{p}\x1f{min(a, b)}\x1f{max(a, b)}" for p, a, b in zip(pairs["prompt"], chosen, rejected, strict=True)],
        pick=chosen,
    ).drop_duplicates(["item", "annotator"])
    return [g["pick"].tolist() for _, g in frame.groupby("item") if len(g) >= 2]


def _item(frame: pd.DataFrame, by_id: tuple[str, ...], by_text: tuple[str, ...]) -> pd.Series:
    """An item key: the served id where there is one, else the text columns joined."""
    text = frame[list(by_text)].fillna("").astype(str).agg("\x1f".join, axis=1)  # missing -> "" (not NaN)
    if all(c in frame for c in by_id):
        ids = frame[by_id[0]]
        return ids.where(ids.notna() & (ids.astype(str) != ""), text).astype(str)
    return text


def made_from_ratings(pairs: pd.DataFrame) -> pd.Series:
    """Which pairs were made from two ratings rather than chosen: ``source == "ratings"``, or served pairs with a
    ``margin`` (the served ingest stores the pairs it makes from ratings as ``served`` with the rating
    difference as margin; a user's own choice has none)."""
    if "source" not in pairs:
        return pd.Series(False, index=pairs.index, dtype=bool)
    source = pairs["source"].astype(str)
    margin = pairs["margin"].notna() if "margin" in pairs else pd.Series(False, index=pairs.index)
    return (source == DERIVED) | ((source == SERVED) & margin)


def own_choices(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs somebody chose (pairs made from ratings left out)."""
    return pairs[~made_from_ratings(pairs)]


def summarise(ratings: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, Any]:
    """Per-rater counts and agreement of one data version's feedback (stored ratings and pairs frames)."""
    chosen = own_choices(pairs)
    by_rater: dict[str, dict[str, int]] = defaultdict(lambda: {"ratings": 0, "pairs": 0})
    for kind, frame in (("ratings", ratings), ("pairs", chosen)):
        if "annotator" in frame:
            for name, count in frame["annotator"].fillna("unknown").astype(str).value_counts().items():
                by_rater[str(name)][kind] = int(count)
    rating_units, choice_units = _rating_units(ratings), _choice_units(chosen)
    alpha, rate = krippendorff_alpha_interval(rating_units), agreement_rate(choice_units)
    return {
        "by_rater": dict(sorted(by_rater.items())),
        "ratings_alpha": None if alpha is None else round(alpha, 4),
        "replies_rated_more_than_once": len(rating_units),
        "choice_agreement": None if rate is None else round(rate, 4),
        "pairs_judged_more_than_once": len(choice_units),
    }


def rater_summary(paths: Any) -> dict[str, Any]:
    """:func:`summarise` of the checked-out data version (``data/feedback/``)."""
    from components.data.feedback.schema import PAIRS, RATINGS
    from components.data.feedback.store import load

    return summarise(load(paths, RATINGS), load(paths, PAIRS))
