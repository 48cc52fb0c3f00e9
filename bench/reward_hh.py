"""Train the reward model on a small subset of real HH-RLHF pairs and report held-out accuracy and timing.

Usage: python bench/reward_hh.py HH_RLHF_JSONL_GZ [--train 160] [--eval 80] [--set trainable=top ...]

The first ``train + eval`` usable pairs are written as a pairs Parquet file (prompt = the shared
conversation up to the final "\\n\\nAssistant:", chosen / rejected = the final replies); the held-out split
is by prompt with ``eval_fraction = eval / (train + eval)``. Results go to bench/results/reward_hh.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
import yaml
from reward_cpu import hh_pairs  # the sibling script

from components.config import from_dict, to_dict
from components.config.reward import RewardConfig
from components.reward.trainer import train_reward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--train", type=int, default=160)
    ap.add_argument("--eval", type=int, default=80)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--set", nargs="*", default=[], help="reward config overrides, key=value (YAML values)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/reward_hh.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = from_dict(RewardConfig, overrides, prefix="reward.")
    n = args.train + args.eval
    cfg = replace(cfg, eval_fraction=args.eval / n)
    rows = hh_pairs(args.data, n)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.parquet"
        pd.DataFrame(rows, columns=["prompt", "chosen", "rejected"]).to_parquet(pairs)
        t0, c0 = time.perf_counter(), time.process_time()
        result = train_reward(pairs, cfg, Path(tmp) / "reward", Path(tmp) / "metrics", project_root=Path(tmp))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    report = {
        "data": "HH-RLHF harmless-base test split, first pairs",
        "threads": torch.get_num_threads(),
        "params": to_dict(cfg),
        "metrics": result.metrics,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
