"""The progress callback every long stage takes: ``progress(done, total, note)``.

The CLI draws it as a rich progress bar, a Prefect task logs it; ``None`` means nobody listens.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]
"""``(done, total, note)``: ``done`` of ``total`` units of the current step finished; ``note`` names the step."""


def report(progress: Progress | None, done: int, total: int, note: str) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(done, total, note)
