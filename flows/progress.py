"""Stage progress as Prefect run-logger lines, so a long task shows it is alive in the terminal and the UI.

The stage functions report ``progress(done, total, note)`` (``components.common.progress``); :func:`task_progress`
turns that into log lines, throttled to about one line per ``every_fraction`` of the work or per
``every_s`` seconds, whichever comes first; the last call (``done == total``) is always logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from components.common.progress import Progress


class Throttled:
    """A progress callback that forwards a line to ``emit`` only when enough work or time has passed."""

    def __init__(
        self,
        emit: Callable[[str], None],
        label: str,
        *,
        every_fraction: float = 0.1,
        every_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit, self.label, self.clock = emit, label, clock
        self.every_fraction, self.every_s = every_fraction, every_s
        self.t0 = self.last_t = clock()
        self.last_done: int | None = None
        self.last_note = ""

    def __call__(self, done: int, total: int, note: str) -> None:
        now = self.clock()
        if note != self.last_note:  # a new step of the stage starts its own count
            self.last_note, self.last_done = note, None
        finished = total > 0 and done >= total
        step = max(1, int(total * self.every_fraction)) if total > 0 else 1
        due = self.last_done is None or done - self.last_done >= step or now - self.last_t >= self.every_s
        if not (finished or due) or (finished and self.last_done == done):
            return
        self.last_done, self.last_t = done, now
        pct = f" ({100 * done / total:.0f} %)" if total > 0 else ""
        self.emit(f"{self.label}: {note} {done}/{total}{pct}, {now - self.t0:.0f} s")


def task_progress(label: str, **throttle: float) -> Progress:
    """A throttled progress callback that logs to the current Prefect task or flow run's logger (this module's
    logger when called outside a run, e.g. a task's ``.fn`` in a test)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger(__name__)
    return Throttled(logger.info, label, **throttle)
