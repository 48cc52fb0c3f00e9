"""The feedback schemas: one source of truth for column names, types and dedupe keys.

Two kinds of feedback enter the loop:

- **pairs** (``data/feedback/pairs.parquet``): ``prompt, chosen, rejected`` + ``source, annotator, created_at``,
  optional ``margin`` (how much better ``chosen`` is, >= 0) and ``chosen_id`` / ``rejected_id`` (served-output ids);
- both kinds have an optional ``prompt_messages``: a multi-turn prompt as JSON text of ``[{"role", "content"}, ...]``
  (ending with a user turn), rendered with the chat template's real roles; ``prompt`` then holds its text form
  (``Human: ...`` / ``Assistant: ...`` paragraphs, :func:`components.data.prompt_pool.prompt_text`);
- **ratings** (``data/feedback/ratings.parquet``): ``prompt, response, rating`` (an integer 1..5) +
  ``served_id, model_version, source, annotator, created_at``.

Files may also be in the Anthropic HH-RLHF format (``chosen``, ``rejected`` = whole conversations); the
importer turns those into pairs (see :mod:`components.data.feedback.io`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

PAIRS = "pairs"
RATINGS = "ratings"


class FeedbackFileError(ValueError):
    """A feedback file that cannot be read as feedback: says what is wrong, where, and what to do."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, column: int | str | None = None):
        self.path = str(path)
        self.line = line
        self.column = column
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class FeedbackSchema:
    """Columns of one kind of feedback, in stored order."""

    kind: str
    required: tuple[str, ...]
    """Content columns a file must have (else the file is malformed)."""
    text: tuple[str, ...]
    """Required free-text columns; each gets the text checks (not null, not blank, length, UTF-8, control chars)."""
    optional: tuple[str, ...]
    """Columns filled with a default (or null) when absent."""
    key: tuple[str, ...]
    """Columns that identify a row for deduplication (within a file and against the versioned data)."""
    arrow: pa.Schema
    """Parquet schema of the stored file."""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.arrow.names)

    @property
    def file_name(self) -> str:
        return f"{self.kind}.parquet"


_UTC = pa.timestamp("us", tz="UTC")

PAIRS_SCHEMA = FeedbackSchema(
    kind=PAIRS,
    required=("prompt", "chosen", "rejected"),
    text=("prompt", "chosen", "rejected"),
    optional=("source", "annotator", "created_at", "margin", "chosen_id", "rejected_id", "prompt_messages"),
    key=("prompt", "chosen", "rejected", "annotator"),
    arrow=pa.schema(
        [
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("source", pa.string()),
            ("annotator", pa.string()),
            ("created_at", _UTC),
            ("margin", pa.float64()),
            ("chosen_id", pa.string()),
            ("rejected_id", pa.string()),
            ("prompt_messages", pa.string()),
        ]
    ),
)

RATINGS_SCHEMA = FeedbackSchema(
    kind=RATINGS,
    required=("prompt", "response", "rating"),
    text=("prompt", "response"),
    optional=("served_id", "model_version", "source", "annotator", "created_at", "prompt_messages"),
    key=("prompt", "response", "rating", "served_id", "annotator"),
    arrow=pa.schema(
        [
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("rating", pa.int64()),
            ("served_id", pa.string()),
            ("model_version", pa.string()),
            ("source", pa.string()),
            ("annotator", pa.string()),
            ("created_at", _UTC),
            ("prompt_messages", pa.string()),
        ]
    ),
)

SCHEMAS = {PAIRS: PAIRS_SCHEMA, RATINGS: RATINGS_SCHEMA}

HH_COLUMNS = ("chosen", "rejected")
"""An HH-RLHF file: whole conversations in ``chosen`` / ``rejected`` and no ``prompt`` column."""


def detect_kind(columns: Iterable[str], path: Path | str) -> str:
    """``pairs``, ``ratings`` or ``hh-rlhf`` from a file's columns; anything else is a ``FeedbackFileError``."""
    cols = set(columns)
    if set(PAIRS_SCHEMA.required) <= cols:
        return PAIRS
    if set(RATINGS_SCHEMA.required) <= cols:
        return RATINGS
    if set(HH_COLUMNS) <= cols and "prompt" not in cols:
        return "hh-rlhf"
    found = ", ".join(sorted(cols)) or "none"
    best = min(SCHEMAS.values(), key=lambda s: len(set(s.required) - cols))
    missing = ", ".join(c for c in best.required if c not in cols)
    raise FeedbackFileError(
        path,
        f"wrong columns: missing {missing} (found: {found}). A pairs file needs prompt, chosen, rejected; "
        "a ratings file needs prompt, response, rating; an HH-RLHF file needs chosen, rejected.",
        column=missing.split(", ")[0],
    )


def empty_frame(kind: str) -> pd.DataFrame:
    """An empty frame with the stored columns and dtypes of ``kind``."""
    return SCHEMAS[kind].arrow.empty_table().to_pandas()


def conform(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Columns in stored order with stored dtypes (the frame must already hold valid values)."""
    schema = SCHEMAS[kind]
    frame = frame.assign(**{c: None for c in schema.optional if c not in frame.columns})  # absent optional: null
    table = pa.Table.from_pandas(frame.loc[:, list(schema.columns)], schema=schema.arrow, preserve_index=False)
    return table.to_pandas()


def key_hashes(frame: pd.DataFrame, kind: str) -> pd.Series:
    """A stable 64-bit hash of each row's dedupe key (same values -> same hash, across runs and machines)."""

    def text(v: object) -> str:
        if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v):
            return "\x00null"
        return str(v)

    columns = [frame[c].tolist() for c in SCHEMAS[kind].key]
    digests = [
        int.from_bytes(
            hashlib.blake2b("\x1f".join(map(text, values)).encode("utf-8", "surrogatepass"), digest_size=8).digest(),
            "little",
        )
        for values in zip(*columns)
    ]
    return pd.Series(np.array(digests, dtype=np.uint64), index=frame.index)
