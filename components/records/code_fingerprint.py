"""Each DVC stage's code, as a fingerprint DVC tracks: a stage cannot go stale when code it runs changes.

A stage's command runs an entry module (``python -m components.decide.evaluation ...``). Its code is that module and
everything it imports from this project's packages, found statically from the import statements (those inside
functions and ``if TYPE_CHECKING:`` blocks included, so lazily imported code counts too), plus the data files
that ship inside the imported packages (templates, prompt lists). The fingerprint of a stage is a hash of every
such file's path and bytes.

:func:`write_code_fingerprint` writes one fingerprint per stage of the project's ``dvc.yaml`` to
``.rlhf/code.yaml``, and every stage lists its own key under ``params:`` (``- .rlhf/code.yaml: [evaluate]``).
``dvc status`` then reports a stage as changed exactly when code it imports changed, whether the code lives in
this checkout or in the installed package a project outside it uses; a change to code a stage does not import
leaves it up to date. The tool writes the file before every DVC command it runs.

Why this and not the alternatives: listing each stage's source files as ``deps`` in ``dvc.yaml`` by hand is what
went stale; generating those ``deps`` only works when the code sits inside the project (DVC deps are paths in the
repository), which a project made by ``rlhf init`` does not; one dependency on the whole package would rerun every
stage after any edit. A recorded hash of the imported modules works for both layouts and reruns only what changed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import yaml

from components.common.fsutil import atomic_write_text

log = logging.getLogger(__name__)
T = TypeVar("T")

PACKAGES = ("components", "flows", "serving", "rlhf_cli")
"""This project's top-level packages; imports of anything else (torch, the standard library, ...) are not followed."""

FINGERPRINT_FILE = Path(".rlhf") / "code.yaml"
"""Where the fingerprints go, relative to the project root (a params file of every stage in ``dvc.yaml``)."""

_MODULE_FLAG = re.compile(r"(?:^|\s)-m\s+([A-Za-z_][\w.]*)")

SETTLED_S = 2.0
"""A file's parsed imports and digest are remembered (for the process's later fingerprints) only once the file has
not changed for this long, so an edit in the same clock tick as the reading cannot hide behind an unchanged stamp."""

_memo: dict[tuple[str, str], tuple[tuple[int, int, int, int], object]] = {}
_memo_guard = threading.Lock()


class FingerprintError(RuntimeError):
    """A stage whose code cannot be found (its command names no module of this project)."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return _resolved(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=64)
def _resolved(location: str) -> Path:
    """A package folder's real path (one ``realpath`` per folder and process: it is asked thousands of times)."""
    return Path(location).resolve()


def module_file(name: str) -> Path | None:
    """The source file of the project module ``name`` (``pkg/mod.py`` or ``pkg/__init__.py``), else None."""
    top = name.split(".")[0]
    if top not in PACKAGES:
        return None
    base = _package_dir(top)
    if base is None:
        return None
    path = base.joinpath(*name.split(".")[1:])
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _remembered(kind: str, path: Path, compute: Callable[[], T]) -> T:
    """``compute()`` about ``path``, remembered while the file's stat stamp (inode, size, mtime, ctime) is the same.

    Every DVC command recomputes every stage's fingerprint, which would otherwise parse and hash the same few
    hundred modules again each time. ctime cannot be set back by hand, and a file is only remembered once it is
    :data:`SETTLED_S` old, so any later write changes the stamp and the file is read again."""
    st = path.stat()
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    key = (kind, str(path))
    with _memo_guard:
        hit = _memo.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]  # type: ignore[return-value]
    value = compute()
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLED_S * 1e9:
        with _memo_guard:
            _memo[key] = (stamp, value)
    return value


def _imports_of(path: Path, module: str) -> tuple[str, ...]:
    """The project modules the source file ``path`` of ``module`` may import (:func:`_imported_names`), remembered."""

    def parse() -> tuple[str, ...]:
        tree = ast.parse(path.read_bytes(), filename=str(path))
        names = _imported_names(tree, module, path.name == "__init__.py")
        return tuple(n for n in names if n.split(".")[0] in PACKAGES)

    return _remembered(f"imports:{module}", path, parse)


def _digest(path: Path) -> bytes:
    """sha256 of the file's bytes, remembered."""
    return _remembered("sha256", path, lambda: hashlib.sha256(path.read_bytes()).digest())


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every module name an ``import`` / ``from ... import`` anywhere in ``tree`` may load (relative ones resolved;
    ``from pkg import name`` yields both ``pkg`` and ``pkg.name``, which may be a submodule)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def imported_modules(entry: str) -> dict[str, Path]:
    """The project modules ``entry`` imports, directly or through others, with their parent packages:
    ``{module name: source file}`` (the entry included)."""
    found: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = module_file(name)
        if path is None:
            continue
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        todo += _imports_of(path, name)
    if entry not in found:
        raise FingerprintError(f"{entry!r} is not a module of this project ({', '.join(PACKAGES)})")
    return found


def package_data(package_init: Path) -> list[Path]:
    """The data files a package ships (templates, prompt lists): every file under its folder that is neither
    Python nor byte code nor inside a sub-package (a sub-package counts only when it is imported)."""
    folder = package_init.parent
    out = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        inside = path.parent
        if any((p / "__init__.py").is_file() for p in [inside, *inside.parents] if p != folder and folder in p.parents):
            continue
        out.append(path)
    return out


def code_files(entry: str) -> list[Path]:
    """Every file the stage running ``entry`` depends on: its imported project modules and their packages' data."""
    modules = imported_modules(entry)
    files = set(modules.values())
    for path in modules.values():
        if path.name == "__init__.py":
            files.update(package_data(path))
    return sorted(files)


def _label(path: Path) -> str:
    """A file's name relative to its top-level package's parent (``components/decide/evaluation.py``), the same in a
    checkout and in an installed package."""
    for top in PACKAGES:
        base = _package_dir(top)
        if base is not None and path.is_relative_to(base):
            return str(Path(top) / path.relative_to(base))
    return path.name


def fingerprint(files: Iterable[Path]) -> str:
    """sha256 over each file's label and bytes, in label order."""
    digest = hashlib.sha256()
    for label, path in sorted((_label(p), p) for p in files):
        digest.update(label.encode() + b"\0" + _digest(path))
    return digest.hexdigest()


def stage_entries(project_root: Path) -> dict[str, str]:
    """Each stage of the project's ``dvc.yaml`` and the module its command runs (``python -m MODULE`` or
    ``accelerate launch ... -m MODULE``; a bare ``rlhf ...`` command counts as the CLI module)."""
    dvc_yaml = Path(project_root) / "dvc.yaml"
    if not dvc_yaml.is_file():
        return {}
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
    entries = {}
    for name, stage in stages.items():
        cmd = stage.get("cmd", "") if isinstance(stage, dict) else ""
        cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
        match = _MODULE_FLAG.search(cmd)
        if match:
            entries[name] = match.group(1)
        elif cmd.split()[:1] == ["rlhf"]:
            entries[name] = "rlhf_cli.main"
        else:
            raise FingerprintError(
                f"{dvc_yaml}: stage {name!r} runs {cmd!r}, which names no module (`python -m MODULE ...`), so its "
                "code cannot be fingerprinted; run the stage through `python -m`"
            )
    return entries


def code_fingerprints(project_root: Path) -> dict[str, str]:
    """``{stage: fingerprint of its code}`` for every stage of the project's ``dvc.yaml``."""
    return {stage: fingerprint(code_files(entry)) for stage, entry in stage_entries(project_root).items()}


def write_code_fingerprint(project_root: Path) -> Path:
    """Write ``.rlhf/code.yaml`` (one fingerprint per stage) in ``project_root``; rewritten only when it changed,
    so an unchanged file keeps its timestamp. Call it before every DVC command on the project."""
    path = Path(project_root) / FINGERPRINT_FILE
    if not (Path(project_root) / "dvc.yaml").is_file():
        return path  # no pipeline, nothing to fingerprint
    text = "# Generated before every DVC command: each stage's code fingerprint"
    text += " (components/records/code_fingerprint.py).\n"
    text += yaml.safe_dump(code_fingerprints(project_root), sort_keys=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        log.debug("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m components.records.code_fingerprint [PROJECT]``: write the project's ``.rlhf/code.yaml`` (for running
    ``dvc`` by hand) and print it."""
    args = sys.argv[1:] if argv is None else argv
    path = write_code_fingerprint(Path(args[0]) if args else Path.cwd())
    print(path.read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
