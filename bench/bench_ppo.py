"""PPO throughput on CPU (or whatever device torch finds): a few steps of the real loop, timed per phase.

    python bench/bench_ppo.py [--model smollm2-135m-instruct] [--steps 3] [--value-model shared|separate]

Runs ``components.ppo`` on the default params (section ``ppo`` of params.yaml) with the VADER stand-in
reward, in a throwaway project folder, and writes ``bench/results/ppo_throughput.json`` (or ``--out``):
samples/s, reply tokens/s, seconds per phase (rollout, forward, score, update), peak memory. The first
step is reported but left out of the means (warm-up). Numbers, not assertions: nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.prompts import PROMPTS  # noqa: E402
from components.config import read_params  # noqa: E402
from components.ppo.train import run  # noqa: E402

PHASES = ("time/rollout", "time/forward", "time/score", "time/update", "time/step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model spec (default: params.yaml model.base)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--value-model", choices=["shared", "separate"], default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ppo_throughput.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = read_params(REPO / "params.yaml")
    model = dict(params.get("model", {}))
    if args.model:
        model["base"] = args.model
    ppo = dict(params.get("policy", {}))
    ppo.update(steps=args.steps, reward_model="builtin:vader", prompts="prompts.jsonl", save_every=10_000)
    if args.value_model:
        ppo["value_model"] = args.value_model
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = REPO / "data" / "prompts" / "train.jsonl"
        lines = src.read_text() if src.is_file() else "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
        (root / "prompts.jsonl").write_text(lines)
        t0 = time.perf_counter()
        result = run({"model": model, "policy": ppo}, root, export=False)
        wall = time.perf_counter() - t0
    rows = result.metrics
    timed = rows[1:] or rows
    mean = {k: sum(r[k] for r in timed) / len(timed) for k in PHASES}
    tokens = sum(r["val/response_length"] * ppo.get("batch_size", 16) for r in timed)
    out = {
        "what": "PPO steps of components.ppo (rollout + forward + score + PPO update), VADER stand-in reward",
        "device": str(result.accelerator.device),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "model": model.get("base"),
        "params": ppo,
        "steps": len(rows),
        "warmup_steps_excluded": len(rows) - len(timed),
        "samples_per_s": sum(r["charts/samples_per_s"] for r in timed) / len(timed),
        "reply_tokens_per_s": tokens / sum(r["time/step"] for r in timed),
        "seconds_per_step": mean["time/step"],
        "seconds_per_phase": {k.removeprefix("time/"): v for k, v in mean.items() if k != "time/step"},
        "mean_reply_tokens": sum(r["val/response_length"] for r in timed) / len(timed),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "wall_seconds_including_load": wall,
        "per_step": [{k: r[k] for k in ("step", *PHASES, "objective/score", "objective/kl")} for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k not in ("per_step", "params")}, indent=2))


if __name__ == "__main__":
    main()
