"""The parts every benchmark shares: arguments, where it ran, fresh-process runs, results, the docs table.

A benchmark is a module of ``bench/`` with a ``main(argv)`` (listed in ``bench/__main__.py``) that

1. builds its parser with :func:`parser` (``--model``, ``--threads``, ``--out``, ``--conditions``, ``--no-table``,
   and ``--device`` / ``--anchor-python`` where it takes them);
2. runs its measurement, in this process or in fresh ones (:func:`alternate`: ours and an anchor, or two variants,
   alternating, each run in a new process so peak RSS and warm caches are per run);
3. writes its raw figures with :func:`write_results` (the machine, library versions and load average are added)
   and, unless ``--no-table``, its row of the table in ``docs/benchmarks.md`` with :func:`update_row`.

Only the standard library is imported at the top: the anchor's worker process (its own virtual environment, no
project dependencies) imports this module too.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
ANCHOR_ENVS = REPO / "bench" / ".venv-anchors"
DEFAULT_MODEL = "smollm2-135m-instruct"

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def parser(
    doc: str | None,
    *,
    name: str,
    out: str,
    model: str | None = DEFAULT_MODEL,
    device: bool = False,
    anchor: bool = False,
) -> argparse.ArgumentParser:
    """The benchmark ``name``'s parser with the shared options; ``out`` is its default results file name."""
    ap = argparse.ArgumentParser(
        prog=f"python -m bench {name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if model is not None:
        ap.add_argument("--model", default=model, help=f"model spec, a folder, or 'tiny' (default {model})")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=RESULTS / out, help=f"raw figures (default bench/results/{out})")
    ap.add_argument("--conditions", default="", help="free text for the table: e.g. 'shared, contended'")
    ap.add_argument("--no-table", action="store_true", help="write the raw figures only, not the docs table row")
    if device:
        ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    if anchor:
        ap.add_argument(
            "--anchor-python", type=Path, default=None, help="python of a prepared env with the anchor (no install)"
        )
    # the fresh-process protocol of ``alternate`` (never typed by hand)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return ap


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads when given; returns the count in use."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------------------------
# Where it ran
# ---------------------------------------------------------------------------------------------

SHARED_PACKAGES = ("torch", "transformers", "peft", "accelerate")


def machine() -> dict[str, Any]:
    """What the figures were measured on (CPU model, cores, GPU when visible, Python)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def gpu_name() -> str | None:
    """The first CUDA GPU's name when torch is already imported and sees one (never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name()


def versions(python: str | Path = sys.executable, packages: Sequence[str] = SHARED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` in the environment of interpreter ``python``."""
    if str(python) == sys.executable:
        return {p: _version(p) for p in packages}
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def _version(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def context(anchor_python: str | Path | None = None, anchor_packages: Sequence[str] = ()) -> dict[str, Any]:
    """Where a run happened: the machine, the load at the end, our package versions (and the anchor env's)."""
    out: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"ours": versions()},
    }
    if anchor_python is not None:
        out["versions"]["anchor_env"] = versions(anchor_python, (*anchor_packages, *SHARED_PACKAGES))
    return out


# ---------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, fn())``."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100) of ``values``."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


median = statistics.median


# ---------------------------------------------------------------------------------------------
# Fresh-process runs
# ---------------------------------------------------------------------------------------------


def alternate(
    name: str,
    sides: dict[str, str | Path],
    work: Path,
    *,
    pairs: int,
    argv: Callable[[str, int], list[str]] = lambda who, pair: [],
    env: dict[str, str] | None = None,
    before: Callable[[str, int], None] | None = None,
    after: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run benchmark ``name``'s worker for each side in turn, ``pairs`` times, each run in a fresh process.

    ``sides`` maps a label (``ours``, ``trl``, a variant) to the python that runs it; the worker is
    ``python -m bench NAME --worker LABEL --work WORK --result FILE *argv(label, pair)`` with the current
    directory at ``work``, and writes its figures as JSON to FILE (see :func:`worker`). Each run's dict comes
    back with ``who`` and ``pair`` added; ``before`` runs ahead of each run (e.g. to clear outputs), ``after``
    gets each run as it finishes (e.g. to print it).
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    runs = []
    for pair in range(pairs):
        for who, python in sides.items():
            if before is not None:
                before(who, pair)
            result = work / f"{who}-{pair}.json"
            cmd = [str(python), "-m", "bench", name, "--worker", who, "--work", str(work), "--result", str(result)]
            print(f"[{pair + 1}/{pairs}] {who} ...", flush=True)
            subprocess.run([*cmd, *argv(who, pair)], check=True, env=env, cwd=work)
            run = {**json.loads(result.read_text()), "who": who, "pair": pair}
            if keep := os.environ.get("BENCH_KEEP"):  # survives a comparison cut short
                Path(keep, result.name).write_text(json.dumps(run))
            if after is not None:
                after(run)
            runs.append(run)
    return runs


def worker(args: argparse.Namespace, fn: Callable[[], dict]) -> None:
    """The worker side of :func:`alternate`: ``fn()``'s dict, with wall seconds and peak RSS, to ``--result``."""
    t0 = time.perf_counter()
    out = fn()
    out.setdefault("wall_seconds", time.perf_counter() - t0)
    out["peak_rss_gib"] = peak_rss_gib()
    args.result.write_text(json.dumps(out))


def workdir(prefix: str) -> tempfile.TemporaryDirectory:
    """A throwaway folder for one benchmark run."""
    return tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-")


# ---------------------------------------------------------------------------------------------
# Results and the docs table
# ---------------------------------------------------------------------------------------------


def write_results(path: Path, record: dict, *, anchor_python: str | Path | None = None, anchor_packages=()) -> Path:
    """Write ``record`` as JSON to ``path``, with where it ran (:func:`context`) unless it says already."""
    if "machine" not in record:
        record = {**record, **context(anchor_python, anchor_packages)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"raw figures in {path}", flush=True)
    return path


def append_results(path: Path, record: dict) -> Path:
    """Append ``record`` (with :func:`context`) to the JSON list at ``path`` (a log of runs, e.g. before/after)."""
    runs = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*runs, {**record, **context()}], indent=2, default=str) + "\n", encoding="utf-8")
    print(f"raw figures appended to {path}", flush=True)
    return path


def results_path(path: Path) -> str:
    """``path`` as the table names it (relative to the repository when inside it)."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
HEADER = (
    "| Benchmark | Device, conditions | Ours | Anchor | Ours / anchor | Reproduce | Raw figures |",
    "|---|---|---|---|---|---|---|",
)


def update_row(key: str, cells: list[str], doc: Path = DOC) -> None:
    """Replace (or append) the row of ``doc``'s results table whose first cell is ``key``.

    The table sits between two HTML comments, so the prose around it is never touched; ``cells`` are the
    columns after the first. A row whose raw figures (the last cell) lie outside the repository (an absolute
    path: ``--out`` elsewhere, a trial run) is not written: the table names only files a reader can open.
    """
    raw = cells[-1].strip().strip("`") if cells else ""
    if raw.startswith("/"):
        print(f"raw figures outside the repository ({raw}): the results table in {doc.name} is left as it is",
              flush=True)  # fmt: skip
        return
    text = doc.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{doc}: no results table (expected the markers {START} and {END})")
    head, rest = text.split(START, 1)
    body, tail = rest.split(END, 1)
    rows = [line for line in body.strip().splitlines() if line.startswith("|")][len(HEADER) :]
    new = "| " + " | ".join([key, *(c.replace("|", "/") for c in cells)]) + " |"
    for i, line in enumerate(rows):
        if line.split("|")[1].strip() == key:
            rows[i] = new
            break
    else:
        rows.append(new)
    doc.write_text(head + START + "\n" + "\n".join([*HEADER, *rows]) + "\n" + END + tail, encoding="utf-8")


def command(name: str, args: Iterable[str]) -> str:
    """The table's "Reproduce" cell: ``python -m bench NAME ARGS`` in backquotes."""
    return "`" + " ".join(["python -m bench", name, *args]) + "`"


# ---------------------------------------------------------------------------------------------
# Anchor environments
# ---------------------------------------------------------------------------------------------

PINNED = ("transformers", "peft", "accelerate", "tokenizers", "safetensors", "huggingface_hub", "numpy")
"""Packages pinned to the project environment's versions inside every anchor environment."""


def anchor_env(name: str, requirement: str) -> Path:
    """The python of anchor environment ``bench/.venv-anchors/NAME`` holding ``requirement`` (made on first use;
    several requirements separated by spaces).

    Anchors (TRL) are never a product dependency. Each environment gets the SAME torch / transformers / peft /
    accelerate versions as ours, so both sides run the same kernels: torch is installed first on its own (pip
    takes the CPU wheel and never pulls a CUDA build), then the anchor with our versions as constraints.
    """
    env = ANCHOR_ENVS / name
    python = env / "bin" / "python"
    marker = env / ".installed"
    torch_version = md.version("torch").split("+")[0]
    want = f"torch=={torch_version} {requirement}"
    if marker.is_file() and marker.read_text() == want:
        return python
    print(f"creating {env} ({want}); this downloads torch once", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        for pkg in PINNED:
            fh.write(f"{pkg}=={md.version(pkg)}\n")
        pins = fh.name
    subprocess.run([*pip, *requirement.split(), f"peft=={md.version('peft')}", "-c", pins], check=True)
    marker.write_text(want)
    return python
