"""Which candidate the service serves beside the champion (canary share and shadow), as a file it polls.

``serve.canary_version`` / ``canary_share`` / ``shadow`` in ``params.yaml`` set it when the service starts; the
retrain flow's ``human`` judge puts a candidate on canary while it waits for human comparisons by writing
``live/canary.json`` (:func:`assign`), and takes it off again (:func:`clear`). The assignment file, when present,
wins over ``params.yaml``; the service re-reads it every ``serve.reload_poll_seconds``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from components.common.fsutil import atomic_write_text
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)

FILE = "canary.json"


@dataclass(frozen=True)
class CanaryAssignment:
    """A registered version served beside the champion."""

    version: str
    share: float
    """Share of conversations (0..1) it answers, sticky per conversation."""
    shadow: bool = False
    """It also answers every request the champion answers, unseen (its replies only logged)."""
    reason: str = ""
    """Who put it there and why (shown in the service's log)."""
    since: float = 0.0
    """When it was assigned (seconds since the epoch)."""
    deadline: float | None = None
    """Until when its assigner waits for evidence (seconds since the epoch); kept across restarts of the flow."""

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError("a canary assignment needs a model version")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"canary share {self.share} must be from 0 to 1 (a share of conversations)")


def canary_file(paths: ProjectPaths) -> Path:
    return paths.live / FILE


def read_assignment(paths: ProjectPaths) -> CanaryAssignment | None:
    """The assignment in ``live/canary.json``, or None when there is none (or it cannot be read: logged)."""
    path = canary_file(paths)
    if not path.is_file():
        return None
    try:
        return CanaryAssignment(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        log.error("%s: unreadable canary assignment (%s); delete it or assign again", path, exc)
        return None


def assign(
    paths: ProjectPaths,
    version: str,
    share: float,
    *,
    shadow: bool = False,
    reason: str = "",
    deadline: float | None = None,
) -> CanaryAssignment:
    """Serve ``version`` beside the champion (the running service picks it up at its next poll)."""
    got = CanaryAssignment(version, share, shadow, reason, time.time(), deadline)
    atomic_write_text(canary_file(paths), json.dumps(asdict(got), indent=2) + "\n")
    log.info("canary: %s answers %.0f%% of conversations (%s)", version, 100 * share, reason or "assigned")
    return got


def clear(paths: ProjectPaths, version: str | None = None) -> bool:
    """Take the candidate off canary (only if it is ``version``, when given); True when something was cleared."""
    current = read_assignment(paths)
    if current is None or (version is not None and current.version != version):
        return False
    canary_file(paths).unlink(missing_ok=True)
    log.info("canary: %s taken off", current.version)
    return True


def effective(paths: ProjectPaths, version: str | None, share: float, shadow: bool) -> CanaryAssignment | None:
    """What the service should serve beside the champion: the assignment file, else ``serve.canary_*``."""
    found = read_assignment(paths)
    if found is not None:
        return found
    if version and (share > 0 or shadow):
        return CanaryAssignment(version, share, shadow, "params.yaml serve.canary_version")
    return None
