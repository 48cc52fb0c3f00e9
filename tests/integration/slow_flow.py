"""A stand-in for ``retrain`` that takes a while, served the way ``rlhf deploy`` serves ``retrain``:
``python tests/integration/slow_flow.py PROJECT CRON`` runs :func:`flows.deploy.serve_schedule` with it.

Each run appends ``start <time>`` and ``end <time>`` lines to ``PROJECT/runs.log``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prefect import flow

SECONDS = 12.0


@flow(name="slow-retrain")
def slow_retrain(project: str) -> str:
    log = Path(project) / "runs.log"
    with log.open("a") as out:
        out.write(f"start {time.time()}\n")
    time.sleep(SECONDS)
    with log.open("a") as out:
        out.write(f"end {time.time()}\n")
    return project


if __name__ == "__main__":
    from flows.deploy import serve_schedule

    serve_schedule(Path(sys.argv[1]), sys.argv[2], flow=slow_retrain)
