"""Value head: shared trunk vs separate trunk, measured on one PPO micro-batch.

    python bench/bench_value_head.py [--model smollm2-135m-instruct] [--reps 3]

Builds both variants of ``components.policy.model.ActorCritic`` (LoRA, default params), then times a
training forward + backward of one micro-batch (``micro_batch_size`` replies of ``max_new_tokens``
tokens after a chat prompt) and a no-grad forward (the rollout-time pass), alternating the variants
rep by rep so machine noise hits both alike. Writes ``bench/results/value_head.json``: median seconds,
trainable parameters, resident memory of each model.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.base_model import load_base  # noqa: E402
from components.config import load_section  # noqa: E402
from components.config.policy import PolicyConfig  # noqa: E402
from components.generation import chat_text  # noqa: E402
from components.policy.model import build_actor_critic  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "value_head.json")
    args = ap.parse_args()
    cfg = load_section(PolicyConfig, "policy", REPO / "params.yaml")
    base, tok = load_base(args.model)
    text = chat_text(tok, "My order arrived damaged. What should I do?", "You are a helpful assistant.")
    q = tok([text] * cfg.micro_batch_size, return_tensors="pt", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    r = torch.randint(0, len(tok) - 10, (cfg.micro_batch_size, cfg.max_new_tokens))
    ids = torch.cat([q, r], 1)  # shape: (b, P+R)
    mask = torch.ones_like(ids)
    P = q.shape[1]
    variants = {}
    for name in ("shared", "separate"):
        from dataclasses import replace

        ac, _ = build_actor_critic(replace(cfg, value_model=name), copy.deepcopy(base))
        variants[name] = ac
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "no_grad": []} for n in variants}
    for _ in range(args.reps + 1):  # first rep is warm-up
        for name, ac in variants.items():
            t0 = time.perf_counter()
            logits, values = ac(ids, mask, P)
            (logits.float().logsumexp(-1).mean() + values.mean()).backward()
            t1 = time.perf_counter()
            with torch.no_grad():
                ac(ids, mask, P)
            t2 = time.perf_counter()
            ac.zero_grad(set_to_none=True)
            times[name]["train"].append(t1 - t0)
            times[name]["no_grad"].append(t2 - t1)
            gc.collect()
    out = {
        "what": "one PPO micro-batch: training forward+backward and no-grad forward, LoRA, CPU",
        "model": args.model,
        "micro_batch": list(ids.shape),
        "torch_threads": torch.get_num_threads(),
        "reps": args.reps,
    }
    for name, ac in variants.items():
        trainable = sum(p.numel() for p in ac.parameters() if p.requires_grad)
        total = sum(p.numel() for p in ac.parameters())
        out[name] = {
            "train_s_median": statistics.median(times[name]["train"][1:]),
            "no_grad_s_median": statistics.median(times[name]["no_grad"][1:]),
            "trainable_params": trainable,
            "total_params": total,
            "weights_mib": total * 4 / 2**20,
        }
    out["separate_over_shared_train"] = out["separate"]["train_s_median"] / out["shared"]["train_s_median"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
