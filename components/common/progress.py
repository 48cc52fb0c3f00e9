"""The progress callback every long stage takes: ``progress(done, total, note)``.

The CLI draws it as a rich progress bar, a Prefect task logs it; ``None`` means nobody listens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Progress = Callable[[int, int, str], None]
"""``(done, total, note)``: ``done`` of ``total`` units of the current step finished; ``note`` names the step."""


def report(progress: Progress | None, done: int, total: int, note: str) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(done, total, note)


def log_progress(logger: logging.Logger, label: str) -> Progress:
    """A callback logging one INFO line per call (``label: note done/total``): what a stage command run by
    DVC passes, so each step reaches a log that is not a terminal (no progress bars there)."""

    def emit(done: int, total: int, note: str) -> None:
        logger.info("%s %d/%d %s", label, done, total, note)

    return emit
