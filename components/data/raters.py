"""Raters as people: one API token per rater, kept hashed in the project's ``live/raters.json``.

The file maps each rater's name to the SHA-256 of their token (tokens are 32 random bytes, so a plain
hash is enough; the token itself is shown once by ``rlhf raters add`` and stored nowhere). The service
looks a presented bearer token up here and records feedback under the rater's name. Revoking a rater
removes their line; a running service sees the change on its next request (the file is re-read when its
modification time changes).

Beside the raters the file may hold one admin token (``rlhf raters admin``, hashed the same way): it opens
the review queue and the ``/admin`` routes, which rater tokens do not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

SHARED = "api-token"
"""Who the service's own ``RLHF_API_TOKEN`` names (the operator's token: it opens every route)."""
LOCAL = "local"
"""Who a token-less request names on an open loopback service (``serve.open_feedback: true``)."""
ADMIN = "admin"
"""Who the admin token names."""
RESERVED = frozenset({SHARED, LOCAL, ADMIN})
"""Names the service itself gives, never a rater's."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
TOKEN_PREFIX = "rlhf_rt_"
ADMIN_TOKEN_PREFIX = "rlhf_at_"


@dataclass(frozen=True)
class Rater:
    name: str
    token_sha256: str
    created_at: str


def raters_file(live: Path) -> Path:
    """Where a project keeps its raters (``live/raters.json``; not DVC-tracked, not for git)."""
    return live / "raters.json"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"rater name {name!r} is not allowed: use 1-64 letters, digits, '.', '_', '-' or '@', starting with a "
            "letter or digit"
        )
    if name in RESERVED:
        raise ValueError(f"rater name {name!r} is reserved for the service itself; pick another name")
    return name


def _load(path: Path) -> tuple[dict[str, Rater], Rater | None]:
    """The raters in ``path`` by name and the admin token's record (nothing when the file does not exist)."""
    if not path.exists():
        return {}, None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raters = {n: Rater(n, r["token_sha256"], r["created_at"]) for n, r in raw["raters"].items()}
        admin = raw.get("admin")
        return raters, (Rater(ADMIN, admin["token_sha256"], admin["created_at"]) if admin else None)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a raters file ({exc}); fix it or remove it and add the raters again") from exc


def load_raters(path: Path) -> dict[str, Rater]:
    """The raters in ``path`` by name (none when the file does not exist)."""
    return _load(path)[0]


def load_admin(path: Path) -> Rater | None:
    """The admin token's record (its hash and when it was made), or None when there is none."""
    return _load(path)[1]


def _save(path: Path, raters: dict[str, Rater], admin: Rater | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body: dict = {
        "raters": {r.name: {"token_sha256": r.token_sha256, "created_at": r.created_at} for r in raters.values()}
    }
    if admin is not None:
        body["admin"] = {"token_sha256": admin.token_sha256, "created_at": admin.created_at}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".raters-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_rater(path: Path, name: str) -> str:
    """Register ``name`` and return their new token (the only time it exists in clear)."""
    raters, admin = _load(path)
    if check_name(name) in raters:
        raise ValueError(f"rater {name!r} already exists: revoke them first to issue a new token")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    raters[name] = Rater(name, token_digest(token), _stamp())
    _save(path, raters, admin)
    log.info("rater %s added to %s", name, path)
    return token


def revoke_rater(path: Path, name: str) -> None:
    """Remove ``name``: their token stops working at once (feedback they gave stays, under their name)."""
    raters, admin = _load(path)
    if name not in raters:
        raise KeyError(f"no rater {name!r} in {path}; `rlhf raters list` shows who there is")
    del raters[name]
    _save(path, raters, admin)
    log.info("rater %s revoked in %s", name, path)


def rotate_admin(path: Path) -> str:
    """Make a new admin token (the old one, if any, stops working at once) and return it, shown this once."""
    raters, _ = _load(path)
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    _save(path, raters, Rater(ADMIN, token_digest(token), _stamp()))
    log.info("admin token (re)made in %s", path)
    return token


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RaterBook:
    """A service's view of the raters file: re-read when it changes, tokens compared in constant time."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, str] = {}

    def _current(self) -> dict[str, str]:
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                try:
                    raters, admin = _load(self.path) if stamp else ({}, None)
                except ValueError as exc:
                    log.error("%s: no rater tokens accepted until it is fixed", exc)
                    raters, admin = {}, None
                self._by_digest = {r.token_sha256: r.name for r in raters.values()}
                if admin is not None:
                    self._by_digest[admin.token_sha256] = ADMIN
                self._stamp = stamp
            return self._by_digest

    def name_of(self, token: str) -> str | None:
        """The rater holding ``token`` (``admin`` for the admin token), or None."""
        digest = token_digest(token)
        found = None
        for known, name in self._current().items():
            if hmac.compare_digest(known, digest):
                found = name
        return found
