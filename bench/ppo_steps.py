"""PPO throughput at params.yaml's defaults: a few steps of the real loop, timed per phase, one fresh process a run.

    python -m bench ppo_steps [--model smollm2-135m-instruct] [--steps 3]
    python -m bench ppo_steps --value-model shared separate --pairs 2    # what a separate value trunk costs
    python -m bench ppo_steps --model tiny --steps 2                     # quick mode (seconds)

Runs ``components.models.policy.train.run`` on the default params (section ``policy`` of params.yaml) with the VADER
stand-in reward, in a throwaway project folder, once per ``--value-model`` variant and pair, alternating, each
run in a fresh process (whatever device torch finds). Writes ``bench/results/ppo_throughput.json`` (or ``--out``):
per run samples/s, reply tokens/s, seconds per phase (rollout, forward, score, update), peak RSS, trainable and
total parameters; with two variants, the ratio of their seconds per step and per update phase. The first step
is reported but left out of the means (warm-up). Numbers, not assertions: nothing here is a test.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench import harness
from bench.prompts import PROMPTS

PHASES = ("time/rollout", "time/forward", "time/score", "time/update", "time/step")


def one_run(model_spec: str | None, steps: int, value_model: str | None, threads: int | None, work: Path) -> dict:
    """A PPO run of ``steps`` steps in project folder ``work``, summarised (the worker of one variant)."""
    threads = harness.set_threads(threads)
    from components.config import read_params
    from components.models.policy.train import run

    params = read_params(harness.REPO / "params.yaml")
    model = dict(params.get("model", {}))
    if model_spec:
        model["base"] = model_spec
    ppo = dict(params.get("policy", {}))
    ppo.update(steps=steps, reward_model="builtin:vader", prompts="prompts.jsonl", save_every=10_000)
    if value_model:
        ppo["value_model"] = value_model
    src = harness.REPO / "data" / "prompts" / "train.jsonl"
    lines = src.read_text() if src.is_file() else "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
    (work / "prompts.jsonl").write_text(lines)
    t0 = time.perf_counter()
    result = run({"model": model, "policy": ppo}, work, export=False)
    wall = time.perf_counter() - t0
    rows = result.metrics
    timed = rows[1:] or rows
    mean = {k: sum(r[k] for r in timed) / len(timed) for k in PHASES}
    tokens = sum(r["val/response_length"] * ppo.get("batch_size", 16) for r in timed)
    weights = list(result.actor_critic.parameters())
    return {
        "device": str(result.accelerator.device),
        "torch_threads": threads,
        "model": model.get("base"),
        "value_model": ppo.get("value_model"),
        "params": ppo,
        "steps": len(rows),
        "warmup_steps_excluded": len(rows) - len(timed),
        "samples_per_s": sum(r["charts/samples_per_s"] for r in timed) / len(timed),
        "reply_tokens_per_s": tokens / sum(r["time/step"] for r in timed),
        "seconds_per_step": mean["time/step"],
        "seconds_per_phase": {k.removeprefix("time/"): v for k, v in mean.items() if k != "time/step"},
        "mean_reply_tokens": sum(r["val/response_length"] for r in timed) / len(timed),
        "trainable_params": sum(p.numel() for p in weights if p.requires_grad),
        "total_params": sum(p.numel() for p in weights),
        "wall_seconds_including_load": wall,
        "per_step": [{k: r[k] for k in ("step", *PHASES, "objective/score", "objective/kl")} for r in rows],
    }


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="ppo_steps", out="ppo_throughput.json", model=None)
    ap.add_argument("--model", default=None, help="model spec or 'tiny' (default: params.yaml model.base)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--value-model", nargs="+", choices=["shared", "separate"], default=[None], help="one run per variant"
    )
    ap.add_argument("--pairs", type=int, default=1, help="rounds of the variants, alternating")
    args = ap.parse_args(argv)
    if args.worker:
        variant = None if args.worker == "default" else args.worker
        return harness.worker(args, lambda: one_run(args.model, args.steps, variant, args.threads, args.work))

    variants = [v or "default" for v in args.value_model]
    extra = ["--steps", str(args.steps)] + (["--model", args.model] if args.model else [])
    extra += ["--threads", str(args.threads)] if args.threads else []

    def show(run: dict) -> None:
        phases = ", ".join(f"{p} {v:.2f}" for p, v in run["seconds_per_phase"].items())
        print(f"  {run['samples_per_s']:.3f} samples/s, {run['seconds_per_step']:.2f} s/step ({phases})", flush=True)

    runs = []
    for pair in range(args.pairs):  # a fresh folder per run, so no run resumes another's checkpoints
        for variant in variants:
            with harness.workdir("ppo-steps") as tmp:
                runs += harness.alternate(
                    "ppo_steps", {variant: sys.executable}, Path(tmp), pairs=1, argv=lambda w, p: extra, after=show
                )
                runs[-1]["pair"] = pair
    record: dict = {
        "benchmark": "ppo_steps",
        "what": "PPO steps of components.models.policy (rollout + forward + score + PPO update), VADER stand-in reward",
        "model": runs[0]["model"],
        "steps_per_run": args.steps,
        "conditions": args.conditions,
        "runs": runs,
    }
    if len(variants) == 2:
        a, b = variants
        med = harness.median

        def ratio(key) -> float:
            return med([key(r) for r in runs if r["who"] == b]) / med([key(r) for r in runs if r["who"] == a])

        record[f"{b}_over_{a}_seconds_per_step"] = ratio(lambda r: r["seconds_per_step"])
        record[f"{b}_over_{a}_update_seconds"] = ratio(lambda r: r["seconds_per_phase"]["update"])
        print({k: round(v, 3) for k, v in record.items() if k.endswith("seconds_per_step") or k.endswith("_seconds")})
    harness.write_results(args.out, record)
