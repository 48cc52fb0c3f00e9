"""Benchmark: validate 100,000 synthetic preference pairs with the Great Expectations suite.

Writes ``bench/results/validation.json`` (rows/s, seconds per phase). About 5 % of the rows carry a fault
(blank, control character, chosen == rejected, too long, duplicate, negative margin), so the
``COMPLETE`` result format has real failing-row lists to return.

    PYTHONPATH=. python bench/bench_validation.py [--rows 100000] [--no-report]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np
import pandas as pd

from components.feedback.config import DataConfig
from components.feedback.io import read_feedback
from components.feedback.schema import PAIRS
from components.feedback.validation import prepare, run_suite, validate_frame

OUT = Path(__file__).resolve().parent / "results" / "validation.json"


def synthetic_pairs(n: int, seed: int = 0) -> pd.DataFrame:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the GX Data Docs HTML report")
    args = parser.parse_args()
    cfg = DataConfig()

    t = time.perf_counter()
    import great_expectations  # noqa: F401  (import cost measured separately: once per process)

    import_s = time.perf_counter() - t
    frame = synthetic_pairs(args.rows)

    t = time.perf_counter()
    prep = prepare(frame, PAIRS)
    prepare_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run_suite(prep.gx_frame, PAIRS, cfg, Path(tmp) / "report" if args.report else None)
        gx_s = time.perf_counter() - t

        t = time.perf_counter()
        result = validate_frame(frame, PAIRS, cfg, report_dir=Path(tmp) / "r2" if args.report else None)
        total_s = time.perf_counter() - t

        path = Path(tmp) / "pairs.jsonl"
        frame.to_json(path, orient="records", lines=True, force_ascii=True)
        t = time.perf_counter()
        loaded = read_feedback(path)
        read_s = time.perf_counter() - t

    assert result.rows_in == len(result.accepted) + len(result.quarantined) == args.rows
    assert len(loaded.frame) == args.rows
    record = {
        "benchmark": "validation",
        "rows": args.rows,
        "seconds": round(total_s, 3),
        "rows_per_s": round(args.rows / total_s),
        "phases_s": {
            "gx_import_once": round(import_s, 3),
            "prepare_pandas": round(prepare_s, 3),
            "gx_suite_run": round(gx_s, 3),
            "read_jsonl": round(read_s, 3),
        },
        "html_report": args.report,
        "accepted": len(result.accepted),
        "quarantined": len(result.quarantined),
        "by_reason": result.by_reason,
        "expectations": len(result.checks),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
