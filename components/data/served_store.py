"""The served-output store: every reply the service sends, and the feedback people give on it.

Written by the service (one row per served output, committed *before* the HTTP response goes out; one row
per rating or pairwise choice, committed before the 2xx), read by the retraining flow through
:func:`export_feedback`, which turns new feedback into rows of the project's feedback schema
(:mod:`components.data.feedback.schema`) for the normal validate + version path. A watermark kept in the store
makes sure nothing is exported twice.

Storage: SQLAlchemy. The default is an embedded SQLite file (``live/served.sqlite``) in WAL mode with
``synchronous=FULL``, so a commit survives a killed process (and a power cut); any SQLAlchemy URL (e.g.
``postgresql+psycopg://user:pw@host/db``) switches to a server database. The store is live data, not
DVC-tracked: DVC versions what is exported from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from components.data.feedback.io import write_jsonl
from components.data.feedback.schema import PAIRS, RATINGS

if TYPE_CHECKING:
    from components.config.serve import ServeConfig
    from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)

SOURCE = "served"
"""The ``source`` column of exported rows."""

PROMPTS = "prompts"
"""Watermark kind of the served outputs whose prompts were exported (rated or not)."""

_meta = sa.MetaData()

served = sa.Table(
    "served",
    _meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("endpoint", sa.String(40), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("messages", sa.Text, nullable=False),
    sa.Column("reply", sa.Text, nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("finish_reason", sa.String(20), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("group_id", sa.String(64), nullable=True),
)

ratings = sa.Table(
    "ratings",
    _meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("served_id", sa.String(64), sa.ForeignKey("served.id"), nullable=False, index=True),
    sa.Column("rating", sa.Integer, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("annotator", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

pairs = sa.Table(
    "pairs",
    _meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("chosen_id", sa.String(64), sa.ForeignKey("served.id"), nullable=False),
    sa.Column("rejected_id", sa.String(64), sa.ForeignKey("served.id"), nullable=False),
    sa.Column("tie", sa.Boolean, nullable=False),
    sa.Column("annotator", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

watermarks = sa.Table(
    "export_watermarks",
    _meta,
    sa.Column("kind", sa.String(20), primary_key=True),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)


class UnknownServedId(LookupError):
    """Feedback names a served-output id the store has never logged."""

    def __init__(self, served_id: str):
        self.served_id = served_id
        super().__init__(f"unknown served-output id {served_id!r}: use the `id` returned by /generate or the chat API")


class FeedbackConflict(ValueError):
    """Feedback that cannot be recorded as asked (a pair across different prompts, an id paired with itself)."""


class AlreadyRated(FeedbackConflict):
    """The same rater already gave different feedback on this output (or pair): one judgement per rater."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_id(prefix: str = "out") -> str:
    """A fresh served-output id (unique, URL-safe)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def _key(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join("\x00" if p is None else str(p) for p in parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ServedOutput:
    """One reply the service sent."""

    id: str
    prompt: str
    """The last user message (what ``prompt`` means in the feedback schema)."""
    reply: str
    model_version: str
    messages: list[dict[str, str]] = field(default_factory=list)
    """The whole conversation the reply answered (system/user/assistant turns)."""
    params: dict[str, Any] = field(default_factory=dict)
    endpoint: str = "generate"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    latency_ms: float = 0.0
    group_id: str | None = None
    """Outputs sampled together (``n`` > 1, a comparison) share a group id."""
    created_at: str = ""


@dataclass(frozen=True)
class Recorded:
    """The result of recording feedback: its key and whether it was new (False: an identical one existed)."""

    key: str
    created: bool


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote. Paths are None when there was nothing of that kind to export."""

    ratings_path: Path | None
    pairs_path: Path | None
    ratings: int
    pairs: int
    ties_skipped: int
    """Pairwise choices recorded as a tie: they state no preference, so they make no training pair."""
    watermark: dict[str, int]
    """Last exported sequence number per kind (after this export, if it advanced)."""
    advanced: bool
    prompts_path: Path | None = None
    prompts: int = 0
    """Distinct prompts of the outputs served since the last export, rated or not (``prompts.jsonl``)."""


BUSY_TIMEOUT_S = 30
"""How long a SQLite connection waits for another one's lock (the busy timeout, and the switch to WAL)."""


def default_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def store_url(cfg: ServeConfig, paths: ProjectPaths) -> str:
    """The store's SQLAlchemy URL: the configured one (``serve.store_url``), ``$RLHF_STORE_URL``, or SQLite under
    ``live/``."""
    return os.environ.get("RLHF_STORE_URL") or cfg.store_url or default_url(paths.served_store)


def _create_schema(engine: Engine, attempts: int = 5) -> None:
    """Create the tables that are missing. Two processes (or threads) opening a fresh store at once both see a
    table missing and both create it; the loser's error ("already exists", or PostgreSQL's duplicate type name)
    only means the winner made it, so look again."""
    for attempt in range(attempts):
        try:
            _meta.create_all(engine)
            return
        except sa.exc.DBAPIError as exc:
            text = str(exc.orig).lower()
            raced = "already exists" in text or "duplicate key" in text
            if not raced or attempt == attempts - 1:
                raise


class ServedStore:
    """Thread-safe access to the store; one instance per process (it holds a connection pool)."""

    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            db = sa.engine.make_url(url).database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}, pool_pre_ping=True
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._write_lock = threading.Lock() if self.is_sqlite else None
        _create_schema(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _begin(self):
        return self.engine.begin()

    # -- writing --------------------------------------------------------------------------------

    def log_outputs(self, outputs: Sequence[ServedOutput]) -> None:
        """Insert served outputs in one transaction; durable when this returns."""
        if not outputs:
            return
        rows = [
            {
                "id": o.id,
                "created_at": o.created_at or _now(),
                "endpoint": o.endpoint,
                "prompt": o.prompt,
                "messages": json.dumps(o.messages or [{"role": "user", "content": o.prompt}], ensure_ascii=False),
                "reply": o.reply,
                "model_version": o.model_version,
                "params": json.dumps(o.params, sort_keys=True),
                "prompt_tokens": o.prompt_tokens,
                "completion_tokens": o.completion_tokens,
                "finish_reason": o.finish_reason,
                "latency_ms": float(o.latency_ms),
                "group_id": o.group_id,
            }
            for o in outputs
        ]
        with self._locked(), self._begin() as conn:
            conn.execute(served.insert(), rows)

    def record_rating(
        self, served_id: str, rating: int, *, comment: str | None = None, annotator: str = "user"
    ) -> Recorded:
        """Store a 1..5 rating of a served output: one per output and rater.

        The same rating again is stored once (``created`` False); a different rating or comment from the same
        rater raises :class:`AlreadyRated` (earlier feedback may already be exported into a data version, so it
        is never rewritten in place).
        """
        if not (isinstance(rating, int) and 1 <= rating <= 5):
            raise ValueError(f"rating must be an integer from 1 to 5, got {rating!r}")
        comment = comment.strip() if comment and comment.strip() else None
        return _once_after_a_race(lambda: self._record_rating(served_id, rating, comment, annotator))

    def _record_rating(self, served_id: str, rating: int, comment: str | None, annotator: str) -> Recorded:
        key = _key("rating", served_id, annotator)
        with self._locked(), self._begin() as conn:
            self._require(conn, served_id)
            earlier = (
                conn.execute(
                    sa.select(ratings.c.rating, ratings.c.comment).where(
                        ratings.c.served_id == served_id, ratings.c.annotator == annotator
                    )
                )
                .mappings()
                .first()
            )
            if earlier is not None:
                if (earlier["rating"], earlier["comment"]) == (rating, comment):
                    return Recorded(key, False)
                raise AlreadyRated(
                    f"{annotator!r} already rated {served_id} ({earlier['rating']}); a rater rates an output once"
                )
            conn.execute(
                ratings.insert().values(
                    key=key,
                    served_id=served_id,
                    rating=rating,
                    comment=comment,
                    annotator=annotator,
                    created_at=_now(),
                )
            )
        return Recorded(key, True)

    def record_pair(self, chosen_id: str, rejected_id: str, *, tie: bool = False, annotator: str = "user") -> Recorded:
        """Store a choice between two served outputs of the same prompt: one per pair of outputs and rater
        (the same choice again is stored once; a different one raises :class:`AlreadyRated`)."""
        if chosen_id == rejected_id:
            raise FeedbackConflict("chosen_id and rejected_id are the same output: compare two different replies")
        return _once_after_a_race(lambda: self._record_pair(chosen_id, rejected_id, tie, annotator))

    def _record_pair(self, chosen_id: str, rejected_id: str, tie: bool, annotator: str) -> Recorded:
        first, second = sorted((chosen_id, rejected_id)) if tie else (chosen_id, rejected_id)
        key = _key("pair", *sorted((chosen_id, rejected_id)), annotator)
        with self._locked(), self._begin() as conn:
            a = self._require(conn, chosen_id)
            b = self._require(conn, rejected_id)
            if a.messages != b.messages:
                raise FeedbackConflict(
                    f"{chosen_id} and {rejected_id} answer different prompts; a pair compares replies to the same one"
                )
            both = sa.or_(
                sa.and_(pairs.c.chosen_id == chosen_id, pairs.c.rejected_id == rejected_id),
                sa.and_(pairs.c.chosen_id == rejected_id, pairs.c.rejected_id == chosen_id),
            )
            earlier = (
                conn.execute(
                    sa.select(pairs.c.chosen_id, pairs.c.rejected_id, pairs.c.tie).where(
                        both, pairs.c.annotator == annotator
                    )
                )
                .mappings()
                .first()
            )
            if earlier is not None:
                if (earlier["chosen_id"], earlier["rejected_id"], bool(earlier["tie"])) == (first, second, tie):
                    return Recorded(key, False)
                raise AlreadyRated(
                    f"{annotator!r} already compared {chosen_id} and {rejected_id}; a rater compares a pair once"
                )
            conn.execute(
                pairs.insert().values(
                    key=key, chosen_id=first, rejected_id=second, tie=tie, annotator=annotator, created_at=_now()
                )
            )
        return Recorded(key, True)

    # -- reading --------------------------------------------------------------------------------

    def get(self, served_id: str) -> ServedOutput | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(served).where(served.c.id == served_id)).mappings().first()
        return _output(row) if row else None

    def has_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are logged."""
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(served.c.id).where(served.c.id.in_(list(ids)))).scalars())

    def unrated(self, *, limit: int = 20, offset: int = 0) -> tuple[list[ServedOutput], int]:
        """Served outputs that have no rating yet, oldest first, and how many there are in all."""
        rated = sa.select(ratings.c.served_id)
        where = served.c.id.not_in(rated)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(served).where(where)).scalar_one()
            rows = conn.execute(
                sa.select(served).where(where).order_by(served.c.seq).limit(limit).offset(offset)
            ).mappings()
            return [_output(r) for r in rows], int(total)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in (served, ratings, pairs)
            }

    def ratings_of(self, served_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ratings).where(ratings.c.served_id == served_id).order_by(ratings.c.seq))
            return [dict(r) for r in rows.mappings()]

    def all_pairs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(pairs).order_by(pairs.c.seq)).mappings()]

    def version_comparisons(self, version_a: str, version_b: str) -> list[dict[str, Any]]:
        """Every rater's choice between a reply of ``version_a`` and a reply of ``version_b`` to the same prompt,
        oldest first: ``{"seq", "outcome", "annotator", "a_id", "b_id", "prompt", "created_at"}``, the outcome
        (``win`` / ``tie`` / ``loss``) being ``version_a``'s."""
        chosen, rejected = served.alias("chosen"), served.alias("rejected")
        query = (
            sa.select(
                pairs.c.seq,
                pairs.c.tie,
                pairs.c.annotator,
                pairs.c.created_at,
                pairs.c.chosen_id,
                pairs.c.rejected_id,
                chosen.c.model_version.label("chosen_version"),
                chosen.c.prompt,
            )
            .join(chosen, chosen.c.id == pairs.c.chosen_id)
            .join(rejected, rejected.c.id == pairs.c.rejected_id)
            .where(
                sa.or_(
                    sa.and_(chosen.c.model_version == version_a, rejected.c.model_version == version_b),
                    sa.and_(chosen.c.model_version == version_b, rejected.c.model_version == version_a),
                )
            )
            .order_by(pairs.c.seq)
        )
        out = []
        with self.engine.connect() as conn:
            for r in conn.execute(query).mappings():
                a_first = r["chosen_version"] == version_a
                outcome = "tie" if r["tie"] else ("win" if a_first else "loss")
                a_id, b_id = (r["chosen_id"], r["rejected_id"]) if a_first else (r["rejected_id"], r["chosen_id"])
                out.append(
                    {
                        "seq": int(r["seq"]),
                        "outcome": outcome,
                        "annotator": r["annotator"],
                        "a_id": a_id,
                        "b_id": b_id,
                        "prompt": r["prompt"],
                        "created_at": r["created_at"],
                    }
                )
        return out

    def watermark(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            got = dict(conn.execute(sa.select(watermarks.c.kind, watermarks.c.last_seq)).all())
        return {kind: int(got.get(kind, 0)) for kind in (RATINGS, PAIRS, PROMPTS)}

    def integrity_ok(self) -> bool:
        """SQLite's own integrity check (True for other databases)."""
        if not self.is_sqlite:
            return True
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"

    def forget_annotator(self, annotator: str) -> dict[str, int]:
        """Delete every rating and pairwise choice ``annotator`` gave (the served outputs stay); returns the
        rows deleted by kind."""
        with self._locked(), self._begin() as conn:
            gone = {
                RATINGS: conn.execute(ratings.delete().where(ratings.c.annotator == annotator)).rowcount,
                PAIRS: conn.execute(pairs.delete().where(pairs.c.annotator == annotator)).rowcount,
            }
        log.info("store: forgot %s (%s)", annotator, gone)
        return {k: int(v or 0) for k, v in gone.items()}

    # -- export ---------------------------------------------------------------------------------

    def advance_watermark(self, marks: dict[str, int]) -> None:
        """Record that everything up to ``marks[kind]`` has been exported (never moves backwards)."""
        with self._locked(), self._begin() as conn:
            for kind, seq in marks.items():
                current = conn.execute(sa.select(watermarks.c.last_seq).where(watermarks.c.kind == kind)).scalar()
                if current is None:
                    conn.execute(watermarks.insert().values(kind=kind, last_seq=seq, updated_at=_now()))
                elif seq > current:
                    conn.execute(
                        watermarks.update().where(watermarks.c.kind == kind).values(last_seq=seq, updated_at=_now())
                    )

    def _new_feedback(self) -> tuple[list[dict], list[dict], int, dict[str, int]]:
        marks = self.watermark()
        chosen, rejected = served.alias("c"), served.alias("r")
        with self.engine.connect() as conn:
            r_rows = conn.execute(
                sa.select(ratings, served.c.prompt, served.c.messages, served.c.reply, served.c.model_version)
                .join(served, served.c.id == ratings.c.served_id)
                .where(ratings.c.seq > marks[RATINGS])
                .order_by(ratings.c.seq)
            ).mappings()
            rating_rows = [dict(r) for r in r_rows]
            p_rows = conn.execute(
                sa.select(
                    pairs,
                    chosen.c.prompt.label("prompt"),
                    chosen.c.messages.label("messages"),
                    chosen.c.reply.label("chosen"),
                    rejected.c.reply.label("rejected"),
                )
                .join(chosen, chosen.c.id == pairs.c.chosen_id)
                .join(rejected, rejected.c.id == pairs.c.rejected_id)
                .where(pairs.c.seq > marks[PAIRS])
                .order_by(pairs.c.seq)
            ).mappings()
            pair_rows = [dict(r) for r in p_rows]
        ties = sum(1 for p in pair_rows if p["tie"])
        new_marks = {
            RATINGS: max([r["seq"] for r in rating_rows], default=marks[RATINGS]),
            PAIRS: max([p["seq"] for p in pair_rows], default=marks[PAIRS]),
        }
        return rating_rows, [p for p in pair_rows if not p["tie"]], ties, new_marks

    def _new_prompts(self, after: int) -> tuple[list[dict[str, Any]], int]:
        """The prompt and messages of every output served after sequence number ``after``, and the last one's."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(served.c.seq, served.c.prompt, served.c.messages)
                .where(served.c.seq > after)
                .order_by(served.c.seq)
            ).mappings()
            found = [dict(r) for r in rows]
        return found, max([r["seq"] for r in found], default=after)

    def _require(self, conn: sa.Connection, served_id: str) -> ServedOutput:
        row = conn.execute(sa.select(served).where(served.c.id == served_id)).mappings().first()
        if row is None:
            raise UnknownServedId(served_id)
        return _output(row)

    def _locked(self):
        return self._write_lock if self._write_lock is not None else _NullLock()


def _once_after_a_race(record: Callable[[], Recorded]) -> Recorded:
    """Run ``record``; if a concurrent writer inserted the same judgement first (the unique key refuses
    ours), run it once more: it then finds that row and answers duplicate or :class:`AlreadyRated`."""
    try:
        return record()
    except sa.exc.IntegrityError:
        return record()


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    _wal(cur)
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _wal(cur: Any, wait_s: float = BUSY_TIMEOUT_S) -> None:
    """Switch the file to WAL (a setting the file keeps). The switch needs the file to itself and SQLite answers
    "database is locked" at once, without its busy wait, while another connection holds it (openers racing on a
    fresh store), so wait here as the busy timeout would."""
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _output(row: Any) -> ServedOutput:
    return ServedOutput(
        id=row["id"],
        prompt=row["prompt"],
        reply=row["reply"],
        model_version=row["model_version"],
        messages=json.loads(row["messages"]),
        params=json.loads(row["params"]),
        endpoint=row["endpoint"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        finish_reason=row["finish_reason"],
        latency_ms=row["latency_ms"],
        group_id=row["group_id"],
        created_at=row["created_at"],
    )


def served_prompt(prompt: str, messages: str | None) -> dict[str, Any]:
    """A served output's prompt for the feedback files: its last user message, or, when the request was a
    conversation, the conversation (``prompt_messages``, system turns dropped) and its text form (``prompt``), so
    the next round's reward model, prompt pool and rollouts see the turns users sent."""
    from components.data.prompt_pool import prompt_text

    turns = [m for m in json.loads(messages or "[]") if m.get("role") in ("user", "assistant")]
    if len(turns) <= 1:
        return {"prompt": prompt}
    return {"prompt": prompt_text(turns), "prompt_messages": json.dumps(turns, ensure_ascii=False)}


def export_feedback(store: ServedStore, out_dir: Path, *, advance: bool = True) -> ExportResult:
    """Write the feedback recorded since the last export as feedback files for the validate + store path.

    - ``out_dir/ratings.jsonl``: one row per rating, columns ``prompt, response, rating, served_id,
      model_version, source="served", annotator, created_at`` (the ratings schema; ``prompt_messages`` too when
      the request was a conversation, see :func:`served_prompt`);
    - ``out_dir/pairs.jsonl``: one row per pairwise choice (ties are counted, not written), columns
      ``prompt, chosen, rejected, source="served", annotator, created_at, chosen_id, rejected_id``;
    - ``out_dir/prompts.jsonl``: the distinct prompts of every output served since the last export, rated or not
      (``{"prompt"}``, or ``{"messages"}`` for a conversation), a prompt file for the prompt pool, so the next
      round trains on what users ask, not only on what they rated.

    Each file is written only when it has rows, fsynced, and renamed into place. With ``advance`` the
    watermark then moves past the exported rows so the next export starts after them; pass
    ``advance=False`` and call :meth:`ServedStore.advance_watermark` with ``result.watermark`` once the rows
    are safely ingested if a failed ingest must be retried with the same rows.
    """
    out_dir = Path(out_dir)
    rating_rows, pair_rows, ties, marks = store._new_feedback()
    served_rows, marks[PROMPTS] = store._new_prompts(store.watermark()[PROMPTS])
    ratings_path = pairs_path = prompts_path = None
    if rating_rows:
        ratings_path = out_dir / "ratings.jsonl"
        _write_durably(
            [
                {
                    **served_prompt(r["prompt"], r["messages"]),
                    "response": r["reply"],
                    "rating": r["rating"],
                    "served_id": r["served_id"],
                    "model_version": r["model_version"],
                    "source": SOURCE,
                    "annotator": r["annotator"],
                    "created_at": r["created_at"],
                }
                for r in rating_rows
            ],
            ratings_path,
        )
    if pair_rows:
        pairs_path = out_dir / "pairs.jsonl"
        _write_durably(
            [
                {
                    **served_prompt(p["prompt"], p["messages"]),
                    "chosen": p["chosen"],
                    "rejected": p["rejected"],
                    "source": SOURCE,
                    "annotator": p["annotator"],
                    "created_at": p["created_at"],
                    "chosen_id": p["chosen_id"],
                    "rejected_id": p["rejected_id"],
                }
                for p in pair_rows
            ],
            pairs_path,
        )
    prompt_rows = _distinct_prompts(served_rows)
    if prompt_rows:
        prompts_path = out_dir / "prompts.jsonl"
        _write_durably(prompt_rows, prompts_path)
    if ties:
        log.info("export: %d tie(s) recorded; a tie states no preference, so it makes no training pair", ties)
    if advance:
        store.advance_watermark(marks)
    log.info("export: %d rating row(s), %d pair row(s), %d served prompt(s) to %s", len(rating_rows),
             len(pair_rows), len(prompt_rows), out_dir)  # fmt: skip
    return ExportResult(
        ratings_path, pairs_path, len(rating_rows), len(pair_rows), ties, marks, advance, prompts_path, len(prompt_rows)
    )


def _distinct_prompts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One prompt-file row per distinct served prompt: ``{"prompt"}``, or ``{"messages"}`` for a conversation."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        p = served_prompt(r["prompt"], r["messages"])
        row = {"messages": json.loads(p["prompt_messages"])} if "prompt_messages" in p else {"prompt": p["prompt"]}
        out.setdefault(json.dumps(row, sort_keys=True, ensure_ascii=False), row)
    return list(out.values())


def _write_durably(records: list[dict], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    write_jsonl(records, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def open_store(path_or_url: Path | str) -> ServedStore:
    """A store from a SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``) or a SQLite file path."""
    text = str(path_or_url)
    return ServedStore(text if "://" in text else default_url(Path(text)))
