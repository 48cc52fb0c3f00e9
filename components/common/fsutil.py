"""Atomic folder writes: fill a staging folder beside the target, flush it to disk, rename it into place.

One function for every stage that writes a model folder (reward trainer, PPO export, base-model cache), so a
process killed at any instant leaves either the old complete folder or the new complete one, plus at most
a dot-prefixed staging folder that the next write removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves to disk."""
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clear_stale(target: Path) -> None:
    for stale in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_dir(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh staging folder; when the block ends without error it becomes ``target``.

    ``replace=False`` (versioned outputs, never overwritten): an existing ``target`` is an error, raised
    before any work. ``replace=True`` (a fixed path such as a DVC output): the old folder is renamed away,
    the new one renamed in, then the old one deleted; readers see a complete folder except for the
    instant between the two renames. On error the staging folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists: versions are written once, never replaced in place")
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
        fsync_tree(staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file through a flushed temporary file and ``os.replace`` (readers never see half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def restored_on_failure(files: Iterable[Path], folders: Iterable[Path] = ()) -> Iterator[None]:
    """All or nothing for a group of small files: if the block raises, each file gets back the bytes it had
    before (or is removed if it did not exist), and each of ``folders`` that did not exist and is empty again
    is removed; then the error goes on."""
    saved = {f: (f.read_bytes() if f.is_file() else None) for f in files}
    created = [d for d in folders if not d.exists()]
    try:
        yield
    except BaseException:
        for f, data in saved.items():
            if data is None:
                f.unlink(missing_ok=True)
            else:
                f.write_bytes(data)
        for d in reversed(created):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
