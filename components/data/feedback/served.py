"""The served-feedback stages: what users said about served outputs, into the versioned data.

Two stage functions (:mod:`components.stages`):
- :func:`export_served_feedback`: the ratings and pairwise choices recorded on served outputs since the last
  export, written as feedback files under ``live/exports/<time>/``. It does not move the store's watermark.
- :func:`ingest_served_feedback`: validates and versions those files (ratings, then pairs), then moves the
  watermark past what was exported. A failed or retried run therefore exports the same rows again, and the
  store's deduplication keeps them once.

Ratings are stored as ratings, and every two differently rated replies to one prompt also become a preference
pair (:func:`components.data.feedback.pairs.ratings_to_pairs`), beside the users' own pairwise choices, so the next
reward model learns from what users said about the served policy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.common.progress import Progress
from components.common.progress import report as tell
from components.config.serve import ServeConfig
from components.config.validation import ValidationConfig
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedExport:
    """What :func:`export_served_feedback` wrote (JSON-serialisable)."""

    store_url: str | None
    """The served-output store it read (None: no service has written a store in this project yet)."""
    ratings: int = 0
    pairs: int = 0
    ties: int = 0
    """Pairwise choices recorded as a tie: they state no preference, so they make no training pair."""
    ratings_path: str | None = None
    pairs_path: str | None = None
    watermark: dict[str, int] | None = None
    """The store's watermark once these rows are versioned (:func:`ingest_served_feedback` moves it)."""
    prompts: int = 0
    """Distinct prompts users sent since the last export, rated or not: they join the prompt pool."""
    prompts_path: str | None = None


@dataclass(frozen=True)
class ServedIngest:
    """What :func:`ingest_served_feedback` validated and versioned (JSON-serialisable); counts add up:
    ``rows_in == accepted + quarantined``."""

    rows_in: int
    accepted: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)
    pairs_from_ratings: int = 0
    """Preference pairs made from two differently rated replies to one prompt (counted in ``rows_in`` too)."""
    served_ids: int = 0
    """Distinct served outputs the accepted rows refer to."""
    version: str | None = None
    """The data version afterwards (unchanged when nothing was accepted)."""
    previous_version: str | None = None
    prompts_added: int = 0
    """Served prompts new to the pool's served prompts file (``data/prompts/sources/served.jsonl``)."""


def _store_url(cfg: ServeConfig, paths: ProjectPaths) -> str | None:
    """The served-output store's URL, or None when no service has written a store in this project."""
    from components.data.served_store import store_url

    url = store_url(cfg, paths)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    return url


def export_served_feedback(cfg: ServeConfig, paths: ProjectPaths, *, progress: Progress | None = None) -> ServedExport:
    """Files of the feedback recorded since the last export (``live/exports/<time>/``) and the new watermark."""
    from components.data.served_store import export_feedback, open_store

    url = _store_url(cfg, paths)
    if url is None:
        log.info("no served-output store in %s: nothing to export", paths.live)
        return ServedExport(store_url=None)
    tell(progress, 0, 1, "exporting rated served outputs")
    store = open_store(url)
    try:
        out = paths.live / "exports" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out.mkdir(parents=True, exist_ok=True)
        done = export_feedback(store, out, advance=False)
    finally:
        store.close()
    tell(progress, 1, 1, f"exported {done.ratings} ratings, {done.pairs} pairs, {done.prompts} served prompts")
    return ServedExport(
        store_url=url,
        ratings=done.ratings,
        pairs=done.pairs,
        ties=done.ties_skipped,
        ratings_path=str(done.ratings_path) if done.ratings_path else None,
        pairs_path=str(done.pairs_path) if done.pairs_path else None,
        watermark=dict(done.watermark) if done.watermark else None,
        prompts=done.prompts,
        prompts_path=str(done.prompts_path) if done.prompts_path else None,
    )


def ingest_served_feedback(
    cfg: ValidationConfig, paths: ProjectPaths, *, exported: ServedExport, progress: Progress | None = None
) -> ServedIngest:
    """Add the served prompts to the pool's sources, validate + version the exported ratings, then the pairs
    (users' choices + pairs from ratings), or, with no feedback, version the served prompts alone; then move the
    store's watermark past what was exported."""
    from components.data.feedback.store import add_served_prompts, data_version, restore_served_prompts

    previous = data_version(paths)
    added, before = add_served_prompts(paths, exported.prompts_path) if exported.prompts_path else (0, None)
    try:
        return _ingest(cfg, paths, exported, added, progress)
    except BaseException:
        if data_version(paths) == previous:  # nothing versioned: the pool's sources go back as they were
            restore_served_prompts(paths, before)
        raise


def _ingest(
    cfg: ValidationConfig, paths: ProjectPaths, exported: ServedExport, added: int, progress: Progress | None
) -> ServedIngest:
    from components.data.feedback.pairs import ratings_to_pairs
    from components.data.feedback.schema import PAIRS
    from components.data.feedback.store import data_version, ingest_file, ingest_frame, version_prompts

    previous = data_version(paths)
    report = paths.reports / "served-validation"
    ingests, derived_pairs = [], 0
    steps = bool(exported.ratings_path) + bool(exported.pairs_path)
    tell(progress, 0, steps, "validating + versioning exported feedback")
    if exported.ratings_path:
        done = ingest_file(exported.ratings_path, paths, cfg, report_dir=report / "ratings")
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
    if exported.pairs_path:
        ingests.append(ingest_file(exported.pairs_path, paths, cfg, report_dir=report / "pairs"))
        tell(progress, steps, steps, "validated + versioned the pairs")
    if added and not ingests:
        version_prompts(paths, origin="served-prompts")
    if exported.watermark and exported.store_url:
        _advance(exported.store_url, exported.watermark)
    by_reason: dict[str, int] = {}
    served_ids: set[str] = set()
    for v in (done.validation for done in ingests):
        for reason, n in v.by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        for col in ("served_id", "chosen_id", "rejected_id"):
            if col in v.accepted.columns:
                served_ids.update(str(x) for x in v.accepted[col].dropna())
    return ServedIngest(
        rows_in=sum(done.validation.rows_in for done in ingests),
        accepted=sum(len(done.validation.accepted) for done in ingests),
        quarantined=sum(len(done.validation.quarantined) for done in ingests),
        by_reason=by_reason,
        pairs_from_ratings=derived_pairs,
        served_ids=len(served_ids),
        version=data_version(paths),
        previous_version=previous,
        prompts_added=added,
    )


def _advance(url: str, marks: dict[str, int]) -> None:
    from components.data.served_store import open_store

    store = open_store(url)
    try:
        store.advance_watermark(marks)
    finally:
        store.close()
