"""Validate feedback rows with a Great Expectations suite; every row is accepted or quarantined with reasons.

How it works (and why it is fast):

1. :func:`prepare` builds one frame for GX: the text columns (invalid UTF-8 replaced for display) and,
   for checks GX has no built-in expectation for (``chosen != rejected``, "is text", "is integral", the
   duplicate checks, ...), a boolean column computed with vectorised pandas.
2. :func:`build_suite` declares the suite: built-in expectations (not null, regex, lengths, ranges) on
   the data columns, ``expect_column_values_to_be_in_set([True])`` on the computed columns. Every
   expectation carries its check name in ``meta["check"]``.
3. A GX checkpoint runs the suite over the whole frame once (``result_format=COMPLETE`` returns the index
   of every failing row) and updates the Data Docs site (the HTML report).
4. A row is accepted if no expectation lists it; otherwise it is quarantined with the names of all
   checks it failed. Unreadable lines from the file join the quarantine as ``unparseable``.

Map expectations skip nulls, so each required column also has an explicit not-null check.
Great Expectations is imported inside :func:`run_suite` only (its import takes seconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config.validation import ValidationConfig
from components.data.feedback.io import LINE, UnparseableRow, read_feedback, write_jsonl, write_parquet
from components.data.feedback.schema import PAIRS, RATINGS, SCHEMAS, FeedbackFileError, conform, key_hashes

log = logging.getLogger(__name__)

UNPARSEABLE = "unparseable"
SURROGATES = r"[\ud800-\udfff]"
# C0 controls except tab, newline, carriage return; DEL; C1 controls.
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
BLANK = r"^\s*$"


def check_descriptions(kind: str, cfg: ValidationConfig) -> dict[str, str]:
    """Every check of the ``kind`` suite (name -> what it requires), in suite order."""
    schema = SCHEMAS[kind]
    out: dict[str, str] = {"required_columns": f"columns {', '.join(schema.required)} are present"}
    for col in schema.text:
        limit = cfg.max_prompt_chars if col == "prompt" else cfg.max_reply_chars
        out |= {
            f"{col}_not_null": f"{col} is present (not null)",
            f"{col}_is_text": f"{col} is a string",
            f"{col}_valid_utf8": f"{col} is valid UTF-8",
            f"{col}_not_blank": f"{col} is not empty or whitespace only",
            f"{col}_no_control_chars": f"{col} has no control characters (tab and newlines allowed)",
            f"{col}_length": f"{col} has at most {limit} characters",
        }
    out["prompt_messages_valid"] = "prompt_messages, if given, is a list of {role: user|assistant, content} messages"
    if kind == PAIRS:
        out |= {
            "chosen_differs_from_rejected": "chosen != rejected",
            "margin_is_number": "margin, if given, is a number",
            "margin_non_negative": "margin, if given, is >= 0",
        }
    else:
        out |= {
            "rating_not_null": "rating is present",
            "rating_is_number": "rating is a number",
            "rating_in_range": "rating is within 1..5",
            "rating_integral": "rating is a whole number",
        }
    out |= {
        "created_at_valid": "created_at, if given, is an ISO-8601 time",
        "no_duplicate_in_file": "the row is not an exact duplicate of an earlier row (dedupe key: "
        + ", ".join(schema.key)
        + ")",
        "not_already_stored": "the row is not already in the versioned feedback data",
    }
    return out


def _flag(name: str) -> str:
    return f"__ok_{name}"


def _raw(col: str) -> str:
    """The column of ``col``'s values as read (any type), for GX's type check."""
    return f"{col} (as read)"


def _is_null(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v))


def _is_text(s: pd.Series) -> pd.Series:
    """True for strings and nulls (nulls are the not-null check's business)."""
    return pd.Series([_is_null(v) or isinstance(v, str) for v in s.tolist()], index=s.index, dtype=bool)


def _as_text(s: pd.Series) -> pd.Series:
    """Strings stay, nulls stay null, anything else becomes its JSON text (so regexes can run on it)."""

    def one(v: Any) -> Any:
        if _is_null(v):
            return None
        if isinstance(v, pd.Timestamp):
            return v.isoformat()
        return v if isinstance(v, str) else json.dumps(v, default=str)

    # built as object dtype: pandas would otherwise infer Arrow strings, which refuse lone surrogates
    return pd.Series([one(v) for v in s.tolist()], index=s.index, dtype=object)


def _number(s: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(value as float, NaN unless a finite number; missing: null / empty; ok: missing or a finite number).

    Booleans, non-numeric text and non-finite values are not numbers.
    """
    values, missing, ok = [], [], []
    for v in s.tolist():
        x, miss = float("nan"), False
        if _is_null(v) or (isinstance(v, str) and not v.strip()):
            miss = True
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            x = float(v)
        elif isinstance(v, str):
            with contextlib.suppress(ValueError):
                x = float(v)
        good = miss or bool(np.isfinite(x))
        values.append(x if good else float("nan"))
        missing.append(miss)
        ok.append(good)
    idx = s.index
    return pd.Series(values, index=idx, dtype=float), pd.Series(missing, index=idx), pd.Series(ok, index=idx)


def _json_or_none(s: pd.Series) -> pd.Series:
    """JSON text for GX's JSON-schema check (which parses each value): text that is not JSON becomes a JSON
    string, so it fails the schema instead of stopping the check."""

    def one(v: Any) -> Any:
        if v is None:
            return None
        try:
            json.loads(v)
            return v
        except (TypeError, ValueError):
            return json.dumps(v)

    return pd.Series([one(v) for v in s.tolist()], index=s.index, dtype=object)


MESSAGES_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"enum": ["user", "assistant"]}, "content": {"type": "string"}},
    },
}
"""A multi-turn prompt: a non-empty list of ``{"role": "user" | "assistant", "content": str}``."""


@dataclass
class Prepared:
    """The frame GX validates (data + computed boolean columns) and the typed rows to store."""

    gx_frame: pd.DataFrame
    typed: pd.DataFrame
    keys: pd.Series


def prepare(
    frame: pd.DataFrame,
    kind: str,
    *,
    existing_keys: np.ndarray | None = None,
    source: str = "import",
    annotator: str = "unknown",
    now: pd.Timestamp | None = None,
) -> Prepared:
    """Typed values + computed check columns for ``frame`` (raw values, schema columns, index 0..n-1)."""
    schema = SCHEMAS[kind]
    missing = [c for c in schema.required if c not in frame.columns]
    if missing:
        raise FeedbackFileError("<frame>", f"wrong columns: missing {', '.join(missing)}", column=missing[0])
    now = now or pd.Timestamp.now(tz="UTC")
    frame = frame.reset_index(drop=True)
    frame = frame.assign(**{c: None for c in schema.optional if c not in frame.columns})
    typed = pd.DataFrame(index=frame.index)
    gx = pd.DataFrame(index=frame.index)
    for col in schema.text:
        raw = frame[col]
        text = _as_text(raw)
        typed[col] = text
        gx[_raw(col)] = pd.Series([None if _is_null(v) else v for v in raw.tolist()], index=raw.index, dtype=object)
        has_surrogate = text.str.contains(SURROGATES, regex=True, na=False).astype(bool)
        gx[_flag(f"{col}_valid_utf8")] = ~has_surrogate
        shown = text.where(~has_surrogate, text.str.replace(SURROGATES, "\ufffd", regex=True))
        gx[col] = pd.Series(shown.tolist(), index=text.index, dtype=object)
    if kind == PAIRS:
        margin, _, ok = _number(frame["margin"])
        typed["margin"] = margin
        gx["margin"] = margin
        gx[_flag("margin_is_number")] = ok
        for col in ("chosen_id", "rejected_id"):
            typed[col] = _as_text(frame[col])
    else:
        rating, missing, ok = _number(frame["rating"])
        # A non-number gets an in-range placeholder so it fails rating_is_number only, not also the
        # not-null and range checks (one honest reason per fault).
        gx["rating"] = rating.where(ok, 3.0)
        gx[_flag("rating_is_number")] = ok
        integral = rating.isna() | (rating == np.floor(rating))
        gx[_flag("rating_integral")] = integral
        typed["rating"] = rating.where(integral & ~missing).round().astype("Int64")
        key_rating = rating.map(lambda x: "" if np.isnan(x) else (str(int(x)) if x == int(x) else repr(x)))
        for col in ("served_id", "model_version"):
            typed[col] = _as_text(frame[col])
    typed["prompt_messages"] = _as_text(frame["prompt_messages"])
    gx["prompt_messages"] = _json_or_none(typed["prompt_messages"])
    typed["source"] = _as_text(frame["source"]).fillna(source)
    typed["annotator"] = _as_text(frame["annotator"]).fillna(annotator)
    created = _as_text(frame["created_at"])
    created_text = created.where(created.isna(), created.str.replace(SURROGATES, "\ufffd", regex=True))
    parsed = pd.to_datetime(created_text, errors="coerce", utc=True, format="ISO8601")
    gx[_flag("created_at_valid")] = (created.isna() | parsed.notna()).astype(bool)
    typed["created_at"] = parsed.fillna(now)
    key_frame = typed if kind == PAIRS else typed.assign(rating=key_rating)
    keys = key_hashes(key_frame, kind)
    complete = typed.loc[:, list(schema.text)].notna().all(axis=1)  # rows missing key text fail elsewhere
    gx[_flag("no_duplicate_in_file")] = ~(keys.duplicated(keep="first") & complete)
    if existing_keys is not None and len(existing_keys):
        gx[_flag("not_already_stored")] = ~keys.isin(existing_keys)
    else:
        gx[_flag("not_already_stored")] = True
    return Prepared(gx, typed, keys)


def build_suite(gx: Any, kind: str, cfg: ValidationConfig) -> Any:
    """The expectation suite for ``kind``; each expectation's ``meta["check"]`` names its check."""
    gxe = gx.expectations
    schema = SCHEMAS[kind]
    suite = gx.ExpectationSuite(name=f"feedback_{kind}")

    rules = check_descriptions(kind, cfg)

    def add(expectation_cls: Any, check: str, **kwargs: Any) -> None:
        suite.add_expectation(expectation_cls(meta={"check": check}, **kwargs))

    def flag(check: str) -> None:
        # no GX expectation says this rule: a column computed in :func:`prepare`, and the rule as the description
        add(gxe.ExpectColumnValuesToBeInSet, check, column=_flag(check), value_set=[True],
            description=f"{check}: {rules[check]}")  # fmt: skip

    for col in schema.required:
        add(gxe.ExpectColumnToExist, "required_columns", column=col)
    for col in schema.text:
        limit = cfg.max_prompt_chars if col == "prompt" else cfg.max_reply_chars
        add(gxe.ExpectColumnValuesToNotBeNull, f"{col}_not_null", column=col)
        add(gxe.ExpectColumnValuesToBeOfType, f"{col}_is_text", column=_raw(col), type_="str")
        flag(f"{col}_valid_utf8")
        add(gxe.ExpectColumnValuesToNotMatchRegex, f"{col}_not_blank", column=col, regex=BLANK)
        add(gxe.ExpectColumnValuesToNotMatchRegex, f"{col}_no_control_chars", column=col, regex=CONTROL_CHARS)
        add(gxe.ExpectColumnValueLengthsToBeBetween, f"{col}_length", column=col, max_value=limit)
    add(gxe.ExpectColumnValuesToMatchJsonSchema, "prompt_messages_valid", column="prompt_messages",
        json_schema=MESSAGES_SCHEMA)  # fmt: skip
    if kind == PAIRS:
        add(gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord, "chosen_differs_from_rejected",
            column_list=["chosen", "rejected"])  # fmt: skip
        flag("margin_is_number")
        add(gxe.ExpectColumnValuesToBeBetween, "margin_non_negative", column="margin", min_value=0)
    else:
        add(gxe.ExpectColumnValuesToNotBeNull, "rating_not_null", column="rating")
        flag("rating_is_number")
        add(gxe.ExpectColumnValuesToBeBetween, "rating_in_range", column="rating", min_value=1, max_value=5)
        flag("rating_integral")
    flag("created_at_valid")
    flag("no_duplicate_in_file")
    flag("not_already_stored")
    return suite


def run_suite(
    gx_frame: pd.DataFrame, kind: str, cfg: ValidationConfig, report_dir: Path | None
) -> tuple[dict, Path | None]:
    """Run the suite over ``gx_frame`` with GX; return ({check: failing row indexes}, report index.html)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # In-memory stores and no default docs site: the only site is the report folder asked for.
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(report_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        context.add_data_docs_site("rlhf_feedback", site)
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="report", site_names=["rlhf_feedback"]))
    batch = (
        context.data_sources.add_pandas("feedback")
        .add_dataframe_asset(kind)
        .add_batch_definition_whole_dataframe("all rows")
    )
    suite = context.suites.add(build_suite(gx, kind, cfg))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=f"{kind}", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"validate_{kind}",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": gx_frame})
    failures: dict[str, set[int]] = {}
    for run in result.run_results.values():
        for res in run.results:
            check = res.expectation_config.meta["check"]
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(f"expectation {check} could not run: {res.exception_info.get('exception_message')}")
            if res.success:
                continue
            index = res.result.get("unexpected_index_list")
            rows = set(range(len(gx_frame))) if index is None else {int(i) for i in index}
            failures.setdefault(check, set()).update(rows)
    report = report_dir / "index.html" if report_dir is not None else None
    return {k: sorted(v) for k, v in failures.items()}, report


@dataclass
class ValidationResult:
    """Accepted rows (stored schema) and quarantined rows (raw values, line, reasons); counts reconcile."""

    kind: str
    rows_in: int
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    by_reason: dict[str, int]
    checks: list[str]
    report: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return len(self.quarantined) == 0

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows_in": self.rows_in,
            "accepted": len(self.accepted),
            "quarantined": len(self.quarantined),
            "by_reason": dict(self.by_reason),
            "report": str(self.report) if self.report else None,
            "seconds": round(self.seconds, 3),
        }


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict]:
    def plain(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
            return None
        if isinstance(v, (np.integer, np.floating)):
            return v.item()
        if isinstance(v, pd.Timestamp):
            return v.isoformat()
        return v

    return [{c: plain(row[c]) for c in columns} for row in frame.to_dict("records")]


def validate_frame(
    frame: pd.DataFrame,
    kind: str,
    cfg: ValidationConfig,
    *,
    existing_keys: np.ndarray | None = None,
    unparseable: Sequence[UnparseableRow] = (),
    report_dir: Path | None = None,
    source: str = "import",
    annotator: str = "unknown",
) -> ValidationResult:
    """Validate rows of ``kind`` (raw values; an optional ``_line`` column gives their source lines)."""
    start = time.perf_counter()
    if kind not in (PAIRS, RATINGS):
        raise ValueError(f"unknown feedback kind {kind!r}")
    schema = SCHEMAS[kind]
    frame = frame.reset_index(drop=True)
    frame = frame.assign(**{c: None for c in schema.optional if c not in frame.columns})
    lines = frame[LINE] if LINE in frame.columns else pd.Series(range(1, len(frame) + 1))
    prep = prepare(frame, kind, existing_keys=existing_keys, source=source, annotator=annotator)
    failures, report = run_suite(prep.gx_frame, kind, cfg, report_dir) if len(frame) else ({}, None)

    reasons: dict[int, list[str]] = {}
    for check, rows in failures.items():
        for i in rows:
            reasons.setdefault(i, []).append(check)
    bad = np.zeros(len(frame), dtype=bool)
    bad[list(reasons)] = True
    accepted = conform(prep.typed.loc[~bad], kind) if (~bad).any() else conform(prep.typed.iloc[:0], kind)

    raw_cols = list(schema.columns)
    quarantine_rows = [
        {"line": int(lines.iloc[i]), "reasons": reasons[i], "detail": None, **rec}
        for i, rec in zip(sorted(reasons), _records(frame.loc[sorted(reasons)], raw_cols))
    ]
    quarantine_rows += [
        {"line": u.line, "reasons": [UNPARSEABLE], "detail": u.error, **dict.fromkeys(raw_cols), "raw": u.raw}
        for u in unparseable
    ]
    quarantine_rows.sort(key=lambda r: r["line"])
    quarantined = pd.DataFrame(quarantine_rows, columns=["line", "reasons", "detail", *raw_cols, "raw"], dtype=object)
    counts = Counter(reason for row in quarantine_rows for reason in row["reasons"])
    result = ValidationResult(
        kind=kind,
        rows_in=len(frame) + len(unparseable),
        accepted=accepted,
        quarantined=quarantined,
        by_reason=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        checks=list(check_descriptions(kind, cfg)),
        report=report,
        seconds=time.perf_counter() - start,
    )
    if report_dir is not None:
        result.report = write_summary_html(result, cfg, Path(report_dir) / "summary.html")
    if result.rows_in != len(result.accepted) + len(result.quarantined):  # the invariant, checked every time
        raise AssertionError(f"rows in {result.rows_in} != accepted {len(accepted)} + quarantined {len(quarantined)}")
    log.info(
        "validated %d %s rows: %d accepted, %d quarantined (%.2f s)",
        result.rows_in,
        kind,
        len(result.accepted),
        len(result.quarantined),
        result.seconds,
    )
    return result


def write_summary_html(result: ValidationResult, cfg: ValidationConfig, path: Path) -> Path:
    """A self-contained HTML page (no scripts, no network): the counts, then every rule with the rows that broke
    it. GX's Data Docs (``index.html`` beside it) hold the full results but load their styles from CDNs."""
    from html import escape

    rules = check_descriptions(result.kind, cfg) | {UNPARSEABLE: "the line can be read as a row"}
    lines_by_reason: dict[str, list[int]] = {}
    for line, reasons in zip(result.quarantined["line"], result.quarantined["reasons"]):
        for reason in reasons:
            lines_by_reason.setdefault(reason, []).append(int(line))
    rows = []
    for check, rule in rules.items():
        failed = lines_by_reason.get(check, [])
        shown = ", ".join(map(str, failed[:20])) + (f" ... (+{len(failed) - 20})" if len(failed) > 20 else "")
        status = f'<td class="bad">{len(failed)}</td>' if failed else '<td class="ok">0</td>'
        rows.append(f"<tr><td><code>{escape(check)}</code></td><td>{escape(rule)}</td>{status}"
                    f"<td>{escape(shown)}</td></tr>")  # fmt: skip
    reconciled = result.rows_in == len(result.accepted) + len(result.quarantined)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>feedback validation: {escape(result.kind)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}.bad{{color:#b00;font-weight:bold}}
.ok{{color:#070}}</style></head><body>
<h1>Feedback validation ({escape(result.kind)})</h1>
<p>rows in <b>{result.rows_in}</b> = accepted <b>{len(result.accepted)}</b> + quarantined
<b>{len(result.quarantined)}</b> ({"reconciled" if reconciled else "NOT reconciled"}).
A quarantined row is stored with its reasons in the quarantine file; a row can break several rules.</p>
<table><tr><th>check</th><th>rule</th><th>rows that broke it</th><th>their lines</th></tr>
{"".join(rows)}
</table>
<p>Great Expectations' own report of the same run: <a href="index.html">Data Docs</a> (needs a network for its
styles).</p></body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def validate_file(
    path: Path | str,
    cfg: ValidationConfig,
    *,
    existing_keys: dict[str, np.ndarray] | None = None,
    report_dir: Path | None = None,
    fmt: str | None = None,
    mapping: dict[str, str] | None = None,
) -> ValidationResult:
    """Read and validate one feedback file in any known format (:mod:`components.data.feedback.formats`; ``fmt``
    and ``mapping`` as in :func:`~components.data.feedback.io.read_feedback`). Raises ``FeedbackFileError``."""
    loaded = read_feedback(path, fmt, mapping)
    result = validate_frame(
        loaded.frame,
        loaded.kind,
        cfg,
        existing_keys=(existing_keys or {}).get(loaded.kind),
        unparseable=loaded.unparseable,
        report_dir=report_dir,
        source=loaded.format if loaded.format in ("hh-rlhf", "label-studio", "argilla") else f"file:{Path(path).name}",
    )
    if loaded.dropped_columns:
        result.notes.append(f"columns not in the {loaded.kind} schema, not stored: {', '.join(loaded.dropped_columns)}")
    for u in loaded.unparseable[:5]:
        result.notes.append(u.error)
    if len(loaded.unparseable) > 5:
        result.notes.append(f"... and {len(loaded.unparseable) - 5} more unreadable line(s)")
    return result


def write_outputs(result: ValidationResult, out_dir: Path) -> dict[str, Path]:
    """Write ``accepted_<kind>.parquet``, ``quarantine_<kind>.jsonl`` and ``summary.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "accepted": out_dir / f"accepted_{result.kind}.parquet",
        "quarantine": out_dir / f"quarantine_{result.kind}.jsonl",
        "summary": out_dir / "summary.json",
    }
    write_parquet(result.accepted, paths["accepted"], result.kind)
    write_jsonl(quarantine_records(result), paths["quarantine"])
    paths["summary"].write_text(json.dumps(result.summary(), indent=2) + "\n", encoding="utf-8")
    return paths


def quarantine_records(result: ValidationResult) -> list[dict]:
    """Quarantined rows as plain dicts (null raw fields left out)."""
    cols = list(result.quarantined.columns)
    return [{k: v for k, v in rec.items() if v is not None} for rec in _records(result.quarantined, cols)]
