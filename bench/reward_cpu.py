"""Reward-model CPU timing: seconds per optimiser step for each ``reward.trainable`` mode and max length.

Usage: python bench/reward_cpu.py HH_RLHF_JSONL_GZ [--pairs 4] [--steps 2] [--out bench/results/reward_cpu.json]

Reads Anthropic HH-RLHF pairs (prompt = the shared conversation up to the final "\\n\\nAssistant:",
chosen / rejected = the two final replies), builds the SmolLM2 reward model for every mode, and times a few
optimiser steps after one warm-up step. Reports wall seconds and CPU seconds (process time) per step: on
a shared machine the CPU seconds of a 1-thread run are the number that does not depend on other load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from components.config.reward import RewardConfig
from components.reward.model import build_reward_model, count_trainable, encode, pair_scores
from components.reward.trainer import select_trainable

SEP = "\n\nAssistant:"


def hh_pairs(path: Path, n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` usable HH-RLHF pairs as (prompt, chosen reply, rejected reply); pairs whose
    conversations do not share the prefix or whose final reply is empty are skipped."""
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


def time_mode(pairs: list[tuple[str, str, str]], cfg: RewardConfig, steps: int) -> dict:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--modes", default="all,top:4,lora,head")
    ap.add_argument("--lengths", default="256,128")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 makes CPU-seconds robust to load")
    ap.add_argument("--out", type=Path, default=Path("bench/results/reward_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pairs = hh_pairs(args.data, 400)
    results = []
    batch = pairs[: args.pairs]
    for length in (int(x) for x in args.lengths.split(",")):
        for mode in args.modes.split(","):
            name, _, k = mode.partition(":")
            cfg = RewardConfig(backbone=args.backbone, trainable=name, train_layers=int(k or 4), max_length=length)
            res = time_mode(batch, cfg, args.steps)
            print(json.dumps(res), flush=True)
            results.append(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
