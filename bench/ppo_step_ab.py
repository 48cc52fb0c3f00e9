"""A/B of single PPO-step pieces in ONE process, alternating, on the same rollout batch (CPU).

    python bench/ppo_step_ab.py [--model smollm2-135m-instruct] [--reps 2]

1. Step 2 (forward): the shared-trunk path (policy log-probs, entropy and values taken from the sampling
   pass, only the reference runs a forward) against the full path (policy forward + reference forward),
   with the largest difference of log-probs and values on real reply tokens.
2. One update micro-batch (4 replies, forward + backward) in float32 against CPU bf16 autocast.
Lines go to stdout as they are measured; ``bench/results/ppo_step_ab.json`` gets the raw figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.prompts import PROMPTS, SYSTEM  # noqa: E402
from components.config.model import ModelConfig  # noqa: E402
from components.config.policy import PolicyConfig  # noqa: E402
from components.paths import ProjectPaths  # noqa: E402
from components.policy.batch import slice_rows as _slice  # noqa: E402
from components.policy.loop import PolicyTrainer as PPOTrainer  # noqa: E402
from components.ppo.scorers import CountScorer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ppo_step_ab.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
        cfg = PolicyConfig(prompts="p.jsonl")
        trainer = PPOTrainer(
            cfg, ModelConfig(base=args.model, system_prompt=SYSTEM), CountScorer("sorry"), ProjectPaths(root)
        )
        for rep in range(args.reps):
            t0 = time.perf_counter()
            new = trainer.rollout(trainer.sample_prompts())
            t1 = time.perf_counter()
            old = copy.copy(new)
            old.gen_logits = old.gen_hidden = None  # forces the full path (policy forward + reference forward)
            t2 = time.perf_counter()
            trainer.forward_batch(new)
            t3 = time.perf_counter()
            trainer.forward_batch(old)
            t4 = time.perf_counter()
            m = new.mask.bool()
            row = {
                "rep": rep,
                "rollout_s": t1 - t0,
                "reply_tokens": int(new.response_ids.shape[1]),
                "forward_shared_trunk_path_s": t3 - t2,
                "forward_full_path_s": t4 - t3,
                "max_abs_diff_logp": (new.logp - old.logp).abs()[m].max().item(),
                "max_abs_diff_values": (new.values - old.values).abs()[m].max().item(),
            }
            part = _slice(old, torch.arange(cfg.micro_batch_size))
            for name, ctx in (
                ("update_microbatch_fp32_s", torch.autocast("cpu", enabled=False)),
                ("update_microbatch_bf16_autocast_s", torch.autocast("cpu", dtype=torch.bfloat16)),
            ):
                t5 = time.perf_counter()
                with ctx:
                    logits, values = trainer.model(part.input_ids, part.attention_mask, part.context_length)
                    loss = logits.float().logsumexp(-1).mean() + values.float().mean()
                loss.backward()
                trainer.optimizer.zero_grad(set_to_none=True)
                row[name] = time.perf_counter() - t5
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = {
        "benchmark": "ppo_step_ab",
        "model": args.model,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": {"batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size, "max_new_tokens": 32},
        "reps": rows,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
