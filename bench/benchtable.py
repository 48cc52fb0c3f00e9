"""The one results table in ``docs/benchmarks.md``: each bench script replaces its own row.

The table lives between two HTML comments so the prose around it is never touched. A row is keyed by its
first cell (the benchmark's name); writing a key that is not there yet appends the row.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
HEADER = (
    "| Benchmark | Device, conditions | Ours | Anchor | Ours / anchor | Reproduce | Raw figures |",
    "|---|---|---|---|---|---|---|",
)


def update_row(key: str, cells: list[str], doc: Path = DOC) -> None:
    """Replace (or append) the row whose first cell is ``key``; ``cells`` are the remaining columns."""
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


def machine() -> dict[str, object]:
    """What the figures were measured on (CPU model, cores, Python)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}


def versions(python: str | Path, packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``packages`` in the environment of interpreter ``python``."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))"
    )
    import json

    res = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


SHARED_PACKAGES = ("torch", "transformers", "peft", "accelerate")


def anchor_context(trl_python: str | Path) -> dict[str, object]:
    """What a comparison against TRL records about where it ran: the machine, the load at the end, and the
    package versions of our environment and of the anchor's."""
    import os

    return {
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "versions": {
            "ours": versions(sys.executable, SHARED_PACKAGES),
            "trl_env": versions(trl_python, ("trl", *SHARED_PACKAGES)),
        },
    }
