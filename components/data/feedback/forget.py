"""``rlhf forget --rater NAME``: one person's feedback out of the next data version, the served store and the
raters file.

What goes: their ratings and pairwise choices in ``data/feedback/``, the pairs made from their ratings
(:func:`components.data.feedback.agreement.made_from_ratings`, with one of their rated replies on either side;
such a pair may also rest on someone else's rating, and goes all the same), their quarantined rows, their
rows in the served-output store (so no later export brings them back) and in earlier exports under
``live/exports/``, and their token. Then ``dvc add data`` makes the next data version,
logged to ``metrics/data_versions.jsonl`` as a ``forget`` entry. Earlier data versions keep the rows: they
stay in DVC's cache and remote (and git's history of ``data.dvc``) until someone runs ``dvc gc`` on them; the
audit says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from components.common.fsutil import restored_on_failure
from components.data.feedback.agreement import made_from_ratings
from components.data.feedback.io import write_parquet
from components.data.feedback.schema import PAIRS, RATINGS, SCHEMAS
from components.data.feedback.store import (
    POOL_FILES,
    StoreError,
    data_version,
    dvc,
    ensure_checked_out,
    ensure_remote,
    load,
    pool_config,
)
from components.project.paths import ProjectPaths
from components.records.lineage import FORGET_KIND as KIND

log = logging.getLogger(__name__)

HISTORY_NOTE = (
    "data versions before {version} still hold these rows in DVC's cache and remote (and git's history of "
    "data.dvc): `dvc gc` with no commit or workspace using them removes them for good"
)


@dataclass(frozen=True)
class ForgetResult:
    """What :func:`forget_rater` removed (JSON-serialisable)."""

    rater: str
    removed: dict[str, int] = field(default_factory=dict)
    """Rows removed by place: ``ratings``, ``pairs`` (their own), ``pairs_from_ratings``, ``quarantined``,
    ``store_ratings``, ``store_pairs``, ``exported_files`` (lines of earlier exports)."""
    version: str | None = None
    """The data version without them (unchanged when the data held nothing of theirs)."""
    previous_version: str | None = None
    revoked: bool = False
    """Whether they still had a token, now revoked."""
    note: str = ""


def _their_rows(ratings: pd.DataFrame, pairs: pd.DataFrame, name: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Masks: their ratings, their own pairs, and pairs made from (among others) their ratings."""
    mine_r = ratings["annotator"].astype(str) == name
    rated = set(zip(ratings.loc[mine_r, "prompt"], ratings.loc[mine_r, "response"], strict=True))
    mine_p = pairs["annotator"].astype(str) == name
    derived = made_from_ratings(pairs)
    uses_mine = pd.Series(
        [(p, c) in rated or (p, r) in rated for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])],
        index=pairs.index,
        dtype=bool,
    )
    return mine_r, mine_p & ~derived, derived & (mine_p | uses_mine)


def _drop_quarantined(paths: ProjectPaths, name: str) -> int:
    """Remove their records from ``data/quarantine/*.jsonl``; returns how many."""
    return _drop_lines([paths.quarantine / f"{kind}.jsonl" for kind in (PAIRS, RATINGS)], name)


def _drop_lines(files: list[Path], name: str) -> int:
    """Remove the JSON lines whose ``annotator`` is ``name`` from ``files``; returns how many."""
    gone = 0
    for f in files:
        if not f.is_file():
            continue
        lines = f.read_text(encoding="ascii").splitlines()
        kept = [line for line in lines if not line.strip() or json.loads(line).get("annotator") != name]
        if len(kept) != len(lines):
            gone += len(lines) - len(kept)
            f.write_text("".join(line + "\n" for line in kept), encoding="ascii")
    return gone


def forget_rater(paths: ProjectPaths, name: str, *, store_url: str | None = None, push: bool = True) -> ForgetResult:
    """Remove ``name``'s feedback from the data (a new data version), the served store at ``store_url`` (None:
    none to clean) and the raters file. All or nothing for the data: a failed step puts the files back."""
    from components.data.prompt_pool import build_pool
    from components.data.raters import load_raters, raters_file, revoke_rater
    from components.project.scaffold import ProjectError, require_project

    try:
        require_project(paths, "forget a rater")
    except ProjectError as exc:
        raise StoreError(str(exc)) from exc
    ensure_checked_out(paths)
    previous = data_version(paths)
    ratings, pairs = load(paths, RATINGS), load(paths, PAIRS)
    mine_r, mine_p, from_mine = _their_rows(ratings, pairs, name)
    touched = [
        paths.feedback / SCHEMAS[RATINGS].file_name,
        paths.feedback / SCHEMAS[PAIRS].file_name,
        *(paths.quarantine / f"{k}.jsonl" for k in (PAIRS, RATINGS)),
        *(paths.prompts / f for f in POOL_FILES),
        paths.data_dvc,
    ]
    removed = {"ratings": int(mine_r.sum()), "pairs": int(mine_p.sum()), "pairs_from_ratings": int(from_mine.sum())}
    version = previous
    with restored_on_failure(touched):
        removed["quarantined"] = _drop_quarantined(paths, name)
        if any(removed.values()):
            write_parquet(ratings[~mine_r].reset_index(drop=True), touched[0], RATINGS)
            write_parquet(pairs[~(mine_p | from_mine)].reset_index(drop=True), touched[1], PAIRS)
            build_pool(pool_config(paths), paths)
            dvc(paths, "add", "data")
            version = data_version(paths)
            if push:
                ensure_remote(paths)
                dvc(paths, "push", "data.dvc")
    if store_url is not None:
        from components.data.served_store import open_store

        store = open_store(store_url)
        try:
            gone = store.forget_annotator(name)
        finally:
            store.close()
        removed |= {"store_ratings": gone[RATINGS], "store_pairs": gone[PAIRS]}
    removed["exported_files"] = _drop_lines(sorted((paths.live / "exports").glob("*/*.jsonl")), name)
    book = raters_file(paths.live)
    revoked = name in load_raters(book)
    if revoked:
        revoke_rater(book, name)
    note = HISTORY_NOTE.format(version=version) if version != previous else "the data held no rows of theirs"
    if version != previous:
        _log_entry(paths, name, version, previous, removed, note)
    log.info("forgot rater %s: %s; data version %s (was %s)", name, removed, version, previous)
    return ForgetResult(name, removed, version, previous, revoked, note)


def _log_entry(
    paths: ProjectPaths, name: str, version: str | None, previous: str | None, removed: dict[str, int], note: str
) -> None:
    entry = {
        "version": version,
        "previous_version": previous,
        "time": pd.Timestamp.now(tz="UTC").isoformat(),
        "origin": f"forget rater {name}",
        "kind": KIND,
        "rater": name,
        "rows_in": 0,
        "accepted": 0,
        "quarantined": 0,
        "removed": removed,
        "totals": {k: len(load(paths, k)) for k in (PAIRS, RATINGS)},
        "note": note,
    }
    paths.data_versions.parent.mkdir(parents=True, exist_ok=True)
    with paths.data_versions.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
