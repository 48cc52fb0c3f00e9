"""The prompt pool: ``data/prompts/``, one versioned set of prompts, split train / held-out by a hash.

Sources (rebuilt at every data version, so the pool always matches the stored feedback):

- the prompts of the stored feedback (``data/feedback/pairs.parquet``, ``ratings.parquet``): imported files and
  the prompts users sent to the service, exported with their feedback (``source`` ``served``);
- prompt files: every ``*.jsonl`` / ``*.txt`` under ``data/prompts/sources/`` (versioned with the data; ``rlhf
  import --prompts FILE`` puts one there, and the served-feedback export keeps ``served.jsonl`` there: every prompt
  users sent, rated or not) and the files named in ``prompts.files``.

Each prompt is normalised (Unicode NFC, whitespace runs collapsed, trimmed) to a *key*; prompts with the same key
are one prompt (the sources are merged). Bad prompts (blank, too short or long, too many turns, control
characters, a conversation that does not end with a user turn) are quarantined with the reason in
``data/prompts/quarantine.jsonl``. A prompt is held out when the first 8 bytes of BLAKE2b(key), as a fraction of
2^64, are below ``prompts.heldout_fraction``: the split depends on the prompt alone, so a prompt never changes
split between rounds (raising the fraction only moves prompts from train to held-out). Held-out prompts never
train anything: :func:`heldout_keys` is what the reward model and the policy check their inputs against.

A prompt is a string (one user turn) or a list of ``{"role", "content"}`` messages (a conversation ending with a
user turn). Its text form (:func:`prompt_text`) is the string itself, or the turns as ``Human: ...`` /
``Assistant: ...`` paragraphs (the HH-RLHF transcript style); rendering uses the messages with their real roles.

Files: ``train.jsonl`` and ``heldout.jsonl`` (``{"prompt": text, "messages"?: [...], "key": ..., "sources":
[...]}`` per line; ``messages`` only for conversations), ``quarantine.jsonl``, ``pool.json`` (counts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config.prompts import PromptsConfig
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)

Message = Mapping[str, str]
Conversation = tuple[tuple[str, str], ...]
"""A conversation as ``((role, content), ...)``: hashable, so it can key caches and sets like a string."""
Prompt = str | Conversation | Sequence[Message]
"""One user turn, or a conversation (messages ending with a user turn)."""

ROLES = ("user", "assistant")
SERVED_PROMPTS = "served.jsonl"
"""The prompt file of what users sent the service (``sources/served.jsonl``, written by the served-feedback
export, rated or not); its prompts count as source ``served``."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")
_LABEL = {"user": "Human", "assistant": "Assistant"}


# --- one prompt ---------------------------------------------------------------------------------------------------


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt as chat messages (a string is one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    out = []
    for m in prompt:
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else m
        out.append({"role": str(role), "content": str(content)})
    return out


def conversation(prompt: Prompt) -> str | Conversation:
    """The hashable form: a string stays; messages become ``((role, content), ...)`` (one user turn: its text)."""
    if isinstance(prompt, str):
        return prompt
    msgs = as_messages(prompt)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return tuple((m["role"], m["content"]) for m in msgs)


def prompt_text(prompt: Prompt) -> str:
    """The text form: a string as it is, one user turn as its content, a conversation as HH-style paragraphs."""
    if isinstance(prompt, str):
        return prompt
    msgs = as_messages(prompt)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return "\n\n".join(f"{_LABEL.get(m['role'], m['role'].title())}: {m['content']}" for m in msgs)


def normalise(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, trimmed: prompts equal up to that are one prompt."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def prompt_key(prompt: Prompt) -> str:
    """The identity of a prompt: its normalised text form."""
    return normalise(prompt_text(prompt))


def heldout_score(key: str) -> float:
    """A uniform number in [0, 1) fixed by the prompt's key (first 8 bytes of BLAKE2b)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_heldout(prompt: Prompt, fraction: float) -> bool:
    return heldout_score(prompt_key(prompt)) < fraction


def from_record(row: Mapping[str, Any]) -> Prompt:
    """A prompt from a stored row: ``prompt_messages`` (JSON text or list) when present, else ``prompt``."""
    raw = row.get("prompt_messages") if hasattr(row, "get") else None
    if isinstance(raw, str) and raw.strip():
        raw = json.loads(raw)
    if isinstance(raw, (list, tuple)) and len(raw):
        return conversation(raw)
    return row["prompt"]


def check(prompt: Prompt, cfg: PromptsConfig) -> str | None:
    """The reason a prompt is refused, or None."""
    if not isinstance(prompt, str):
        msgs = list(prompt)
        if not msgs:
            return "empty_conversation"
        if len(msgs) > cfg.max_turns:
            return "too_many_turns"
        for m in msgs:
            if isinstance(m, Mapping):
                role, content = m.get("role"), m.get("content")
            elif isinstance(m, (list, tuple)) and len(m) == 2:
                role, content = m
            else:
                return "bad_message"
            if role not in ROLES or not isinstance(content, str):
                return "bad_message"
        if as_messages(msgs[-1:])[0]["role"] != "user":
            return "not_ending_with_user_turn"
    text = prompt_text(prompt)
    key = normalise(text)
    if not key:
        return "blank"
    if _CONTROL.search(text):
        return "control_chars"
    if len(key) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    return None


# --- the pool ------------------------------------------------------------------------------------------------------


@dataclass
class PoolResult:
    """What a pool build wrote: counts that reconcile (``seen = train + heldout + duplicates + quarantined``)."""

    seen: int
    train: int
    heldout: int
    duplicates: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    """Distinct accepted prompts per source (a prompt from two sources counts for both)."""
    multi_turn: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_prompt_file(path: Path) -> Iterable[tuple[Prompt | None, str]]:
    """(prompt or None when unreadable, detail) per non-empty line of a JSONL or text file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson")
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not jsonl:
            yield line, f"{path.name}:{n}"
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            yield None, f"{path.name}:{n}: not valid JSON"
            continue
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            yield obj["messages"], f"{path.name}:{n}"
        elif isinstance(obj, dict) and isinstance(obj.get("prompt"), (str, list)):
            yield obj["prompt"], f"{path.name}:{n}"
        else:
            yield None, f"{path.name}:{n}: expected {{'prompt': ...}} or {{'messages': [...]}}"


def _feedback_prompts(paths: ProjectPaths) -> Iterable[tuple[Prompt, str]]:
    import pandas as pd

    for name in ("pairs.parquet", "ratings.parquet"):
        f = paths.feedback / name
        if not f.is_file():
            continue
        frame = pd.read_parquet(f)
        cols = [c for c in ("prompt", "prompt_messages", "source") if c in frame.columns]
        for row in frame.loc[:, cols].drop_duplicates().to_dict("records"):
            source = row.get("source") or "feedback"
            yield from_record(row), "served" if source == "served" else str(source)


def sources_dir(paths: ProjectPaths) -> Path:
    """Prompt files versioned with the data (read at every pool build)."""
    return paths.prompts / "sources"


def build_pool(cfg: PromptsConfig, paths: ProjectPaths) -> PoolResult:
    """Rebuild ``data/prompts/`` from the stored feedback and the prompt files; returns the counts."""
    entries: dict[str, dict[str, Any]] = {}
    quarantined: list[dict[str, Any]] = []
    seen = duplicates = 0

    def offer(prompt: Prompt | None, source: str, where: str) -> None:
        nonlocal seen, duplicates
        seen += 1
        reason = "unreadable" if prompt is None else check(prompt, cfg)
        if reason is not None:
            shown = prompt if prompt is None or isinstance(prompt, str) else list(prompt)
            quarantined.append({"reason": reason, "source": source, "where": where, "prompt": shown})
            return
        key = prompt_key(prompt)
        entry = entries.get(key)
        if entry is not None:
            duplicates += 1
            if source not in entry["sources"]:
                entry["sources"].append(source)
            return
        msgs = None if isinstance(prompt, str) else as_messages(prompt)
        entries[key] = {"prompt": prompt_text(prompt), "key": key, "sources": [source]}
        if msgs is not None and (len(msgs) > 1 or msgs[0]["role"] != "user"):
            entries[key]["messages"] = msgs

    for prompt, source in _feedback_prompts(paths):
        offer(prompt, source, "feedback")
    files = sorted(sources_dir(paths).glob("*")) if sources_dir(paths).is_dir() else []
    files += [paths.root / f for f in cfg.files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"prompt file {f} not found (prompts.files in params.yaml)")
        label = "served" if f.name == SERVED_PROMPTS and f.parent == sources_dir(paths) else f"file:{f.name}"
        for prompt, where in _read_prompt_file(f):
            offer(prompt, label, where)

    train, held = [], []
    for entry in entries.values():
        (held if heldout_score(entry["key"]) < cfg.heldout_fraction else train).append(entry)
    paths.prompts.mkdir(parents=True, exist_ok=True)
    _write_jsonl(paths.prompts / "train.jsonl", train)
    _write_jsonl(paths.prompts / "heldout.jsonl", held)
    _write_jsonl(paths.prompts / "quarantine.jsonl", quarantined)
    by_reason: dict[str, int] = {}
    for q in quarantined:
        by_reason[q["reason"]] = by_reason.get(q["reason"], 0) + 1
    by_source: dict[str, int] = {}
    for entry in entries.values():
        for s in entry["sources"]:
            by_source[s] = by_source.get(s, 0) + 1
    result = PoolResult(
        seen=seen,
        train=len(train),
        heldout=len(held),
        duplicates=duplicates,
        quarantined=len(quarantined),
        by_reason=by_reason,
        by_source=by_source,
        multi_turn=sum("messages" in e for e in entries.values()),
    )
    assert result.seen == result.train + result.heldout + result.duplicates + result.quarantined
    (paths.prompts / "pool.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info(
        "prompt pool: %d train, %d held-out (%d multi-turn), %d duplicates merged, %d quarantined %s",
        result.train, result.heldout, result.multi_turn, duplicates, len(quarantined), by_reason or "",
    )  # fmt: skip
    return result


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


# --- reading the pool for training and evaluation ------------------------------------------------------------------


class HeldoutLeak(ValueError):
    """A held-out prompt reached a training input."""


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts from a pool file (or any JSONL of ``{"prompt"}`` / ``{"messages"}`` rows): messages when the row
    has them, else the prompt text. A bad row is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompts file {path} not found: import feedback (`rlhf import FILE`) to build the prompt pool, "
            "or set the file in params.yaml"
        )
    out: list[Prompt] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = conversation(row["messages"]) if row.get("messages") else row["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}:{n}: expected a JSON object with a 'prompt' key ({exc})") from exc
        if isinstance(prompt, str) and not prompt.strip():
            raise ValueError(f"{path}:{n}: 'prompt' must be a non-empty string")
        out.append(prompt)
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def heldout_keys(root: Path) -> set[str]:
    """Keys of the pool's held-out prompts (empty when the project has no pool yet)."""
    f = ProjectPaths(root).prompts / "heldout.jsonl"
    if not f.is_file():
        return set()
    return {prompt_key(p) for p in read_prompts(f)} if f.stat().st_size else set()


def refuse_heldout(prompts: Sequence[Prompt], root: Path, what: str) -> None:
    """Raise :class:`HeldoutLeak` when any of ``prompts`` is one of the pool's held-out prompts."""
    held = heldout_keys(root)
    leaked = [p for p in prompts if prompt_key(p) in held]
    if leaked:
        raise HeldoutLeak(
            f"{len(leaked)} of the {len(prompts)} {what} are held-out prompts of the pool "
            f"({root / 'data' / 'prompts' / 'heldout.jsonl'}), e.g. {prompt_text(leaked[0])[:80]!r}: held-out "
            "prompts never train anything. Train on data/prompts/train.jsonl (ppo.prompts)"
        )
