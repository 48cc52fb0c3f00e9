"""Read feedback files (JSONL, CSV, Parquet, optionally gzipped; HH-RLHF conversations) and write Parquet.

Reading never drops a readable row. A line that cannot be parsed (broken JSON, binary junk, a CSV row
with the wrong number of fields, an HH-RLHF pair whose conversations do not share a prefix) is kept as
an :class:`UnparseableRow` naming its line and column; validation quarantines it with the reason
``unparseable`` so ``rows in = accepted + quarantined`` still holds. A file that has nothing readable at
all, or whose columns are wrong, raises :class:`~components.data.feedback.schema.FeedbackFileError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.feedback.schema import PAIRS, SCHEMAS, FeedbackFileError, detect_kind

log = logging.getLogger(__name__)

LINE = "_line"
"""Column holding each row's 1-based line in the source file (row number for Parquet)."""

HH_ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class UnparseableRow:
    """A line of the file that could not be read as a row."""

    line: int
    error: str
    raw: str


@dataclass
class FeedbackFile:
    """What was read from one file: the rows (raw values, one column per field) and the unreadable lines."""

    path: Path
    kind: str
    """``pairs`` or ``ratings`` (HH-RLHF files become ``pairs``)."""
    format: str
    """``jsonl``, ``csv`` or ``parquet`` for plain pairs / ratings files, else the converted format's name
    (``hh-rlhf``, ``trl-chat``, ``label-studio``, ...)."""
    frame: pd.DataFrame
    unparseable: list[UnparseableRow] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)
    """Columns in the file that no schema knows (reported, not stored)."""

    @property
    def rows_in(self) -> int:
        return len(self.frame) + len(self.unparseable)


def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise FeedbackFileError(path, f"not a readable gzip file ({exc})") from exc
    return data


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if ext == ".csv":
        return "csv"
    if ext in (".parquet", ".pq"):
        return "parquet"
    hint = "use .jsonl, .csv or .parquet (optionally .gz)"
    raise FeedbackFileError(path, f"unknown file type {ext or '(none)'!r}: {hint}")


def _raw_preview(raw: str, limit: int = 500) -> str:
    return raw if len(raw) <= limit else raw[:limit] + "..."


def _read_jsonl(path: Path) -> tuple[list[dict], list[int], list[UnparseableRow]]:
    rows: list[dict] = []
    lines: list[int] = []
    bad: list[UnparseableRow] = []
    for number, chunk in enumerate(_open_bytes(path).split(b"\n"), start=1):
        # surrogateescape keeps invalid UTF-8 bytes as lone surrogates, so the row is still read and the
        # ``*_valid_utf8`` check quarantines it instead of the whole file failing to decode.
        text = chunk.decode("utf-8", errors="surrogateescape").strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append(UnparseableRow(number, f"line {number}, column {exc.colno}: not valid JSON ({exc.msg})", text))
            continue
        if not isinstance(obj, dict):
            bad.append(UnparseableRow(number, f"line {number}: a JSON {type(obj).__name__}, not an object", text))
            continue
        rows.append(obj)
        lines.append(number)
    return rows, lines, bad


def _read_csv(path: Path) -> tuple[list[dict], list[int], list[UnparseableRow]]:
    text = _open_bytes(path).decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[dict] = []
    lines: list[int] = []
    bad: list[UnparseableRow] = []
    header: list[str] | None = None
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise FeedbackFileError(path, f"not readable as CSV ({exc})", line=reader.line_num + 1) from exc
        if header is None:
            header = [h.strip() for h in fields]
            start = reader.line_num + 1
            continue
        if not any(f.strip() for f in fields):
            start = reader.line_num + 1
            continue
        if len(fields) != len(header):
            bad.append(
                UnparseableRow(
                    start,
                    f"line {start}: {len(fields)} fields, the header has {len(header)}",
                    _raw_preview(",".join(fields)),
                )
            )
        else:
            rows.append(dict(zip(header, fields)))
            lines.append(start)
        start = reader.line_num + 1
    if header is None:
        raise FeedbackFileError(path, "empty CSV file (no header line)", line=1)
    return rows, lines, bad


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise FeedbackFileError(path, f"not a readable Parquet file ({exc})") from exc
    frame = table.to_pandas()
    frame[LINE] = range(1, len(frame) + 1)
    return frame


def split_hh_conversation(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split an HH-RLHF pair into (prompt, chosen reply, rejected reply).

    The prompt is the conversation both share, up to (not including) the final ``\\n\\nAssistant:``; the
    replies are what follows that marker. Raises ``ValueError`` if the two do not share that prefix.
    """
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise ValueError("chosen and rejected must both be text")
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn in chosen")
    prefix = chosen[: cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prefix) or rejected.rfind(HH_ASSISTANT) != cut:
        raise ValueError("chosen and rejected do not share the conversation up to the final Assistant turn")
    prompt = chosen[:cut].strip()
    return prompt, chosen[cut + len(HH_ASSISTANT) :].strip(), rejected[cut + len(HH_ASSISTANT) :].strip()


def _read_json_array(path: Path) -> tuple[list[dict], list[int], list[UnparseableRow]]:
    """A JSON file holding one array of objects (e.g. a Label Studio export); row numbers are array positions."""
    try:
        data = json.loads(_open_bytes(path).decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        raise FeedbackFileError(path, f"not valid JSON ({exc.msg})", line=exc.lineno, column=exc.colno) from exc
    rows, lines, bad = [], [], []
    for i, obj in enumerate(data, start=1):
        if isinstance(obj, dict):
            rows.append(obj)
            lines.append(i)
        else:
            bad.append(UnparseableRow(i, f"item {i}: a JSON {type(obj).__name__}, not an object", str(obj)[:500]))
    return rows, lines, bad


def _starts_with_array(path: Path) -> bool:
    head = _open_bytes(path)[:4096].lstrip()
    return head.startswith(b"[")


def read_feedback(path: Path | str, fmt: str | None = None, mapping: dict[str, str] | None = None) -> FeedbackFile:
    """Read a feedback file in any of :data:`components.data.feedback.formats.FORMATS` (auto-detected unless ``fmt``
    is given; ``mapping`` renames the file's columns / fields to ours first). Raises ``FeedbackFileError`` if
    nothing in it is usable or the format is unknown or ambiguous."""
    from components.data.feedback import formats

    path = Path(path)
    mapping = dict(mapping or {})
    if not path.is_file():
        raise FeedbackFileError(path, "file not found")
    if fmt is not None and fmt not in formats.FORMATS:
        raise FeedbackFileError(path, f"unknown format {fmt!r} (known: {', '.join(formats.FORMATS)})")
    container = _format_of(path)
    bad: list[UnparseableRow] = []
    if container == "parquet":
        frame = _read_parquet(path)
    else:
        reader = _read_csv if container == "csv" else _read_jsonl
        if container == "jsonl" and _starts_with_array(path):
            reader = _read_json_array
        rows, lines, bad = reader(path)
        if not rows and bad:
            first = bad[0]
            raise FeedbackFileError(
                path,
                f"no readable rows ({len(bad)} unreadable line(s); first: {first.error}). "
                "Is this a JSONL file with one JSON object per line?",
                line=first.line,
            )
        frame = pd.DataFrame.from_records(rows)
        frame[LINE] = lines
    columns = [c for c in frame.columns if c != LINE]
    if not columns and not bad:
        raise FeedbackFileError(path, "the file holds no rows")
    frame = frame.rename(columns={k: v for k, v in mapping.items() if k in frame.columns})
    fmt = fmt or formats.detect(frame, str(path))
    if fmt in (PAIRS, "ratings"):
        kind = fmt
        missing = [c for c in SCHEMAS[kind].required if c not in frame.columns]
        if missing:
            detect_kind([c for c in frame.columns if c != LINE], path)  # raises with the columns it found
            raise FeedbackFileError(path, f"{fmt} format: missing column(s) {', '.join(missing)}", column=missing[0])
    else:
        try:
            kind, frame, converted_bad = formats.convert(frame, fmt, mapping)
        except FeedbackFileError as exc:
            raise FeedbackFileError(path, str(exc).removeprefix("<rows>: ")) from exc
        bad += [UnparseableRow(line, error, raw) for line, error, raw in converted_bad]
        if frame.empty:
            frame = pd.DataFrame(columns=[*SCHEMAS[kind].required, LINE])
    schema = SCHEMAS[kind]
    known = set(schema.columns) | {LINE}
    dropped = sorted(c for c in frame.columns if c not in known)
    if dropped:
        log.warning("%s: columns %s are not part of the %s schema and are not stored", path, dropped, kind)
        frame = frame.drop(columns=dropped)
    for col in schema.columns:
        if col not in frame.columns:
            frame[col] = None
    frame = frame.loc[:, [*schema.columns, LINE]].reset_index(drop=True)
    bad.sort(key=lambda b: b.line)
    return FeedbackFile(path, kind, container if fmt in (PAIRS, "ratings") else fmt, frame, bad, dropped)


def write_parquet(frame: pd.DataFrame, path: Path, kind: str) -> None:
    """Write stored-schema rows to Parquet atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = frame.assign(**{c: None for c in SCHEMAS[kind].optional if c not in frame.columns})
    table = pa.Table.from_pandas(frame.loc[:, list(SCHEMAS[kind].columns)], schema=SCHEMAS[kind].arrow)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_parquet(path: Path, kind: str) -> pd.DataFrame:
    """Stored rows of ``kind`` (an empty frame with the right columns when the file does not exist)."""
    schema = SCHEMAS[kind].arrow
    if not path.is_file():
        return schema.empty_table().to_pandas()
    return pq.read_table(path, schema=schema).to_pandas()


def write_jsonl(records: list[dict], path: Path, *, append: bool = False) -> None:
    """JSON lines, ASCII-escaped so any text (even invalid UTF-8 kept as surrogates) round-trips."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="ascii") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=True, default=str) + "\n")
