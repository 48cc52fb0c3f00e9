"""Served feedback into the versioned data: export newly rated served outputs, validate them, version them.

Ratings are stored as ratings, and every two differently rated replies to one prompt also become a preference
pair (``components.feedback.pairs.ratings_to_pairs``), beside the users' own pairwise choices, so that the
next reward model learns from what users said about the served policy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from components.paths import ProjectPaths

log = logging.getLogger(__name__)

SERVED_SOURCE = "served"


def export_new_feedback(paths: ProjectPaths) -> dict[str, Any]:
    """Rows rated since the last export, as records per kind (empty when no service has logged anything)."""
    try:
        from components.served_store import export_feedback
    except ImportError:  # a checkout without the serving store: nothing can have been served
        log.info("no served-output store in this checkout; nothing to export")
        return {"counts": {"ratings": 0, "pairs": 0}, "ratings": [], "pairs": []}
    exported = export_feedback(paths)
    ratings, pairs = _frame(exported, "ratings"), _frame(exported, "pairs")
    return {
        "counts": {"ratings": len(ratings), "pairs": len(pairs)},
        "ratings": ratings.to_dict("records"),
        "pairs": pairs.to_dict("records"),
    }


def _frame(exported: Any, kind: str) -> pd.DataFrame:
    value = exported.get(kind) if isinstance(exported, dict) else getattr(exported, kind)
    if value is None:
        return pd.DataFrame()
    if isinstance(value, (str, Path)):
        return pd.read_json(value, lines=True) if Path(value).stat().st_size else pd.DataFrame()
    return pd.DataFrame(value)


def ingest_exported(paths: ProjectPaths, params: Path, exported: dict[str, Any]) -> dict[str, Any]:
    """Validate + version the exported ratings, then the pairs (users' choices + pairs from ratings)."""
    from components.config import load_section
    from components.feedback.config import DataConfig
    from components.feedback.pairs import ratings_to_pairs
    from components.feedback.schema import PAIRS, RATINGS
    from components.feedback.store import data_version, ingest_frame

    cfg = load_section(DataConfig, "data", params)
    previous = data_version(paths)
    counts: dict[str, Any] = {"rows_in": 0, "accepted": 0, "quarantined": 0, "by_reason": {}}
    ratings = pd.DataFrame(exported.get("ratings") or [])
    pairs = pd.DataFrame(exported.get("pairs") or [])
    ingests = []
    if len(ratings):
        done = ingest_frame(
            ratings, RATINGS, paths, cfg, origin="served-ratings", source=SERVED_SOURCE, report_dir=_report(paths)
        )
        ingests.append(done)
        accepted = done.validation.accepted
        if len(accepted):
            derived = ratings_to_pairs(accepted)
            pairs = pd.concat([pairs, derived], ignore_index=True) if len(pairs) else derived
    if len(pairs):
        ingests.append(
            ingest_frame(
                pairs, PAIRS, paths, cfg, origin="served-pairs", source=SERVED_SOURCE, report_dir=_report(paths)
            )
        )
    for done in ingests:
        v = done.validation
        counts["rows_in"] += v.rows_in
        counts["accepted"] += len(v.accepted)
        counts["quarantined"] += len(v.quarantined)
        for reason, n in v.by_reason.items():
            counts["by_reason"][reason] = counts["by_reason"].get(reason, 0) + n
    return {"validation": counts, "version": data_version(paths), "previous_version": previous}


def _report(paths: ProjectPaths) -> Path:
    return paths.reports / "served-validation"
