"""Time the reward-model stage on the demo's two rounds of pairs, in fresh processes (CPU).

    python bench/reward_rounds.py --pairs PROJECT/data/feedback/pairs.parquet [--no-store] [--rounds 1 2]

``--pairs`` is a demo project's pairs file after round 2 (seed pairs + served feedback): round 1 trains on its
``demo-seed`` rows, round 2 on all of them, as the demo does. Each round runs ``train_reward`` in its own
process with the default ``RewardConfig`` and, unless ``--no-store``, one disk activation cache shared by the rounds
(emptied first), as ``staging/reward-features`` is in a project. One JSON line per round (stage seconds,
frozen-pass seconds, optimisation seconds, store hits, held-out metrics) goes to stdout and is appended to
``bench/results/reward_rounds.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ONE_ROUND = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from components.config.reward import RewardConfig
from components.reward.trainer import train_reward
work, pairs, store = Path({work!r}), Path({pairs!r}), {store!r}
kw = {{"disk_cache": Path(store)}} if store else {{}}
t0 = time.perf_counter()
res = train_reward(pairs, RewardConfig(), work / "model", work / "metrics", project_root=work, **kw)
tr = res.metrics["train"]
print("RESULT " + json.dumps({{
    "stage_s": round(time.perf_counter() - t0, 1), "frozen_pass_s": tr["frozen_cache_seconds"],
    "heldout_frozen_pass_s": tr.get("frozen_cache_heldout_seconds"), "optimisation_s": tr["seconds"],
    "steps": tr["steps"], "store_hits": tr.get("disk_cache_hits"), "eval": res.metrics["eval"],
    "normalization": res.metrics["normalization"], "load_average_after": os.getloadavg(),
}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--no-store", action="store_true")
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reward_rounds.jsonl")
    args = ap.parse_args()
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="reward-rounds-") as tmp:
        work = Path(tmp)
        pairs = pd.read_parquet(args.pairs)
        files = {1: work / "round1.parquet", 2: work / "round2.parquet"}
        pairs[pairs["source"] == "demo-seed"].to_parquet(files[1])
        pairs.to_parquet(files[2])
        store = None if args.no_store else str(work / "store")
        if store:
            shutil.rmtree(store, ignore_errors=True)
        for r in args.rounds:
            script = ONE_ROUND.format(repo=str(REPO), work=str(work / f"r{r}"), pairs=str(files[r]), store=store)
            load_before = os.getloadavg()
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            row = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
            row = {"round": r, "store": store is not None, "load_average_before": load_before, **row}
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
