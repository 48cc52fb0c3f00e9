"""The reward model on real human preferences (Anthropic HH-RLHF): held-out accuracy, or the cost of a step.

    python -m bench reward_hh HH_RLHF_JSONL_GZ [--train 160] [--eval 80] [--set trainable=top ...]
    python -m bench reward_hh HH_RLHF_JSONL_GZ --step-timing [--pairs 4] [--steps 2] [--modes all,top:4,lora,head]

A pair is prompt = the shared conversation up to the final "\\n\\nAssistant:", chosen / rejected = the two final
replies (pairs whose conversations differ before that, or with an empty reply, are skipped).

- Accuracy (default): the first ``train + eval`` usable pairs go to a pairs Parquet file and ``train_reward``
  trains on them with ``RewardConfig``'s defaults plus ``--set`` overrides; the held-out split is by prompt
  with ``eval_fraction = eval / (train + eval)``. Writes ``bench/results/reward_hh.json``: the metrics, wall
  and CPU seconds.
- ``--step-timing``: for every ``reward.trainable`` mode and max length, a few optimiser steps on ``--pairs``
  pairs after one warm-up step, on 1 torch thread unless ``--threads``. Wall seconds and CPU seconds (process
  time) per step: on a shared machine the CPU seconds of a 1-thread run are the figure that does not depend on
  other load. Writes ``bench/results/reward_cpu.json``.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import harness

SEP = "\n\nAssistant:"


def hh_pairs(path: Path, n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` usable HH-RLHF pairs as (prompt, chosen reply, rejected reply)."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            c, r = row["chosen"], row["rejected"]
            cut = c.rfind(SEP)
            if cut < 0 or r[: cut + len(SEP)] != c[: cut + len(SEP)]:
                continue
            prompt, chosen, rejected = c[:cut].strip(), c[cut + len(SEP) :].strip(), r[cut + len(SEP) :].strip()
            if not chosen or not rejected:  # a few HH-RLHF replies are empty: not a usable pair
                continue
            out.append((prompt, chosen, rejected))
            if len(out) == n:
                break
    return out


def time_mode(pairs: list[tuple[str, str, str]], cfg, steps: int) -> dict:
    """Seconds per optimiser step (and per no-grad pass) of reward config ``cfg`` on one batch of ``pairs``."""
    import torch

    from components.models.reward.model import build_reward_model, count_trainable, encode, pair_scores
    from components.models.reward.trainer import select_trainable

    model, tok = build_reward_model(cfg.backbone, seed=0)
    trainable = select_trainable(model, cfg)
    opt = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    prompts, chosen, rejected = (list(x) for x in zip(*pairs))
    times, cpu = [], []
    for i in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        r_c, r_r, _ = pair_scores(model, tok, prompts, chosen, rejected, cfg.max_length)
        loss = -torch.nn.functional.logsigmoid(r_c - r_r).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i > 0:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    with torch.no_grad():
        model.eval()
        t0, c0 = time.perf_counter(), time.process_time()
        pair_scores(model, tok, prompts, chosen, rejected, cfg.max_length)
        fwd, fwd_cpu = time.perf_counter() - t0, time.process_time() - c0
    batch = encode(tok, [*prompts, *prompts], [*chosen, *rejected], cfg.max_length)
    return {
        "trainable": cfg.trainable,
        "train_layers": cfg.train_layers if cfg.trainable == "top" else None,
        "max_length": cfg.max_length,
        "pairs_per_step": len(pairs),
        "padded_tokens": int(batch.input_ids.numel()),
        "trainable_params": count_trainable(trainable),
        "seconds_per_step": round(sum(times) / len(times), 2),
        "cpu_seconds_per_step": round(sum(cpu) / len(cpu), 2),
        "seconds_forward_only": round(fwd, 2),
        "cpu_seconds_forward_only": round(fwd_cpu, 2),
    }


def step_timing(args) -> dict:
    from components.config.reward import RewardConfig

    threads = harness.set_threads(args.threads or 1)
    batch = hh_pairs(args.data, args.pairs)
    results = []
    for length in (int(x) for x in args.lengths.split(",")):
        for mode in args.modes.split(","):
            name, _, k = mode.partition(":")
            cfg = RewardConfig(backbone=args.model, trainable=name, train_layers=int(k or 4), max_length=length)
            res = time_mode(batch, cfg, args.steps)
            print(json.dumps(res), flush=True)
            results.append(res)
    return {"benchmark": "reward_cpu", "torch_threads": threads, "results": results}


def accuracy(args) -> dict:
    import pandas as pd
    import yaml

    from components.config import from_dict, to_dict
    from components.config.reward import RewardConfig
    from components.models.reward.trainer import train_reward

    harness.setup_logging()
    threads = harness.set_threads(args.threads)
    overrides = {"backbone": args.model} | {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
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
        "benchmark": "reward_hh",
        "data": f"HH-RLHF ({args.data.name}), first pairs",
        "threads": threads,
        "params": to_dict(cfg),
        "metrics": result.metrics,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
    }
    print(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="reward_hh", out="reward_hh.json")
    ap.add_argument("data", type=Path, help="an HH-RLHF .jsonl.gz file")
    ap.add_argument("--step-timing", action="store_true", help="seconds per step per mode, not accuracy")
    ap.add_argument("--train", type=int, default=160, help="accuracy: training pairs")
    ap.add_argument("--eval", type=int, default=80, help="accuracy: held-out pairs")
    ap.add_argument("--set", nargs="*", default=[], help="accuracy: reward config overrides, key=value (YAML)")
    ap.add_argument("--pairs", type=int, default=4, help="step timing: pairs per step")
    ap.add_argument("--steps", type=int, default=2, help="step timing: timed steps after one warm-up")
    ap.add_argument("--modes", default="all,top:4,lora,head", help="step timing: reward.trainable modes")
    ap.add_argument("--lengths", default="256,128", help="step timing: reward.max_length values")
    args = ap.parse_args(argv)
    out = args.out
    if args.step_timing and out == harness.RESULTS / "reward_hh.json":
        out = out.with_name("reward_cpu.json")
    harness.write_results(out, step_timing(args) if args.step_timing else accuracy(args))
