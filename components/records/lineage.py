"""Lineage: the data version (from ``data.dvc``) and code revision recorded in every manifest, and the audit
trail of a registered policy (``rlhf audit``)."""

from __future__ import annotations

import json
import logging
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import components

log = logging.getLogger(__name__)


def data_version(root: Path) -> str | None:
    """The md5 of ``data/`` recorded in ``data.dvc`` (None when the project has none)."""
    dvc_file = root / "data.dvc"
    if not dvc_file.is_file():
        return None
    try:
        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []
    except yaml.YAMLError:
        log.warning("%s: not valid YAML; data version left empty", dvc_file)
        return None
    return next((o.get("md5") for o in outs if o.get("md5")), None)


def code_revision() -> str | None:
    """The revision of the rlhf-loop code that runs: ``git rev-parse HEAD`` of the checkout the package is imported
    from, with ``-dirty`` when that checkout's tracked files have changes; ``rlhf-loop <version>`` when the package
    is installed from a wheel (not inside a git checkout that tracks it); None when neither can be read.

    It is the code's revision, not the project's: a project (``rlhf init``) is a git repository of its own holding
    params and data versions, which the manifests record separately (``data_version``, ``params``)."""
    package = Path(components.__file__).resolve().parent
    checkout = package.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", str(package / "__init__.py"))  # the package is tracked by this checkout
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        try:
            return f"rlhf-loop {metadata.version('rlhf-loop')}"
        except metadata.PackageNotFoundError:
            return None
    return head + ("-dirty" if dirty else "")


def _log_entries(root: Path) -> list[dict]:
    log_file = Path(root) / "metrics" / "data_versions.jsonl"
    if not log_file.is_file():
        return []
    return [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def data_history(root: Path, until: str | None) -> list[dict]:
    """The ingests (``metrics/data_versions.jsonl``) that built data version ``until``, oldest first."""
    if until is None:
        return []
    entries = _log_entries(root)
    by_version = {e["version"]: e for e in entries}
    chain, seen, current = [], set(), until
    while current and current in by_version and current not in seen:
        seen.add(current)
        entry = by_version[current]
        chain.append(entry)
        current = entry.get("previous_version")
    return list(reversed(chain))


def feedback_summary(root: Path, version: str | None) -> dict[str, Any]:
    """Feedback rows by source and served-output ids of data version ``version`` (only if it is checked out)."""
    import pandas as pd

    from components.project.paths import ProjectPaths

    paths = ProjectPaths(root)
    current = data_version(root)
    if version is None:
        return {"note": "no data version recorded"}
    if current != version:
        return {"note": f"data version {version} is not checked out (now {current}); `dvc checkout` it to list rows"}
    out: dict[str, Any] = {"by_source": {}}
    ids: list[str] = []
    for kind, id_cols in (("pairs", ("chosen_id", "rejected_id")), ("ratings", ("served_id",))):
        f = paths.feedback / f"{kind}.parquet"
        if not f.is_file():
            continue
        frame = pd.read_parquet(f)
        if "source" in frame:
            out["by_source"][kind] = {
                str(k): int(v) for k, v in frame["source"].fillna("unknown").value_counts().items()
            }
        for col in id_cols:
            if col in frame:
                ids += [str(v) for v in frame[col].dropna().tolist()]
    out["served_ids"] = {"count": len(ids), "examples": ids[:5]}
    from components.data.feedback.agreement import rater_summary

    out["raters"] = rater_summary(paths)
    return out


FORGET_KIND = "forget"
"""The ``kind`` of an ``rlhf forget`` entry in ``metrics/data_versions.jsonl`` (written by
:mod:`components.data.feedback.forget`)."""


def forgotten(history: list[dict]) -> list[dict]:
    """The forget entries among a data version's history (:func:`data_history`)."""
    return [
        {k: e.get(k) for k in ("rater", "version", "previous_version", "time", "removed", "note")}
        for e in history
        if e.get("kind") == FORGET_KIND
    ]


def forgotten_raters(root: Path, version: str | None) -> list[dict[str, Any]]:
    """Every ``rlhf forget --rater`` of the project, each saying whether data version ``version`` (a model's)
    came after it (trained without that rater's feedback) or before (it still holds their rows)."""
    after = {e["version"] for e in data_history(root, version)}
    return [f | {"in_this_data_version": f["version"] not in after} for f in forgotten(_log_entries(root))]


def audit_trail(paths: Any, version: str | None = None) -> dict[str, Any]:
    """Everything that produced a policy: ancestry, reward model, data versions and their ingests, feedback rows
    by source, served-output ids, code revision, params, gate reasons (``version`` default: the champion)."""
    from components.records import registry

    record = registry.champion(paths) if version is None else registry.get(paths, version)
    if record is None:
        raise registry.RegistryError(f"no champion in {paths.registry}: nothing registered yet (run `rlhf demo`)")
    ancestry, seen, current = [], set(), record
    while current is not None and current.version not in seen:
        seen.add(current.version)
        ancestry.append({"version": current.version, "status": current.status})
        try:
            current = registry.get(paths, current.parent) if current.parent else None
        except registry.RegistryError:
            ancestry.append({"version": current.parent, "status": "not registered"})
            current = None
    facts = record.facts
    rm_version = facts.get("reward_version")
    reward = None
    if rm_version:
        reward = {"version": rm_version, "data_version": facts.get("reward_data_version"),
                  "accuracy": facts.get("reward_accuracy")}  # fmt: skip
        try:
            rm = registry.get(paths, rm_version)
            reward.update(path=str(rm.path), code_revision=rm.facts.get("code_revision"), parent=rm.parent)
        except registry.RegistryError:
            reward["note"] = "not registered"
    dv = facts.get("data_version")
    ev = (facts.get("metrics") or {}).get("eval") or {}
    return {
        "judge": ev.get("judge") or None,
        "model": record.to_dict() | {"facts": None},
        "ancestry": ancestry,
        "reward_model": reward,
        "data_version": dv,
        "data_history": data_history(paths.root, dv),
        "feedback": feedback_summary(paths.root, dv),
        "forgotten_raters": forgotten_raters(paths.root, dv),
        "prompt_pool": prompt_pool_summary(paths.root, dv),
        "code_revision": facts.get("code_revision"),
        "params": _flat_params(facts.get("params") or {}),
        "gate": record.gate,
        "metrics": facts.get("metrics"),
    }


def prompt_pool_summary(root: Path, version: str | None) -> dict[str, Any]:
    """The prompt pool of data version ``version`` (``data/prompts/pool.json``: train / held-out counts, by source),
    when that version is checked out."""
    pool = Path(root) / "data" / "prompts" / "pool.json"
    if version is None or data_version(root) != version or not pool.is_file():
        return {"note": f"data version {version} is not checked out or has no prompt pool"}
    return json.loads(pool.read_text(encoding="utf-8"))


def _flat_params(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {section: dict(values) for section, values in params.items() if isinstance(values, dict)}
