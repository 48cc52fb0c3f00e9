"""How much evidence the demo's evaluation gathers: the win rate's 95 % half-width by held-out fraction and
samples per prompt, measured as an A/A check on the real default model, and what the sampling costs.

The demo's held-out prompts are the bundled prompts that ``prompts.heldout_fraction`` holds out by hash (raising
the fraction only adds prompts). For the largest fraction asked, the base model samples ``--samples`` seeded replies
per held-out prompt as the evaluate stage does (``components.decide.evaluation._sample_and_score``: bf16 autocast,
the reward model's score of every reply, the KL to a reference for the candidate side); the demo judge compares
sample 2i with sample 2i+1 (A/A: the truth is 50 %, and the interval is widest near 50 %). For each fraction and
each number of comparisons per prompt the script reports the A/A win rate with its prompt-bootstrap interval
(``components.decide.eval_stats.win_rate_interval``) and the evaluate stage's sampling time for that size (both models:
the candidate side with its KL, the champion side without).

    python -m bench eval_evidence [--fractions 0.1 0.15 0.2] [--samples 8]   # bench/results/eval_evidence.json
    python -m bench eval_evidence --model tiny --fractions 0.05 --samples 2 --out /tmp/e.json   # quick check
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from bench import harness


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="eval_evidence", out="eval_evidence.json")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.15, 0.2], help="prompts.heldout_fraction")
    ap.add_argument("--samples", type=int, default=8, help="replies per prompt (A/A pairs: samples / 2)")
    args = ap.parse_args(argv)
    threads = harness.set_threads(args.threads)
    record = {"benchmark": "eval_evidence", "conditions": args.conditions, "torch_threads": threads, **_measure(args)}
    harness.write_results(args.out, record)


def _measure(args) -> dict:
    import numpy as np
    import torch

    from components.config.evaluation import EvalConfig
    from components.config.model import ModelConfig
    from components.data.prompt_pool import is_heldout
    from components.decide.eval_stats import win_rate_interval
    from components.decide.evaluation import _sample_and_score
    from components.decide.judges.demo import DemoJudge
    from components.demo_task import load_prompts
    from components.models.base_model import load_base, resolve_model_dir
    from components.models.precision import autocast
    from components.models.reward.model import RewardModel, build_reward_model

    torch.manual_seed(0)
    model_cfg = ModelConfig(base=args.model)
    cfg = replace(EvalConfig(), samples_per_prompt=args.samples)
    prompts_by_f = {f: [p["prompt"] for p in load_prompts() if is_heldout(p["prompt"], f)] for f in args.fractions}
    prompts = prompts_by_f[max(args.fractions)]
    policy, tok = load_base(str(resolve_model_dir(model_cfg.base)), dtype=model_cfg.dtype, device="cpu")
    rm_model, rm_tok = build_reward_model(model_cfg.base)
    rm = RewardModel(rm_model, rm_tok, bf16=True)  # an untrained head costs what a trained one does

    with autocast(torch.device("cpu"), cfg.bf16):
        t0 = time.perf_counter()
        champ = _sample_and_score(policy, None, tok, prompts, rm.score, cfg, model_cfg.system_prompt, lambda: None)
        champ_s = time.perf_counter() - t0
        one = replace(cfg, samples_per_prompt=1)
        t0 = time.perf_counter()
        _sample_and_score(policy, policy, tok, prompts, rm.score, one, model_cfg.system_prompt, lambda: None)
        cand_s = time.perf_counter() - t0  # one sample per prompt, with the KL to the reference

    judge = DemoJudge(demo_task=True)
    scores = np.array([judge.scores(prompts, texts) for texts in champ.texts]).T  # shape: (P, K)
    per_reply_champ = champ_s / (len(prompts) * args.samples)
    per_reply_cand = cand_s / len(prompts)
    rows = []
    for f, subset in prompts_by_f.items():
        idx = [prompts.index(p) for p in subset]
        a, b = scores[idx, 0::2], scores[idx, 1::2]  # shape: (P_f, K/2)
        outcomes = np.where(np.isclose(a, b), 0.5, (a > b).astype(float))
        for k in range(1, outcomes.shape[1] + 1):
            rate, low, high = win_rate_interval(outcomes[:, :k], confidence=cfg.confidence, seed=cfg.seed + 1)
            sampling = len(subset) * k * (per_reply_champ + per_reply_cand)
            rows.append({
                "heldout_fraction": f, "prompts": len(subset), "comparisons_per_prompt": k,
                "aa_win_rate": round(rate, 4), "low": round(low, 4), "high": round(high, 4),
                "half_width": round((high - low) / 2, 4), "eval_sampling_s": round(sampling, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]))
    return {
        "what": "A/A win rate (sample 2i vs 2i+1 of the base, demo judge) by held-out fraction and comparisons per "
        "prompt; eval_sampling_s: the evaluate stage's sampling + scoring for that size, both models",
        "model": model_cfg.base, "samples": args.samples, "max_new_tokens": cfg.max_new_tokens,
        "champion_side_s_per_reply": round(per_reply_champ, 4), "candidate_side_s_per_reply": round(per_reply_cand, 4),
        "rows": rows,
    }  # fmt: skip


if __name__ == "__main__":
    main()
