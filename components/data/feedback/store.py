"""The versioned feedback store: accepted rows in ``data/feedback/*.parquet``, quarantine beside them, DVC versions.

One ingest = validate (deduplicating against what is already stored) -> append accepted rows -> append
quarantined rows (with their reasons) to ``data/quarantine/<kind>.jsonl`` -> ``dvc add data`` ->
``dvc push`` -> the new data version (the ``md5`` of ``data.dvc``), also logged to
``metrics/data_versions.jsonl``. Later stages and the audit record that version.

The default remote is the local folder :func:`components.project.paths.dvc_remote_dir`, configured in
``.dvc/config.local`` only when the project has no default remote (so an S3 remote set with
``dvc remote add -d`` wins).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from components.common.fsutil import restored_on_failure
from components.config.validation import ValidationConfig
from components.data.feedback.io import read_parquet, write_jsonl, write_parquet
from components.data.feedback.schema import PAIRS, RATINGS, SCHEMAS, key_hashes
from components.data.feedback.validation import ValidationResult, quarantine_records, validate_file, validate_frame
from components.data.prompt_pool import SERVED_PROMPTS, PromptsConfig, build_pool
from components.project import dvc_runner
from components.project.paths import ProjectPaths, dvc_remote_dir
from components.records import lineage

POOL_FILES = ("train.jsonl", "heldout.jsonl", "quarantine.jsonl", "pool.json")

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The versioned store could not be read or updated (a DVC command failed, data not checked out, ...)."""


def dvc(paths: ProjectPaths, *args: str) -> str:
    """Run one DVC command in the project under its DVC lock (:mod:`components.project.dvc_runner`); return stdout, or
    raise ``StoreError``."""
    try:
        return dvc_runner.dvc(paths.root, *args)
    except dvc_runner.DvcError as exc:
        raise StoreError(str(exc)) from exc


def pool_config(paths: ProjectPaths) -> PromptsConfig:
    """The project's ``prompts`` section (defaults when the project has no params file)."""
    from components.config import load_section

    return load_section(PromptsConfig, "prompts", paths.params) if paths.params.is_file() else PromptsConfig()


def data_version(paths: ProjectPaths) -> str | None:
    """The current data version: the ``md5`` recorded for ``data/`` in ``data.dvc`` (None if untracked)."""
    return lineage.data_version(paths.root)


def ensure_remote(paths: ProjectPaths) -> str:
    """The default DVC remote's name; adds ``local`` -> ``dvc_remote_dir()`` in config.local if there is none."""
    try:
        if name := dvc_runner.default_remote(paths.root):
            return name
    except dvc_runner.DvcError as exc:
        raise StoreError(str(exc)) from exc
    remote = dvc_remote_dir()
    try:
        remote.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot make the DVC remote folder {remote} ({exc}): point $RLHF_DVC_REMOTE at a writable folder, or "
            f"add a default remote to {paths.root} (`dvc remote add -d NAME URL`)"
        ) from exc
    dvc(paths, "remote", "add", "--local", "--force", "-d", "local", str(remote))
    log.info("DVC default remote: local -> %s (in .dvc/config.local)", remote)
    return "local"


def ensure_checked_out(paths: ProjectPaths) -> None:
    """Make sure ``data/`` holds the tracked version before appending (else old rows would be lost)."""
    if paths.data.is_dir() or not paths.data_dvc.is_file():
        return
    outs = (yaml.safe_load(paths.data_dvc.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
    try:
        dvc(paths, "checkout", "data.dvc")
        return
    except StoreError:
        pass
    try:
        ensure_remote(paths)
        dvc(paths, "pull", "data.dvc")
    except StoreError as exc:
        if not outs[0].get("size"):  # the tracked version is empty: nothing to lose
            paths.data.mkdir(parents=True, exist_ok=True)
            return
        raise StoreError(
            f"data/ is not checked out and data version {data_version(paths)} cannot be restored from the DVC "
            f"cache or remote ({exc}). Run `dvc pull` (or configure the remote) before adding feedback."
        ) from exc


def load(paths: ProjectPaths, kind: str) -> pd.DataFrame:
    """Every accepted row of ``kind`` in the current data version."""
    return read_parquet(paths.feedback / SCHEMAS[kind].file_name, kind)


def existing_keys(paths: ProjectPaths) -> dict[str, np.ndarray]:
    """Dedupe-key hashes of the stored rows of each kind."""
    return {kind: key_hashes(load(paths, kind), kind).to_numpy() for kind in (PAIRS, RATINGS)}


@dataclass
class IngestResult:
    """What one ingest did: the validation, the rows now stored, and the new data version."""

    validation: ValidationResult
    version: str | None
    previous_version: str | None
    totals: dict[str, int]
    pushed: bool

    def summary(self) -> dict[str, Any]:
        return {
            **self.validation.summary(),
            "version": self.version,
            "previous_version": self.previous_version,
            "totals": self.totals,
        }


def append(paths: ProjectPaths, result: ValidationResult, *, origin: str, push: bool = True) -> IngestResult:
    """Append a validation's accepted and quarantined rows, rebuild the prompt pool, then make (and push) a new
    DVC version. All or nothing: when a step fails, every file it touched is put back as it was."""
    from components.project.scaffold import ProjectError, require_project

    try:
        require_project(paths, "store feedback")
    except ProjectError as exc:
        raise StoreError(str(exc)) from exc
    previous = data_version(paths)
    kind = result.kind
    touched = [
        paths.feedback / SCHEMAS[kind].file_name,
        paths.quarantine / f"{kind}.jsonl",
        *(paths.prompts / name for name in POOL_FILES),
        paths.data_dvc,
    ]
    with restored_on_failure(touched, (paths.data, paths.feedback, paths.quarantine, paths.prompts)):
        version, stamp, pool = _write_and_version(paths, result, origin, push)
    totals = {k: len(load(paths, k)) for k in (PAIRS, RATINGS)}
    entry = {
        "version": version,
        "previous_version": previous,
        "time": stamp,
        "origin": origin,
        "kind": kind,
        "rows_in": result.rows_in,
        "accepted": len(result.accepted),
        "quarantined": len(result.quarantined),
        "by_reason": result.by_reason,
        "totals": totals,
        "prompts": {"train": pool.train, "heldout": pool.heldout, "quarantined": pool.quarantined},
    }
    paths.data_versions.parent.mkdir(parents=True, exist_ok=True)
    with paths.data_versions.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    log.info("data version %s (was %s): +%d %s rows, %s", version, previous, len(result.accepted), kind, totals)
    return IngestResult(result, version, previous, totals, push)


def _write_and_version(
    paths: ProjectPaths, result: ValidationResult, origin: str, push: bool
) -> tuple[str | None, str, Any]:
    kind = result.kind
    stored = load(paths, kind)
    new = result.accepted
    if len(new):
        # Validation already refused rows that are stored; this guards against a stale ``existing_keys``.
        fresh = ~key_hashes(new, kind).isin(key_hashes(stored, kind).to_numpy())
        if not fresh.all():
            raise StoreError(f"{int((~fresh).sum())} accepted rows are already stored: validate against this store")
        combined = pd.concat([stored, new], ignore_index=True) if len(stored) else new
        write_parquet(combined, paths.feedback / SCHEMAS[kind].file_name, kind)
    stamp = pd.Timestamp.now(tz="UTC").isoformat()
    if len(result.quarantined):
        records = [{**r, "origin": origin, "quarantined_at": stamp} for r in quarantine_records(result)]
        write_jsonl(records, paths.quarantine / f"{kind}.jsonl", append=True)
    paths.data.mkdir(parents=True, exist_ok=True)
    pool = build_pool(pool_config(paths), paths)
    dvc(paths, "add", "data")
    version = data_version(paths)
    if push:
        ensure_remote(paths)
        dvc(paths, "push", "data.dvc")
    return version, stamp, pool


def ingest_file(
    path: Path | str,
    paths: ProjectPaths,
    cfg: ValidationConfig,
    *,
    report_dir: Path | None = None,
    push: bool = True,
) -> IngestResult:
    """Validate a feedback file against the store and append it as a new data version (what the flow calls)."""
    ensure_checked_out(paths)
    result = validate_file(path, cfg, existing_keys=existing_keys(paths), report_dir=report_dir)
    return append(paths, result, origin=str(path), push=push)


def ingest_frame(
    frame: pd.DataFrame,
    kind: str,
    paths: ProjectPaths,
    cfg: ValidationConfig,
    *,
    origin: str,
    source: str = "import",
    annotator: str = "unknown",
    report_dir: Path | None = None,
    push: bool = True,
) -> IngestResult:
    """Validate in-memory rows (e.g. served feedback, seed pairs) and append them as a new data version."""
    ensure_checked_out(paths)
    result = validate_frame(
        frame,
        kind,
        cfg,
        existing_keys=existing_keys(paths)[kind],
        report_dir=report_dir,
        source=source,
        annotator=annotator,
    )
    return append(paths, result, origin=origin, push=push)


@dataclass(frozen=True)
class IngestSummary:
    """What validate+store did: counts that reconcile (rows_in = accepted + quarantined) and the data version."""

    kind: str
    rows_in: int
    accepted: int
    quarantined: int
    by_reason: dict[str, int]
    version: str | None
    previous_version: str | None
    totals: dict[str, int]
    report: str | None
    reused: bool = False
    """True when this exact file had been ingested already (a retry): nothing was stored twice."""


def summarise_ingest(ingest: IngestResult) -> IngestSummary:
    """The JSON-ready summary of a store ingest."""
    v = ingest.validation
    return IngestSummary(
        kind=v.kind,
        rows_in=v.rows_in,
        accepted=len(v.accepted),
        quarantined=len(v.quarantined),
        by_reason=dict(v.by_reason),
        version=ingest.version,
        previous_version=ingest.previous_version,
        totals=dict(ingest.totals),
        report=str(v.report) if v.report else None,
    )


@dataclass(frozen=True)
class ValidateResult:
    """What validate (+ store) did with one feedback file (JSON-serialisable)."""

    source: str
    kind: str
    rows_in: int
    accepted: int
    quarantined: int
    by_reason: dict[str, int]
    accepted_path: str
    quarantine_path: str
    report: str | None
    notes: list[str] = field(default_factory=list)
    stored: IngestSummary | None = None
    """The new data version when ``store`` was asked for."""

    @property
    def success(self) -> bool:
        return self.quarantined == 0


def validate_and_store(
    cfg: ValidationConfig,
    paths: ProjectPaths,
    *,
    source: Path,
    out: Path | None = None,
    store: bool = False,
    push: bool = True,
    fmt: str | None = None,
    mapping: dict[str, str] | None = None,
    prompts_file: Path | None = None,
    strict: bool = False,
) -> ValidateResult:
    """The validate stage: check a feedback file (every row accepted or quarantined with its reasons), write
    the accepted rows, the quarantined rows and an HTML report under ``out`` (default
    ``reports/validation/<file name>``), and with ``store`` append the accepted rows as a new data version (with
    ``prompts_file`` also added to the prompt pool's sources). ``fmt`` / ``mapping``: the file's format and column
    names (auto-detected / none), see :mod:`components.data.feedback.formats`. ``strict``: store nothing when any row
    was quarantined."""
    from components.data.feedback.validation import write_outputs

    source = Path(source).resolve()
    out = Path(out).resolve() if out is not None else paths.reports / "validation" / source.name.split(".")[0]
    if store:
        from components.project.scaffold import ProjectError, require_project

        try:
            require_project(paths, "validate --store")  # before anything is written
        except ProjectError as exc:
            raise StoreError(str(exc)) from exc
        ensure_checked_out(paths)
    keys = existing_keys(paths) if paths.feedback.is_dir() else None
    result = validate_file(source, cfg, existing_keys=keys, report_dir=out / "report", fmt=fmt, mapping=mapping)
    written = write_outputs(result, out)
    stored = None
    if store and not (strict and len(result.quarantined)):
        added = _add_prompt_source(paths, prompts_file) if prompts_file is not None else None
        try:
            stored = summarise_ingest(append(paths, result, origin=str(source), push=push))
        except BaseException:
            if added is not None:
                added.unlink(missing_ok=True)
            raise
    return ValidateResult(
        source=str(source),
        kind=result.kind,
        rows_in=result.rows_in,
        accepted=len(result.accepted),
        quarantined=len(result.quarantined),
        by_reason=dict(result.by_reason),
        accepted_path=str(written["accepted"]),
        quarantine_path=str(written["quarantine"]),
        report=str(result.report) if result.report else None,
        notes=list(result.notes),
        stored=stored,
    )


def add_served_prompts(paths: ProjectPaths, exported: Path | str) -> tuple[int, bytes | None]:
    """Append the exported served prompts that are new to ``data/prompts/sources/served.jsonl`` (the next pool
    build splits them train / held-out by hash like any prompt). Returns how many were new and the file's bytes
    before (None: it did not exist), for :func:`restore_served_prompts` when the data version then fails."""
    from components.data.prompt_pool import sources_dir

    ensure_checked_out(paths)
    target = sources_dir(paths) / SERVED_PROMPTS
    before = target.read_bytes() if target.is_file() else None
    known = set((before or b"").decode("utf-8").splitlines())
    new = [line for line in Path(exported).read_text(encoding="utf-8").splitlines() if line.strip()]
    new = [line for line in dict.fromkeys(new) if line not in known]
    if new:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in new))
    return len(new), before


def restore_served_prompts(paths: ProjectPaths, before: bytes | None) -> None:
    """Put ``served.jsonl`` back as :func:`add_served_prompts` found it."""
    from components.data.prompt_pool import sources_dir

    target = sources_dir(paths) / SERVED_PROMPTS
    if before is None:
        target.unlink(missing_ok=True)
    else:
        target.write_bytes(before)


def version_prompts(paths: ProjectPaths, *, origin: str, push: bool = True) -> str | None:
    """Rebuild the prompt pool and make a data version when only prompt files changed (served prompts with no
    feedback on them). All or nothing for the pool files and ``data.dvc``; returns the new data version."""
    previous = data_version(paths)
    touched = [*(paths.prompts / name for name in POOL_FILES), paths.data_dvc]
    with restored_on_failure(touched):
        pool = build_pool(pool_config(paths), paths)
        dvc(paths, "add", "data")
        if push:
            ensure_remote(paths)
            dvc(paths, "push", "data.dvc")
    version = data_version(paths)
    totals = {k: len(load(paths, k)) for k in (PAIRS, RATINGS)}
    entry = {
        "version": version, "previous_version": previous, "time": pd.Timestamp.now(tz="UTC").isoformat(),
        "origin": origin, "kind": "prompts", "rows_in": 0, "accepted": 0, "quarantined": 0, "by_reason": {},
        "totals": totals, "prompts": {"train": pool.train, "heldout": pool.heldout, "quarantined": pool.quarantined},
    }  # fmt: skip
    paths.data_versions.parent.mkdir(parents=True, exist_ok=True)
    with paths.data_versions.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    log.info(
        "data version %s (was %s): prompt pool %d train / %d held-out", version, previous, pool.train, pool.heldout
    )
    return version


def _add_prompt_source(paths: ProjectPaths, prompts_file: Path) -> Path | None:
    """Copy a prompts file into the pool's sources (``data/prompts/sources/``); refuses to overwrite another."""
    import shutil

    from components.data.prompt_pool import sources_dir

    prompts_file = Path(prompts_file)
    if not prompts_file.is_file():
        raise StoreError(f"prompts file {prompts_file} not found")
    dest = sources_dir(paths) / prompts_file.name
    if dest.exists():
        if dest.read_bytes() != prompts_file.read_bytes():
            raise StoreError(f"{dest} exists with other prompts: rename {prompts_file.name} to add it beside them")
        return None  # added before
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prompts_file, dest)
    return dest


def stored_rows(paths: ProjectPaths, kind: str = PAIRS) -> int:
    """How many accepted rows of ``kind`` the checked-out data version holds (0 when none are stored).

    The demo and the flow use it to decide whether seed feedback must be made or the versioned one reused."""
    f = paths.feedback / SCHEMAS[kind].file_name
    return len(pd.read_parquet(f, columns=["prompt"])) if f.is_file() else 0
