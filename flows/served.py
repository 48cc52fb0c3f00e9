"""Served feedback into the versioned data: export newly rated served outputs, validate them, version them.

The export does not move the store's watermark; the watermark moves only after the rows are validated and
versioned, so a failed or retried run exports the same rows again (and the store's deduplication keeps them
once). Ratings are stored as ratings, and every two differently rated replies to one prompt also become a
preference pair (``components.feedback.pairs.ratings_to_pairs``), beside the users' own pairwise choices, so
the next reward model learns from what users said about the served policy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from components.paths import ProjectPaths
from components.progress import Progress
from components.progress import report as tell

log = logging.getLogger(__name__)


def _store_url(paths: ProjectPaths, params: Path) -> str | None:
    """The served-output store's URL, or None when no service has written a store in this project."""
    from components.config.serve import load_serve_config, store_url

    url = store_url(load_serve_config(paths, params), paths)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    return url


def export_new_feedback(paths: ProjectPaths, params: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Files of the feedback recorded since the last export (``live/exports/<time>/``) and the new watermark."""
    from components.served_store import export_feedback, open_store

    empty = {"counts": {"ratings": 0, "pairs": 0, "ties": 0}, "ratings": None, "pairs": None, "watermark": None}
    url = _store_url(paths, params)
    if url is None:
        log.info("no served-output store in %s: nothing to export", paths.live)
        return empty
    tell(progress, 0, 1, "exporting rated served outputs")
    store = open_store(url)
    try:
        out = paths.live / "exports" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out.mkdir(parents=True, exist_ok=True)
        done = export_feedback(store, out, advance=False)
    finally:
        store.close()
    tell(progress, 1, 1, f"exported {done.ratings} ratings, {done.pairs} pairs")
    return {
        "counts": {"ratings": done.ratings, "pairs": done.pairs, "ties": done.ties_skipped},
        "ratings": str(done.ratings_path) if done.ratings_path else None,
        "pairs": str(done.pairs_path) if done.pairs_path else None,
        "watermark": done.watermark,
    }


def ingest_exported(
    paths: ProjectPaths, params: Path, exported: dict[str, Any], progress: Progress | None = None
) -> dict[str, Any]:
    """Validate + version the exported ratings, then the pairs (users' choices + pairs from ratings); then
    move the store's watermark past what was exported."""
    from components.config import load_section
    from components.config.validation import ValidationConfig
    from components.feedback.pairs import ratings_to_pairs
    from components.feedback.schema import PAIRS
    from components.feedback.store import data_version, ingest_file, ingest_frame

    cfg = load_section(ValidationConfig, "validation", params)
    previous = data_version(paths)
    report = paths.reports / "served-validation"
    ingests, derived_pairs = [], 0
    parts = ("ratings", "pairs")
    steps = sum(bool(exported.get(k)) for k in parts)
    tell(progress, 0, steps, "validating + versioning exported feedback")
    if exported.get("ratings"):
        done = ingest_file(exported["ratings"], paths, cfg, report_dir=report / "ratings")
        ingests.append(done)
        derived = ratings_to_pairs(done.validation.accepted) if len(done.validation.accepted) else None
        if derived is not None and len(derived):
            derived["source"] = "served"
            made = ingest_frame(
                derived, PAIRS, paths, cfg, origin="served-ratings", source="served", report_dir=report / "derived"
            )
            derived_pairs = len(made.validation.accepted)
            ingests.append(made)
        tell(progress, 1, steps, "validated + versioned the ratings")
    if exported.get("pairs"):
        ingests.append(ingest_file(exported["pairs"], paths, cfg, report_dir=report / "pairs"))
        tell(progress, steps, steps, "validated + versioned the pairs")
    if exported.get("watermark"):
        _advance(paths, params, exported["watermark"])
    counts: dict[str, Any] = {"rows_in": 0, "accepted": 0, "quarantined": 0, "by_reason": {}}
    served_ids: set[str] = set()
    for done in ingests:
        v = done.validation
        counts["rows_in"] += v.rows_in
        counts["accepted"] += len(v.accepted)
        counts["quarantined"] += len(v.quarantined)
        for reason, n in v.by_reason.items():
            counts["by_reason"][reason] = counts["by_reason"].get(reason, 0) + n
        for col in ("served_id", "chosen_id", "rejected_id"):
            if col in v.accepted.columns:
                served_ids.update(str(x) for x in v.accepted[col].dropna())
    counts["pairs_from_ratings"] = derived_pairs
    counts["served_ids"] = len(served_ids)
    return {"validation": counts, "version": data_version(paths), "previous_version": previous}


def _advance(paths: ProjectPaths, params: Path, marks: dict[str, int]) -> None:
    from components.served_store import open_store

    url = _store_url(paths, params)
    if url is None:
        return
    store = open_store(url)
    try:
        store.advance_watermark(marks)
    finally:
        store.close()
