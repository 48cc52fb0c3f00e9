"""Validate 100,000 synthetic preference pairs with the Great Expectations suite.

Writes ``bench/results/validation.json`` (rows/s, seconds per phase). About 5 % of the rows carry a fault
(blank, control character, chosen == rejected, too long, duplicate, negative margin), so the
``COMPLETE`` result format has real failing-row lists to return.

    python -m bench validation [--rows 100000] [--no-report] [--table-only]
    python -m bench validation --rows 2000 --import-repeats 1 --no-table --out /tmp/v.json   # quick check

Also measures the validation step's import time in fresh interpreters (``components.data.feedback.validation``
plus Great Expectations, median of ``--import-repeats``) and writes the row of ``docs/benchmarks.md``;
``--table-only`` re-measures only that and rewrites the row from the existing JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import harness


def synthetic_pairs(n: int, seed: int = 0):
    """``n`` pair rows, about 5 % of them with one of six faults."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    frame = pd.DataFrame(
        {
            "prompt": [f"Customer question {i}: my order {i % 977} has not arrived yet, what can I do?" for i in idx],
            "chosen": [f"Sorry about that! Please send your order number {i} and I will check it." for i in idx],
            "rejected": [f"Wait. ({i})" for i in idx],
            "margin": rng.uniform(0, 2, n).round(3),
            "annotator": "bench",
        },
        dtype=object,
    )
    faults = rng.choice(n, size=n // 20, replace=False)
    for k, i in enumerate(faults):
        kind = k % 6
        if kind == 0:
            frame.at[i, "chosen"] = "   "
        elif kind == 1:
            frame.at[i, "prompt"] = "bell\x07 in the prompt"
        elif kind == 2:
            frame.at[i, "rejected"] = frame.at[i, "chosen"]
        elif kind == 3:
            frame.at[i, "chosen"] = "x" * 5000
        elif kind == 4:
            frame.loc[i, ["prompt", "chosen", "rejected"]] = frame.loc[(i + 1) % n, ["prompt", "chosen", "rejected"]]
        else:
            frame.at[i, "margin"] = -1.0
    return frame


def import_seconds(repeats: int = 3) -> list[float]:
    """Seconds to import the validation step (and GX) in a fresh interpreter, ``repeats`` times."""
    code = (
        "import time; t = time.perf_counter(); import components.data.feedback.validation, great_expectations; "
        "print(time.perf_counter() - t)"
    )
    env = dict(os.environ, GX_ANALYTICS_ENABLED="false", PYTHONPATH=str(harness.REPO))
    out = []
    for _ in range(repeats):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        out.append(round(float(res.stdout.strip().splitlines()[-1]), 3))
    return out


def write_row(record: dict, out: Path, conditions: str) -> None:
    imp = record.get("import_s_fresh_process") or []
    imp_text = f"; import of the step {sorted(imp)[len(imp) // 2]:.1f} s (fresh process, median of {len(imp)})"
    phases = record["phases_s"]
    harness.update_row(
        f"Validation (GX suite, {record['rows']:,} pair rows)",
        [
            f"CPU, {record['machine']['cpu_count']} cores{'; ' + conditions if conditions else ''}; HTML report "
            + ("on" if record["html_report"] else "off"),
            f"{record['rows_per_s']:,} rows/s ({record['seconds']:.1f} s for {record['rows']:,} rows, "
            f"{record['expectations']} expectations; GX suite {phases['gx_suite_run']:.1f} s, "
            f"pandas prepare {phases['prepare_pandas']:.1f} s){imp_text}",
            "no anchor",
            "-",
            harness.command("validation", [] if record["rows"] == 100_000 else ["--rows", str(record["rows"])]),
            f"`{harness.results_path(out)}`",
        ],
    )


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="validation", out="validation.json", model=None)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--no-report", dest="report", action="store_false", help="skip the GX Data Docs HTML report")
    ap.add_argument("--import-repeats", type=int, default=3, help="fresh interpreters timing the import")
    ap.add_argument("--table-only", action="store_true", help="re-measure the import time, rewrite the row")
    args = ap.parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if args.table_only:
        record = json.loads(args.out.read_text(encoding="utf-8"))
        record["import_s_fresh_process"] = import_seconds(args.import_repeats)
        harness.write_results(args.out, record)
        return write_row(record, args.out, args.conditions)
    record = measure(args.rows, args.report)
    record["import_s_fresh_process"] = import_seconds(args.import_repeats)
    print(json.dumps(record, indent=2))
    harness.write_results(args.out, record)
    if not args.no_table:
        write_row({**record, **harness.context()}, args.out, args.conditions)


def measure(rows: int, report: bool) -> dict:
    """Rows/s of ``validate_frame`` on ``rows`` synthetic pairs, with its phases timed apart."""
    import tempfile

    from components.config.validation import ValidationConfig
    from components.data.feedback.io import read_feedback
    from components.data.feedback.schema import PAIRS
    from components.data.feedback.validation import prepare, run_suite, validate_frame

    cfg = ValidationConfig()
    t = time.perf_counter()
    import great_expectations  # noqa: F401  (import cost measured separately: once per process)

    import_s = time.perf_counter() - t
    frame = synthetic_pairs(rows)

    t = time.perf_counter()
    prep = prepare(frame, PAIRS)
    prepare_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run_suite(prep.gx_frame, PAIRS, cfg, Path(tmp) / "report" if report else None)
        gx_s = time.perf_counter() - t

        t = time.perf_counter()
        result = validate_frame(frame, PAIRS, cfg, report_dir=Path(tmp) / "r2" if report else None)
        total_s = time.perf_counter() - t

        path = Path(tmp) / "pairs.jsonl"
        frame.to_json(path, orient="records", lines=True, force_ascii=True)
        t = time.perf_counter()
        loaded = read_feedback(path)
        read_s = time.perf_counter() - t

    if not result.rows_in == len(result.accepted) + len(result.quarantined) == rows:
        raise RuntimeError(f"validation lost rows: {rows} in, {len(result.accepted)} accepted, "
                           f"{len(result.quarantined)} quarantined")  # fmt: skip
    if len(loaded.frame) != rows:
        raise RuntimeError(f"read_feedback returned {len(loaded.frame)} of {rows} rows")
    return {
        "benchmark": "validation",
        "rows": rows,
        "seconds": round(total_s, 3),
        "rows_per_s": round(rows / total_s),
        "phases_s": {
            "gx_import_once": round(import_s, 3),
            "prepare_pandas": round(prepare_s, 3),
            "gx_suite_run": round(gx_s, 3),
            "read_jsonl": round(read_s, 3),
        },
        "html_report": report,
        "accepted": len(result.accepted),
        "quarantined": len(result.quarantined),
        "by_reason": result.by_reason,
        "expectations": len(result.checks),
    }
