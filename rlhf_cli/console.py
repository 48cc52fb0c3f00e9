"""The CLI's console and log handler: drawn by rich in a terminal, one line per message when piped.

Rich wraps everything at 80 columns when the output is not a terminal (CI logs, Prefect run logs, a file),
which splits every long log line and path. Piped, the console here never wraps printed text (``soft_wrap``),
gives tables room (``PIPED_WIDTH``), and logging goes through a plain ``logging.StreamHandler``: one record,
one line, with its time and level.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

PIPED_WIDTH = 200
"""Width given to tables when the output is not a terminal (text is never wrapped there)."""

PIPED_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""One line per log record when the output is not a terminal."""


def make_console(**kwargs) -> Console:
    """A rich console for stdout: rich's own in a terminal, no wrapping when piped."""
    console = Console(**kwargs)
    if console.is_terminal:
        return console
    return Console(width=PIPED_WIDTH, soft_wrap=True, **kwargs)


def log_handler(console: Console) -> logging.Handler:
    """Rich's log handler in a terminal; a plain one-line-per-record handler on the console's stream otherwise."""
    if console.is_terminal:
        return RichHandler(console=console, show_path=False, rich_tracebacks=False)
    handler = logging.StreamHandler(_ConsoleStream(console))
    handler.setFormatter(logging.Formatter(PIPED_LOG_FORMAT))
    return handler


class _ConsoleStream:
    """Writes to the console's current file (``sys.stdout`` at the time of writing, as rich does)."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def write(self, text: str) -> int:
        return self._console.file.write(text)

    def flush(self) -> None:
        self._console.file.flush()
