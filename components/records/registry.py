"""The model registry: model files in BentoML's model store, status and the champion pointer in a record of our own.

Two parts, because BentoML labels and metadata cannot change after a model is saved:

- **Immutable facts** go into BentoML's model store (``$BENTOML_HOME``, BentoML's default ``~/bentoml``):
  one model per version, tag ``rlhf-policy:<version>`` (or ``rlhf-reward:<version>``), holding the
  transformers folder, with labels (kind, parent, data version, reward-model version, code revision) and
  metadata (params, metrics, gate report, time). This module is the only one outside ``serving/`` that
  imports BentoML, and only inside the functions that save models.
- **Mutable status** (candidate / champion / rejected / retired) and the champion pointer live in
  ``registry/status.json`` (:attr:`ProjectPaths.registry`), replaced atomically (temporary file, fsync,
  ``os.replace``) and changed only under ``registry/.lock`` (an OS file lock, so two processes queue).

Exactly one champion, always: the record's ``champion`` field is the single source of truth; a version's
own ``status`` is a denormalised copy. A promotion is written in two steps (mark the new champion and move
the pointer; then retire the old one) with a journal entry between them, so a process killed in between
leaves a record whose pointer still names exactly one champion; every reader applies the journal on read
and the next writer persists it (:func:`_recover`).

Reading (``champion``, ``get``, ``list_models``) never imports BentoML: the store path of each version is
kept in the record, so a service can poll :func:`champion` cheaply for hot reload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from components.common.fsutil import atomic_write_text
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)

Status = Literal["candidate", "champion", "rejected", "retired"]
Kind = Literal["policy", "reward_model"]

POLICY_MODEL = "rlhf-policy"
"""BentoML model name of policy versions (``rlhf-policy:<version>``)."""
REWARD_MODEL = "rlhf-reward"
"""BentoML model name of reward-model versions."""
RECORD = "status.json"
POINTER = "ppo_parent.json"
"""``registry/ppo_parent.json``: the version and folder PPO starts from (the champion when the training flow
last prepared a round), a dep of the ``ppo`` DVC stage. Only :func:`write_ppo_parent` writes it (the flow, just
before training), never a promotion itself: so after a round's promotion the pipeline stays up to date, and the
next round's flow moves it to the new champion, which reruns PPO from there."""
LOCK = ".lock"
LOCK_TIMEOUT_S = 120.0
SCHEMA = 1


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, wrong status, ...), with what to do."""


@dataclass(frozen=True)
class ModelRecord:
    """One registered version as the status record holds it."""

    version: str
    kind: Kind
    status: Status
    path: Path
    """The version's transformers folder inside BentoML's model store."""
    tag: str
    """BentoML tag, e.g. ``rlhf-policy:20261127-120102-3fa2``."""
    created_at: str
    parent: str | None = None
    """Version this one was trained on from: a policy's parent policy; a reward model's parent reward model
    (``reward.init_from: champion``). None for the base model and models trained from the backbone."""
    facts: dict[str, Any] = field(default_factory=dict)
    """Facts saved with the model: data version, reward model, params, code revision, metrics (a version registered
    before its evaluation, to go on canary, gets the later facts added here; the store keeps the first ones)."""
    gate: dict[str, Any] | None = None
    """The gate report that decided this version (None for the base and undecided candidates)."""
    history: tuple[dict[str, str], ...] = ()
    """Every status change: ``{"status", "time", "reason"}``, oldest first."""
    pruned: str | None = None
    """When :func:`prune` removed this version's files from the store (None: they are there); its record stays."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["history"] = list(self.history)
        return d


# ---------------------------------------------------------------------------------------------
# The status record: read, recover, write under the lock
# ---------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _record_path(paths: ProjectPaths) -> Path:
    return paths.registry / RECORD


def _empty() -> dict[str, Any]:
    return {"schema": SCHEMA, "champion": None, "journal": None, "models": {}}


def _read(paths: ProjectPaths) -> dict[str, Any]:
    path = _record_path(paths)
    if not path.is_file():
        return _empty()
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:  # cannot happen through os.replace; a hand edit can do it
        raise RegistryError(f"{path}: not valid JSON ({exc}); restore it or remove the folder to start over") from exc
    return _recover(record)


def _recover(record: dict[str, Any]) -> dict[str, Any]:
    """Finish an interrupted promotion and enforce one champion: the pointer wins, other champions retire."""
    champ = record.get("champion")
    journal = record.get("journal")
    models = record["models"]
    if journal and journal.get("op") == "promote" and journal.get("new") == champ:
        old = journal.get("old")
        if old and old in models and models[old]["status"] == "champion":
            _set_status(models[old], "retired", f"recovered: {champ} was promoted", journal.get("time"))
        record["journal"] = None
    for version, entry in models.items():
        if entry["status"] == "champion" and version != champ:
            _set_status(entry, "retired", f"recovered: {champ} is the champion", _now())
    if champ is not None and champ in models and models[champ]["status"] != "champion":
        _set_status(models[champ], "champion", "recovered: the champion pointer names it", _now())
    return record


def _write(paths: ProjectPaths, record: dict[str, Any]) -> None:
    atomic_write_text(_record_path(paths), json.dumps(record, indent=2, sort_keys=True) + "\n")


def pointer_path(paths: ProjectPaths) -> Path:
    return paths.registry / POINTER


def ppo_parent(paths: ProjectPaths) -> str | None:
    """The champion a training round starts from (the policy's parent, and with ``reward.init_from: champion`` the
    reward model's): the version ``registry/ppo_parent.json`` names, else (the file missing or naming none) the
    registry's champion; None before anything is registered."""
    path = pointer_path(paths)
    version = json.loads(path.read_text(encoding="utf-8")).get("version") if path.is_file() else None
    if version is None:
        record = champion(paths)
        version = record.version if record is not None else None
    return version


def write_ppo_parent(paths: ProjectPaths) -> Path:
    """Point ``registry/ppo_parent.json`` at the current champion (``{"version", "path"}``, nulls before a
    champion); rewritten atomically and only when it differs, so DVC sees a change only for a new champion."""
    record = _read(paths)
    champ = record.get("champion")
    entry = record["models"].get(champ) if champ else None
    text = json.dumps({"version": champ, "path": entry["path"] if entry else None}, indent=2) + "\n"
    path = pointer_path(paths)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


@contextmanager
def _locked(paths: ProjectPaths) -> Iterator[dict[str, Any]]:
    """Hold the registry lock; yield the (recovered) record; write it back when the block succeeds."""
    from filelock import FileLock, Timeout

    paths.registry.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.registry / LOCK), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            record = _read(paths)
            yield record
            _write(paths, record)
    except Timeout as exc:
        raise RegistryError(
            f"{paths.registry / LOCK}: another process has held the registry lock for {LOCK_TIMEOUT_S:.0f} s"
        ) from exc


def _set_status(entry: dict[str, Any], status: Status, reason: str, when: str | None = None) -> None:
    entry["status"] = status
    entry.setdefault("history", []).append({"status": status, "time": when or _now(), "reason": reason})


def _to_record(entry: dict[str, Any]) -> ModelRecord:
    return ModelRecord(
        version=entry["version"],
        kind=entry["kind"],
        status=entry["status"],
        path=Path(entry["path"]),
        tag=entry["tag"],
        created_at=entry["created_at"],
        parent=entry.get("parent"),
        facts=entry.get("facts") or {},
        gate=entry.get("gate"),
        history=tuple(entry.get("history") or ()),
        pruned=entry.get("pruned"),
    )


# ---------------------------------------------------------------------------------------------
# Reading (no BentoML import, no lock: the record is replaced atomically)
# ---------------------------------------------------------------------------------------------


def champion(paths: ProjectPaths) -> ModelRecord | None:
    """The current champion policy (None before anything was registered). Cheap: serving polls it."""
    record = _read(paths)
    champ = record.get("champion")
    return _to_record(record["models"][champ]) if champ else None


def get(paths: ProjectPaths, version: str) -> ModelRecord:
    """One registered version; ``RegistryError`` naming the known ones if it is not registered."""
    models = _read(paths)["models"]
    if version not in models:
        known = ", ".join(sorted(models)) or "none"
        raise RegistryError(f"no model version {version!r} in {paths.registry} (registered: {known})")
    return _to_record(models[version])


def list_models(paths: ProjectPaths, kind: Kind | None = None) -> list[ModelRecord]:
    """Every registered version (of ``kind``), oldest first."""
    models = _read(paths)["models"].values()
    records = [_to_record(m) for m in models if kind is None or m["kind"] == kind]
    return sorted(records, key=lambda r: (r.created_at, r.version))


# ---------------------------------------------------------------------------------------------
# Registering (copies the folder into BentoML's store, then records the status)
# ---------------------------------------------------------------------------------------------

_TAG_OK = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def new_version(prefix: str = "") -> str:
    """A fresh, sortable version id: ``YYYYMMDD-HHMMSS-xxxx`` (UTC, 4 random hex digits), with an optional prefix."""
    import secrets

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}-{secrets.token_hex(2)}"


def _labels(facts: dict[str, Any]) -> dict[str, str]:
    """BentoML labels are strings: the short, filterable facts."""
    keys = ("kind", "version", "parent", "data_version", "reward_version", "code_revision", "base")
    return {k: str(facts[k]) for k in keys if facts.get(k) is not None}


def _stored_model(tag: str) -> Any:
    """The store's model of exactly ``tag``, else None. BentoML's own lookup also matches a version by its prefix
    (``v1`` finds a lone ``v10``; several matches raise), so its answer counts only when the tag is the same."""
    import bentoml

    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.BentoMLException:  # not found, or several versions start with this one
        return None
    return model if str(model.tag) == tag else None


def _save_to_store(name: str, version: str, folder: Path, facts: dict[str, Any]) -> tuple[str, Path]:
    import bentoml

    tag = f"{name}:{version}"
    existing = _stored_model(tag)
    if existing is not None:
        return str(existing.tag), Path(existing.path)
    # BentoML metadata refuses None (and so nested nulls): the facts travel as one JSON string, read back with
    # json.loads(bentoml.models.get(tag).info.metadata["facts"]).
    metadata = {"facts": json.dumps(facts, default=str, sort_keys=True)}
    with bentoml.models.create(tag, labels=_labels(facts), metadata=metadata) as model:
        for item in Path(folder).iterdir():
            if item.is_dir():
                shutil.copytree(item, Path(model.path) / item.name)
            else:
                shutil.copy2(item, Path(model.path) / item.name)
    saved = bentoml.models.get(tag)
    return str(saved.tag), Path(saved.path)


def register(
    paths: ProjectPaths,
    version: str,
    folder: Path,
    *,
    kind: Kind = "policy",
    facts: dict[str, Any] | None = None,
    parent: str | None = None,
    gate: dict[str, Any] | None = None,
    status: Status = "candidate",
    reason: str = "registered",
) -> ModelRecord:
    """Save ``folder`` (a transformers folder) as a new version in the store and record it as a ``candidate``.

    Registering a version that is already recorded returns its record (a retried stage changes nothing), with
    any new ``facts`` and ``gate`` added to the record.
    ``status="champion"`` is only allowed for the first policy (the base model); use :func:`promote` after.
    """
    if not _TAG_OK.match(version):
        raise RegistryError(f"version {version!r}: use lowercase letters, digits, '.', '-' and '_' only")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise RegistryError(f"{folder}: not a transformers folder (no config.json); nothing registered")
    facts = {**(facts or {}), "kind": kind, "version": version, "parent": parent}
    if gate is not None:
        facts["gate"] = gate
    already = _read(paths)["models"].get(version)
    if already is not None:
        return _add_facts(paths, version, facts, gate)
    tag, store_path = _save_to_store(POLICY_MODEL if kind == "policy" else REWARD_MODEL, version, folder, facts)
    with _locked(paths) as record:
        if version in record["models"]:
            return _to_record(record["models"][version])
        if status == "champion" and (kind != "policy" or record["champion"] is not None):
            raise RegistryError("only the first policy is registered as champion; promote() later ones")
        entry = {
            "version": version,
            "kind": kind,
            "tag": tag,
            "path": str(store_path),
            "created_at": _now(),
            "parent": parent,
            "facts": {k: v for k, v in facts.items() if k != "gate"},
            "gate": gate,
            "history": [],
            "status": status,
        }
        _set_status(entry, status, reason)
        record["models"][version] = entry
        if status == "champion":
            record["champion"] = version
    log.info("registered %s (%s) as %s", tag, store_path, status)
    return _to_record(entry)


def _add_facts(paths: ProjectPaths, version: str, facts: dict[str, Any], gate: dict[str, Any] | None) -> ModelRecord:
    """A version registered before (a candidate put on canary first) gets the facts known now in its record (the
    store's metadata keeps the first ones: BentoML cannot change them)."""
    with _locked(paths) as record:
        entry = record["models"][version]
        entry["facts"] = {**entry.get("facts", {}), **{k: v for k, v in facts.items() if k != "gate" and v is not None}}
        if gate is not None:
            entry["gate"] = gate
    return _to_record(entry)


def base_version(spec: str) -> str:
    """The registry version of a base model spec: ``base-<spec>`` for built-in specs, hashed for folders."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", spec.lower()).strip("-._")
    if Path(spec).expanduser().is_dir():
        digest = hashlib.sha256(str(Path(spec).expanduser().resolve()).encode()).hexdigest()[:8]
        slug = f"{Path(spec).name.lower()[:24]}-{digest}"
        slug = re.sub(r"[^a-z0-9._-]+", "-", slug).strip("-._")
    return f"base-{slug[:60]}"


def ensure_base_champion(paths: ProjectPaths, spec: str, folder: Path) -> ModelRecord:
    """Register the base model as the first champion when the registry holds no champion yet."""
    current = champion(paths)
    if current is not None:
        return current
    return register(
        paths,
        base_version(spec),
        folder,
        facts={"base": spec, "note": "the base model, before any training"},
        status="champion",
        reason="base model: the first champion",
    )


# ---------------------------------------------------------------------------------------------
# Status changes
# ---------------------------------------------------------------------------------------------


def _policy(record: dict[str, Any], version: str, paths: ProjectPaths) -> dict[str, Any]:
    entry = record["models"].get(version)
    if entry is None or entry["kind"] != "policy":
        known = ", ".join(v for v, m in sorted(record["models"].items()) if m["kind"] == "policy") or "none"
        raise RegistryError(f"no policy version {version!r} in {paths.registry} (policies: {known})")
    return entry


def _crash_point(step: str) -> None:
    """A no-op hook between the two writes of a promotion; crash drills in the tests replace it."""


def promote(paths: ProjectPaths, version: str, *, reason: str = "promoted", gate: dict | None = None) -> ModelRecord:
    """Make ``version`` the champion and retire the previous one (two journaled writes, see the module doc)."""
    with _locked(paths) as record:
        entry = _policy(record, version, paths)
        old = record["champion"]
        if old == version:
            return _to_record(entry)
        if gate is not None:
            entry["gate"] = gate
        # 1. mark the new champion, move the pointer, journal the retirement still to do
        _set_status(entry, "champion", reason)
        record["champion"] = version
        record["journal"] = {"op": "promote", "new": version, "old": old, "time": _now()}
        _write(paths, record)
        _crash_point("champion-marked")
        # 2. retire the old champion and clear the journal (written when the block ends)
        if old is not None:
            _set_status(record["models"][old], "retired", f"replaced by {version}")
        record["journal"] = None
    log.info("champion: %s (was %s)", version, old)
    return _to_record(entry)


def reject(paths: ProjectPaths, version: str, *, reason: str, gate: dict | None = None) -> ModelRecord:
    """Mark a candidate ``rejected`` (the champion is left as it is)."""
    with _locked(paths) as record:
        entry = _policy(record, version, paths)
        if record["champion"] == version:
            raise RegistryError(f"{version} is the champion; roll back to another version instead of rejecting it")
        if gate is not None:
            entry["gate"] = gate
        _set_status(entry, "rejected", reason)
    log.info("rejected %s: %s", version, reason)
    return _to_record(entry)


def rollback(paths: ProjectPaths, version: str, *, force: bool = False) -> ModelRecord:
    """Make an earlier version champion again; a ``rejected`` or never-decided one only with ``force``."""
    target = get(paths, version)
    if target.kind != "policy":
        raise RegistryError(f"{version} is a {target.kind}, not a policy")
    if target.status == "champion":
        return target
    if target.pruned:
        raise RegistryError(f"{version}'s files were removed from the store by `rlhf prune` ({target.pruned}); "
                            "its record and lineage remain, but it cannot serve again")  # fmt: skip
    if target.status != "retired" and not force:
        raise RegistryError(
            f"{version} is {target.status}, it was never champion; pass --force to make it champion anyway"
        )
    return promote(paths, version, reason=f"rollback (was {target.status})")


# ---------------------------------------------------------------------------------------------
# Pruning the store (the record keeps every version's lineage)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` removed (or would remove, ``dry_run``) and kept, with why each is kept."""

    removed: list[str]
    kept: dict[str, str]
    """Version -> why it is kept."""
    freed_bytes: int
    dry_run: bool


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _keep(record: dict[str, Any], keep_last: int, keep_retired: bool, also: tuple[str, ...]) -> dict[str, str]:
    """The versions :func:`prune` keeps, each with its reason: the base models, the champion and its ancestry,
    undecided candidates (one may be on canary), retired champions (``keep_retired``: what `rlhf rollback`
    returns to), the ``keep_last`` newest policies, the versions in ``also``, and every reward model one of
    those policies was trained with, with that reward model's own parents."""
    models = record["models"]
    keep: dict[str, str] = {}

    def add(version: str | None, why: str) -> None:
        while version and version in models and version not in keep:
            keep[version] = why
            version, why = models[version].get("parent"), f"ancestor of {version}"

    policies = sorted(
        (m for m in models.values() if m["kind"] == "policy"), key=lambda m: (m["created_at"], m["version"])
    )
    for m in policies:
        if m["version"].startswith("base-"):
            add(m["version"], "base model")
    add(record.get("champion"), "champion")
    for m in policies:
        if m["status"] == "candidate":
            add(m["version"], "undecided candidate")
        elif m["status"] == "retired" and keep_retired:
            add(m["version"], "retired champion (rollback target)")
    for m in policies[-keep_last:] if keep_last > 0 else []:
        add(m["version"], f"one of the {keep_last} newest policies")
    for version in also:
        add(version, "asked to keep")
    for version in [v for v in keep if models[v]["kind"] == "policy"]:
        rm = (models[version].get("facts") or {}).get("reward_version")
        add(rm, f"reward model of {version}")
    return keep


def prune(paths: ProjectPaths, *, keep_last: int = 3, keep_retired: bool = True, also: tuple[str, ...] = (),
          dry_run: bool = False) -> PruneResult:  # fmt: skip
    """Remove from BentoML's store the files of every version :func:`_keep` does not keep (rejected candidates
    and unused reward models, mostly: each round adds a policy and a reward model, hundreds of MB each at 135M
    parameters). Their records stay, marked ``pruned``, so ``rlhf models`` and ``rlhf audit`` still show their
    lineage and gate decisions; ``rlhf rollback`` refuses them. The kept set is decided under the registry lock
    that marks the removals, so a promotion at the same time cannot lose its files."""

    def plan(record: dict[str, Any]) -> tuple[list[str], dict[str, str], int]:
        """(removed, kept, freed bytes), in :class:`PruneResult`'s order."""
        keep = _keep(record, keep_last, keep_retired, also)
        drop = sorted(v for v, m in record["models"].items() if v not in keep and not m.get("pruned"))
        return drop, keep, sum(_folder_bytes(Path(record["models"][v]["path"])) for v in drop)

    if dry_run:
        return PruneResult(*plan(_read(paths)), dry_run=True)
    import bentoml

    with _locked(paths) as record:
        drop, keep, freed = plan(record)
        for version in drop:
            entry = record["models"][version]
            if _stored_model(entry["tag"]) is not None:  # else gone already (by hand): the record says so now
                bentoml.models.delete(entry["tag"])
            entry["pruned"] = _now()
    if drop:
        log.info("pruned %d versions' files (%.1f MB): %s", len(drop), freed / 1e6, ", ".join(drop))
    return PruneResult(drop, keep, freed, dry_run=False)


# ---------------------------------------------------------------------------------------------
# The register/promote stage
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionResult:
    """What the register/promote stage did (JSON-serialisable)."""

    version: str
    status: Status
    """``champion`` when the gate passed, else ``rejected``."""
    champion: str
    """The champion after the stage (the candidate, or the unchanged previous champion)."""
    previous_champion: str | None
    tag: str
    store_path: str
    reward_version: str | None
    reasons: list[str]
    """Why the candidate was rejected (empty when promoted)."""


def register_reward_model(paths: ProjectPaths, folder: Path) -> ModelRecord | None:
    """Register a reward-model folder (with its manifest) in the store; None when it has no version."""
    manifest_path = Path(folder) / "manifest.json"
    if not manifest_path.is_file():
        return None
    m = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not m.get("version"):
        return None
    facts = {
        "backbone": m.get("backbone"),
        "data_version": (m.get("data") or {}).get("data_version"),
        "code_revision": m.get("code_revision"),
        "params": m.get("params"),
        "metrics": m.get("metrics"),
        "trained_at": m.get("created_at"),
    }
    parent = (m.get("parent") or {}).get("version")
    return register(paths, m["version"], folder, kind="reward_model", facts=facts, parent=parent, reason="trained")


def register_and_decide(paths: ProjectPaths, *, policy: str | Path, evaluation: Any, gate: Any) -> PromotionResult:
    """Register the candidate policy (and its reward model) with its lineage, metrics and gate report, then
    promote it when the gate passed or mark it rejected (the champion unchanged)."""
    policy = Path(policy)
    m = json.loads((policy / "manifest.json").read_text(encoding="utf-8"))
    rm = m.get("reward_model") or {}
    rm_record = None
    if not str(rm.get("spec", "")).startswith("builtin:"):
        rm_record = register_reward_model(paths, paths.root / rm.get("spec", "models/reward"))
    eval_summary = {
        "win_rate": evaluation.win_rate,
        "win_rate_interval": [evaluation.win_rate_low, evaluation.win_rate_high],
        "interval": evaluation.interval,
        "against": evaluation.champion.version,
        "candidate": asdict(evaluation.candidate),
        "champion": asdict(evaluation.champion),
        "overoptimised": evaluation.overoptimised,
        "judge": getattr(evaluation, "judge", None) or {},
        "judge_disagrees": getattr(evaluation, "judge_disagrees", False),
        "reward_win_rate": getattr(evaluation, "reward_win_rate", None),
        "aa_win_rate": getattr(evaluation, "aa_win_rate", None),
        "aa_interval": [getattr(evaluation, "aa_low", None), getattr(evaluation, "aa_high", None)],
    }
    facts = {
        "base": m.get("base"),
        "data_version": m.get("data_version"),
        "reward_version": rm.get("version"),
        "reward_data_version": rm.get("data_version"),
        "reward_accuracy": rm.get("heldout_accuracy"),
        "code_revision": m.get("code_revision"),
        "params": m.get("params"),
        "algorithm": m.get("algorithm", "ppo"),
        "algorithm_params": m.get("algorithm_params"),
        "metrics": {"ppo": m.get("metrics"), "eval": eval_summary},
        "trained_at": m.get("created_at"),
    }
    gate_report = gate.to_dict()
    version = m["version"]
    before = champion(paths)
    record = register(paths, version, policy, facts=facts, parent=m.get("parent"), gate=gate_report)
    if gate.passed:
        record = promote(paths, version, reason="gate passed", gate=gate_report)
    elif record.status != "rejected":
        record = reject(paths, version, reason="gate failed: " + "; ".join(gate.reasons), gate=gate_report)
    now = champion(paths)
    return PromotionResult(
        version=version,
        status=record.status,
        champion=now.version if now else version,
        previous_champion=before.version if before else None,
        tag=record.tag,
        store_path=str(record.path),
        reward_version=rm_record.version if rm_record else rm.get("version"),
        reasons=list(gate.reasons),
    )
