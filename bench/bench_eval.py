"""Time the evaluate stage with the default EvalConfig on the embedded default (SmolLM2-135M-Instruct), on CPU.

The candidate is a copy of the base policy and the reward model an untrained SmolLM2 head (the cost does not
depend on the weights): 40 held-out prompts x 2 samples x 2 models, 32 new tokens each, plus the candidate's KL
forward passes and reward-model scoring. Writes ``bench/results/eval_cpu.json``.

    python bench/bench_eval.py [--threads 2] [--max-prompts N]   (N: a quick partial run, no results file)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-prompts", type=int, default=None, help="evaluate on the first N prompts only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="bench-bentoml-"))

    from components.base_model import DEFAULT_SPEC, resolve_model_dir
    from components.config.evaluation import EvalConfig
    from components.config.model import ModelConfig
    from components.demo_task.seed import write_prompt_files
    from components.evaluation import evaluate
    from components.paths import ProjectPaths
    from components.reward.model import RewardModel, build_reward_model

    root = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    paths = ProjectPaths(root)
    write_prompt_files(paths)
    base = resolve_model_dir(DEFAULT_SPEC)
    model, tok = build_reward_model(DEFAULT_SPEC)
    RewardModel(model, tok).save(paths.reward_model)
    candidate = paths.policies / "bench"
    shutil.copytree(base, candidate)
    manifest = {
        "version": "bench",
        "base": DEFAULT_SPEC,
        "base_dir": str(base),
        "reward_model": {"spec": "models/reward"},
    }
    (candidate / "manifest.json").write_text(json.dumps(manifest))

    cfg = EvalConfig(max_prompts=args.max_prompts)
    t0 = time.perf_counter()

    def progress(done: int, total: int, note: str) -> None:
        print(f"{time.perf_counter() - t0:7.1f} s  {done}/{total} {note}", flush=True)

    result = evaluate(cfg, paths, model=ModelConfig(), candidate=candidate, demo_task=True, progress=progress)
    seconds = time.perf_counter() - t0
    out = {
        "what": "evaluate stage, default EvalConfig, SmolLM2-135M-Instruct candidate (a copy of the base) vs the base",
        "device": "cpu",
        "torch_threads": args.threads,
        "load_average_1min_at_end": os.getloadavg()[0],
        "prompts": result.prompts,
        "samples_per_prompt": result.samples_per_prompt,
        "replies_generated": 2 * result.prompts * result.samples_per_prompt,
        "seconds_total": round(seconds, 1),
        "win_rate_copy_vs_base": result.win_rate,
    }
    if args.max_prompts is None:
        Path("bench/results").mkdir(parents=True, exist_ok=True)
        Path("bench/results/eval_cpu.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
