"""How well a few sampled replies measure a policy's KL to its reference: the summed k1 log-ratio of the sampled
tokens against the exact KL of the next-token distributions summed along the same replies.

A candidate policy (a folder: a round's exported policy) samples ``--replies`` seeded replies to each of
``--prompts`` training prompts (``--prompt-file``, default the project's ``data/prompts/train.jsonl``) at
``--temperature``, as the evaluate stage samples (``components.models.generation.generate``, bf16 autocast where
the CPU has it); each reply's KL to the reference (default: the folder its manifest names as ``base_dir``, the
policy it was trained from) is computed both ways with the evaluation's own function
(``components.decide.evaluation.sequence_kl``, ``estimator="k1"`` and ``"exact"``). Reported per estimator: the
mean, median, 90th percentile and maximum per reply, the standard deviation per reply, the variance within a
prompt and of the prompts' means, and the spread of a KL bound's measurement: one reply to each of ``--bound``
prompts (the DPO bound's ``kl_prompts``), drawn ``--draws`` times from the replies sampled here.

    python -m bench kl_estimators --project demo --candidate ~/bentoml/models/rlhf-policy/VERSION
    python -m bench kl_estimators --model tiny --candidate tiny --prompts 4 --replies 2 --out k.json  # quick
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench import harness


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="kl_estimators", out="kl_estimators.json")
    ap.add_argument("--candidate", required=True, help="the policy's folder ('tiny': a random tiny model)")
    ap.add_argument("--reference", default=None, help="the reference's folder (default: the manifest's base_dir)")
    ap.add_argument("--project", type=Path, default=Path("."), help="project for the prompts and params.yaml")
    ap.add_argument("--prompt-file", type=Path, default=None, help="prompts (default: data/prompts/train.jsonl)")
    ap.add_argument("--prompts", type=int, default=64, help="distinct prompts drawn (without replacement)")
    ap.add_argument("--replies", type=int, default=8, help="seeded replies per prompt")
    ap.add_argument("--bound", type=int, default=16, help="prompts of one bound measurement (one reply each)")
    ap.add_argument("--draws", type=int, default=4000, help="bound measurements drawn from the replies")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)
    threads = harness.set_threads(args.threads)
    record = {"benchmark": "kl_estimators", "conditions": args.conditions, "torch_threads": threads, **_measure(args)}
    harness.write_results(args.out, record)


def _models(args):
    import torch

    from components.config.loading import load_section
    from components.config.model import ModelConfig

    if args.candidate == "tiny":  # two random tiny models: a KL well away from 0 (the quick check)
        from components.models.base_model import build_tiny

        policy, tok = build_tiny(seed=0)
        return policy, build_tiny(seed=1)[0], tok, "You are a support agent.", [f"question {i}?" for i in range(64)]
    from components.decide.evaluation import model_loader, read_prompt_file

    params = args.project / "params.yaml"
    model_cfg = load_section(ModelConfig, "model", params) if params.is_file() else ModelConfig(base=args.model)
    load = model_loader(model_cfg, torch.device("cpu"))
    candidate = Path(args.candidate)
    reference = args.reference or json.loads((candidate / "manifest.json").read_text())["base_dir"]
    policy, tok = load(candidate)
    ref, _ = load(Path(reference))
    prompts = read_prompt_file(args.prompt_file or args.project / "data/prompts/train.jsonl")
    return policy, ref, tok, model_cfg.system_prompt, prompts


def _measure(args) -> dict:
    import numpy as np
    import torch

    from components.decide.evaluation import sequence_kl
    from components.models.generation import generate
    from components.models.precision import autocast

    policy, ref, tok, system, pool = _models(args)
    rng = np.random.default_rng(args.seed)
    prompts = [pool[i] for i in rng.choice(len(pool), size=min(args.prompts, len(pool)), replace=False)]
    per = {"k1": [], "exact": []}
    t0 = time.perf_counter()
    for s in range(0, len(prompts), 16):
        with autocast(torch.device("cpu"), True), torch.no_grad():
            gen = generate(policy, tok, prompts[s : s + 16], system=system, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, generator_seed=args.seed + s,
                           samples_per_prompt=args.replies, return_internals=True)  # fmt: skip
            kl_args = (gen.query_ids, gen.query_mask, gen.response_ids, gen.response_mask, args.temperature)
            for name in per:
                per[name].append(sequence_kl(policy, ref, *kl_args, policy_logits=gen.logits, estimator=name).float())
    seconds = time.perf_counter() - t0
    rows = {}
    for name, parts in per.items():
        v = torch.cat(parts).view(len(prompts), args.replies).numpy()  # shape: (P, K), prompt-major
        draws = np.random.default_rng(0)
        bound = np.array([
            v[draws.choice(len(prompts), args.bound, replace=False), draws.integers(0, args.replies, args.bound)].mean()
            for _ in range(args.draws)
        ])  # fmt: skip
        flat = v.ravel()
        rows[name] = {
            "mean": round(float(flat.mean()), 3), "median": round(float(np.median(flat)), 3),
            "p90": round(float(np.quantile(flat, 0.9)), 3), "max": round(float(flat.max()), 3),
            "sd_per_reply": round(float(flat.std(ddof=1)), 3),
            "var_within_prompt": round(float(v.var(1, ddof=1).mean()), 3),
            "var_of_prompt_means": round(float(v.mean(1).var(ddof=1)), 3),
            f"bound_{args.bound}x1_sd": round(float(bound.std()), 3),
            f"bound_{args.bound}x1_p10": round(float(np.quantile(bound, 0.1)), 3),
            f"bound_{args.bound}x1_p90": round(float(np.quantile(bound, 0.9)), 3),
            f"bound_{args.bound}x1_under_by_1nat": round(float((bound < flat.mean() - 1).mean()), 4),
        }  # fmt: skip
        print(name, json.dumps(rows[name]))
    return {
        "what": "KL per reply of a candidate to its reference, k1 (sampled tokens) against exact (next-token "
        "distributions), on the same replies; bound_*: one reply to each of --bound prompts, resampled",
        "candidate": Path(args.candidate).name,  # the version, not where this machine keeps it
        "prompts": len(prompts), "replies_per_prompt": args.replies,
        "temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "sampling_and_kl_s": round(seconds, 1),
        "estimators": rows,
    }  # fmt: skip


if __name__ == "__main__":
    main()
