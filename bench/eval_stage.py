"""Time the evaluate stage with the default EvalConfig, on CPU.

    python -m bench eval_stage [--model smollm2-135m-instruct] [--threads 2]
    python -m bench eval_stage --model tiny --max-prompts 2 --out /tmp/eval.json    # quick check

The candidate is a copy of the base policy and the reward model the backbone with an untrained head (the cost
does not depend on the weights): the demo's 52 held-out prompts x 4 samples x 2 models, 32 new tokens each,
plus the candidate's KL to the base and reward-model scoring. Writes ``bench/results/eval_cpu.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from bench import harness


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="eval_stage", out="eval_cpu.json")
    ap.add_argument("--max-prompts", type=int, default=None, help="evaluate on the first N prompts only")
    args = ap.parse_args(argv)
    threads = harness.set_threads(args.threads or 2)
    with harness.workdir("eval") as tmp:
        os.environ.setdefault("BENTOML_HOME", str(Path(tmp) / "bentoml"))
        root = Path(tmp) / "project"
        result, seconds = _evaluate(root, args.model, args.max_prompts)
    record = {
        "benchmark": "eval_stage",
        "what": f"evaluate stage, default EvalConfig, {args.model} candidate (a copy of the base) vs the base",
        "device": "cpu",
        "torch_threads": threads,
        "conditions": args.conditions,
        "prompts": result.prompts,
        "samples_per_prompt": result.samples_per_prompt,
        "replies_generated": 2 * result.prompts * result.samples_per_prompt,
        "seconds_total": round(seconds, 1),
        "win_rate_copy_vs_base": result.win_rate,
    }
    harness.write_results(args.out, record)


def _evaluate(root: Path, spec: str, max_prompts: int | None):
    from components.config.evaluation import EvalConfig
    from components.config.model import ModelConfig
    from components.config.prompts import PromptsConfig
    from components.data.prompt_pool import build_pool
    from components.decide.evaluation import evaluate
    from components.demo_task.seed import write_prompt_files
    from components.models.base_model import resolve_model_dir
    from components.models.reward.model import RewardModel, build_reward_model
    from components.project.paths import ProjectPaths

    paths = ProjectPaths(root)
    write_prompt_files(paths)
    build_pool(PromptsConfig(), paths)  # the demo's prompts split train / held-out, as a project's pool is
    base = resolve_model_dir(spec)
    model, tok = build_reward_model(spec)
    RewardModel(model, tok).save(paths.reward_model)
    candidate = paths.policies / "bench"
    shutil.copytree(base, candidate)
    manifest = {"version": "bench", "base": spec, "base_dir": str(base), "reward_model": {"spec": "models/reward"}}
    (candidate / "manifest.json").write_text(json.dumps(manifest))
    t0 = time.perf_counter()

    def progress(done: int, total: int, note: str) -> None:
        print(f"{time.perf_counter() - t0:7.1f} s  {done}/{total} {note}", flush=True)

    cfg = EvalConfig(max_prompts=max_prompts)
    result = evaluate(cfg, paths, model=ModelConfig(base=spec), candidate=candidate, demo_task=True, progress=progress)
    return result, time.perf_counter() - t0
