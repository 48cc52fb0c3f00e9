"""Time the reward-model stage on the demo's two rounds of pairs, each round in a fresh process (CPU).

    python -m bench reward_rounds --pairs PROJECT/data/feedback/pairs.parquet [--no-store] [--rounds 1 2]

``--pairs`` is a demo project's pairs file after round 2 (seed pairs + served feedback): round 1 trains on its
``demo-seed`` rows, round 2 on all of them, as the demo does. Each round runs ``train_reward`` in its own
process with the default ``RewardConfig`` (``--model`` swaps the backbone, e.g. ``tiny`` for a quick check) and,
unless ``--no-store``, one disk activation cache shared by the rounds (emptied first), as
``staging/reward-features`` is in a project. One JSON line per round (stage seconds, frozen-pass seconds,
optimisation seconds, store hits, held-out metrics) goes to stdout and is appended to
``bench/results/reward_rounds.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from bench import harness


def one_round(work: Path, round_: int, model: str | None, store: bool, threads: int | None) -> dict:
    """``train_reward`` on round ``round_``'s pairs file in ``work``, timed (the worker of one round)."""
    harness.set_threads(threads)
    from components.config.reward import RewardConfig
    from components.models.reward.trainer import train_reward

    cfg = RewardConfig() if model is None else dataclasses.replace(RewardConfig(), backbone=model)
    out = work / f"r{round_}"
    kw = {"disk_cache": work / "store"} if store else {}
    t0 = time.perf_counter()
    res = train_reward(work / f"round{round_}.parquet", cfg, out / "model", out / "metrics", project_root=out, **kw)
    tr = res.metrics["train"]
    return {
        "stage_s": round(time.perf_counter() - t0, 1),
        "frozen_pass_s": tr["frozen_cache_seconds"],
        "heldout_frozen_pass_s": tr.get("frozen_cache_heldout_seconds"),
        "optimisation_s": tr["seconds"],
        "steps": tr["steps"],
        "store_hits": tr.get("disk_cache_hits"),
        "eval": res.metrics["eval"],
        "normalization": res.metrics["normalization"],
        "load_average_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="reward_rounds", out="reward_rounds.jsonl", model=None)
    ap.add_argument("--model", default=None, help="reward backbone (default: RewardConfig's)")
    ap.add_argument("--pairs", type=Path, help="a demo project's pairs file after round 2")
    ap.add_argument("--no-store", action="store_true", help="no disk activation cache between the rounds")
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    if args.worker:
        round_ = int(args.worker.removeprefix("round"))
        return harness.worker(args, lambda: one_round(args.work, round_, args.model, not args.no_store, args.threads))
    if args.pairs is None:
        ap.error("--pairs PROJECT/data/feedback/pairs.parquet is required")
    import pandas as pd

    with harness.workdir("reward-rounds") as tmp:
        work = Path(tmp)
        pairs = pd.read_parquet(args.pairs)
        pairs[pairs["source"] == "demo-seed"].to_parquet(work / "round1.parquet")
        pairs.to_parquet(work / "round2.parquet")
        extra = ["--model", args.model] if args.model else []
        extra += ["--no-store"] if args.no_store else []
        extra += ["--threads", str(args.threads)] if args.threads else []
        load_before: dict[str, tuple] = {}
        args.out.parent.mkdir(parents=True, exist_ok=True)

        def log_row(run: dict) -> None:
            row = {"round": int(run["who"].removeprefix("round")), "store": not args.no_store, **run}
            row["load_average_before"] = load_before[run["who"]]
            for key in ("who", "pair", "wall_seconds"):
                row.pop(key)
            print(json.dumps(row), flush=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

        harness.alternate(
            "reward_rounds",
            {f"round{r}": sys.executable for r in args.rounds},
            work,
            pairs=1,
            argv=lambda w, p: extra,
            before=lambda who, pair: load_before.__setitem__(who, os.getloadavg()),
            after=log_row,
        )
