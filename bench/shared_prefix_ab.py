"""A/B in ONE process, alternating: frozen passes with the common opening encoded once vs the full pass (CPU).

    python bench/shared_prefix_ab.py [--model smollm2-135m-instruct] [--reward models/reward] [--reps 3]

On the demo's configuration (train prompts, ``model.system_prompt``, 16 replies of up to 32 tokens sampled
from the base under bf16 autocast, as a PPO step has them):

1. the PPO reference pass: ``reply_logits`` in micro-batches of 8 vs ``reply_logits_shared``;
2. the reward model scoring the 16 replies (``RewardModel.raw_scores``, one batch of 16) vs the full pass
   (``encode`` + ``sequence_scores``), with a reward-model folder when given, else the backbone with a fresh
   head (the same arithmetic);
3. PPO's update on the 16 replies: two micro-batches of 8 through the LoRA policy and value head, forward +
   backward (``ActorCritic.forward`` with and without the opening once).

Each prints the median seconds of both paths and the largest difference on real reply tokens (log-probs) or
scores. Lines go to stdout; ``bench/results/shared_prefix_ab.json`` gets the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.base_model import load_base  # noqa: E402
from components.config import load_section  # noqa: E402
from components.config.model import ModelConfig  # noqa: E402
from components.demo_task import load_prompts  # noqa: E402
from components.generation import generate, reply_logits  # noqa: E402
from components.ppo import core  # noqa: E402
from components.precision import autocast  # noqa: E402
from components.reward.model import RewardModel, build_reward_model, encode, sequence_scores  # noqa: E402
from components.shared_prefix import reply_logits_shared  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reward", type=Path, default=None, help="a reward-model folder (default: fresh head)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "shared_prefix_ab.json")
    args = ap.parse_args()
    mcfg = load_section(ModelConfig, "model", REPO / "params.yaml")
    device = torch.device("cpu")
    model, tok = load_base(args.model, device=device)
    model.eval()
    prompts = [p["prompt"] for p in load_prompts("train")[:16]]
    with torch.no_grad(), autocast(device, True):
        gen = generate(model, tok, prompts, system=mcfg.system_prompt, max_new_tokens=32, temperature=0.7,
                       generator_seed=0)  # fmt: skip
    ids = torch.cat([gen.query_ids, gen.response_ids], dim=1)
    mask = torch.cat([gen.query_mask, gen.response_mask], dim=1)
    r = gen.response_ids.shape[1]
    real = gen.response_mask.bool()

    def ref_old() -> torch.Tensor:
        with torch.no_grad(), autocast(device, True):
            return torch.cat([reply_logits(model, ids[s : s + 8], mask[s : s + 8], r) for s in range(0, 16, 8)])

    def ref_new() -> torch.Tensor:
        with autocast(device, True):
            return torch.cat([reply_logits_shared(model, ids[s : s + 8], mask[s : s + 8], r) for s in range(0, 16, 8)])

    if args.reward is not None:
        rm = RewardModel.load(args.reward, device=device)
    else:
        rm_model, rm_tok = build_reward_model(args.model, seed=0)
        rm = RewardModel(rm_model, rm_tok)

    def rm_old() -> torch.Tensor:
        with torch.no_grad(), autocast(device, True):
            b = encode(rm.tok, prompts, gen.texts, rm.max_length)
            return sequence_scores(rm.model, b.input_ids, b.attention_mask).float()

    def rm_new() -> torch.Tensor:
        with autocast(device, True):
            return rm.raw_scores(prompts, gen.texts)

    results: dict[str, dict] = {}
    for name, old, new in (("ppo_reference_pass", ref_old, ref_new), ("reward_scoring_16", rm_old, rm_new)):
        old(), new()  # warm-up
        t_old, t_new = [], []
        for _ in range(args.reps):
            a, out_old = timed(old)
            b, out_new = timed(new)
            t_old.append(a)
            t_new.append(b)
        if name == "ppo_reference_pass":
            lp_old = core.logprobs_from_logits(out_old, gen.response_ids, 0.7)
            lp_new = core.logprobs_from_logits(out_new, gen.response_ids, 0.7)
            diff = (lp_old - lp_new)[real].abs().max().item()
        else:
            diff = (out_old - out_new).abs().max().item()
        results[name] = {
            "old_s": [round(x, 4) for x in t_old],
            "new_s": [round(x, 4) for x in t_new],
            "old_median_s": round(statistics.median(t_old), 4),
            "new_median_s": round(statistics.median(t_new), 4),
            "speedup": round(statistics.median(t_old) / statistics.median(t_new), 3),
            "max_abs_diff": diff,
        }
        print(name, json.dumps(results[name]), flush=True)
    # the noise floor: the full pass itself with another batch split (reference 4 x 4, scoring 2 x 8), and both
    # comparisons in float32, where only the order of the sums differs
    with torch.no_grad(), autocast(device, True):
        split4 = torch.cat([reply_logits(model, ids[s : s + 4], mask[s : s + 4], r) for s in range(0, 16, 4)])
        b8 = [encode(rm.tok, prompts[s : s + 8], gen.texts[s : s + 8], rm.max_length) for s in (0, 8)]
        rm8 = torch.cat([sequence_scores(rm.model, b.input_ids, b.attention_mask).float() for b in b8])
    lp = core.logprobs_from_logits(ref_old(), gen.response_ids, 0.7)
    results["ppo_reference_pass"]["full_pass_other_split_max_abs_diff"] = (
        (core.logprobs_from_logits(split4, gen.response_ids, 0.7) - lp)[real].abs().max().item()
    )
    results["reward_scoring_16"]["full_pass_other_split_max_abs_diff"] = (rm8 - rm_old()).abs().max().item()
    with torch.no_grad():
        f_old = torch.cat([reply_logits(model, ids[s : s + 8], mask[s : s + 8], r) for s in range(0, 16, 8)])
        f_new = torch.cat([reply_logits_shared(model, ids[s : s + 8], mask[s : s + 8], r) for s in range(0, 16, 8)])
        b = encode(rm.tok, prompts, gen.texts, rm.max_length)
        s_old = sequence_scores(rm.model, b.input_ids, b.attention_mask).float()
    s_new = rm.raw_scores(prompts, gen.texts)
    results["ppo_reference_pass"]["float32_max_abs_diff"] = (
        (
            core.logprobs_from_logits(f_old, gen.response_ids, 0.7)
            - core.logprobs_from_logits(f_new, gen.response_ids, 0.7)
        )[real]
        .abs()
        .max()
        .item()
    )
    results["reward_scoring_16"]["float32_max_abs_diff"] = (s_old - s_new).abs().max().item()
    # and what bf16 autocast itself changes (full pass, bf16 vs float32): the scale the above compare with
    results["ppo_reference_pass"]["full_pass_bf16_vs_float32_max_abs_diff"] = (
        (core.logprobs_from_logits(f_old, gen.response_ids, 0.7) - lp)[real].abs().max().item()
    )
    results["reward_scoring_16"]["full_pass_bf16_vs_float32_max_abs_diff"] = (s_old - rm_old()).abs().max().item()
    results["ppo_reference_pass"]["shared_bf16_vs_float32_max_abs_diff"] = (
        (
            core.logprobs_from_logits(f_old, gen.response_ids, 0.7)
            - core.logprobs_from_logits(ref_new(), gen.response_ids, 0.7)
        )[real]
        .abs()
        .max()
        .item()
    )
    results["reward_scoring_16"]["shared_bf16_vs_float32_max_abs_diff"] = (s_old - rm_new()).abs().max().item()
    for name, row in results.items():
        print(name, "noise floor", {k: v for k, v in row.items() if "diff" in k}, flush=True)
    # 3. PPO's update: one micro-batch of 8 (policy with LoRA + value head, forward + backward), bf16 autocast
    import copy

    import components.policy.model as ppo_trainer
    from components.config.policy import PolicyConfig

    pcfg = load_section(PolicyConfig, "policy", REPO / "params.yaml")
    ac, _ = ppo_trainer.build_actor_critic(pcfg, copy.deepcopy(model))
    plain = ppo_trainer.causal_lm_after_opening
    ctx = gen.query_ids.shape[1]

    def update(shared: bool) -> tuple[float, torch.Tensor]:
        ppo_trainer.causal_lm_after_opening = plain if shared else (lambda *a, **k: None)
        try:
            t0 = time.perf_counter()
            logps = []
            for s0 in (0, 8):
                ac.zero_grad(set_to_none=True)
                with autocast(device, True):
                    logits, values = ac(ids[s0 : s0 + 8], mask[s0 : s0 + 8], ctx)
                    logp = core.logprobs_from_logits(logits, gen.response_ids[s0 : s0 + 8], 0.7)
                    loss = ((logp + values.float()) * gen.response_mask[s0 : s0 + 8]).sum()
                loss.backward()
                logps.append(logp.detach())
            return time.perf_counter() - t0, torch.cat(logps)
        finally:
            ppo_trainer.causal_lm_after_opening = plain

    update(True), update(False)  # warm-up
    t_old, t_new = [], []
    for _ in range(args.reps):
        a, lp_full = update(False)
        b, lp_fast = update(True)
        t_old.append(a)
        t_new.append(b)
    results["ppo_update_16_replies"] = {
        "old_s": [round(x, 4) for x in t_old],
        "new_s": [round(x, 4) for x in t_new],
        "old_median_s": round(statistics.median(t_old), 4),
        "new_median_s": round(statistics.median(t_new), 4),
        "speedup": round(statistics.median(t_old) / statistics.median(t_new), 3),
        "max_abs_diff": (lp_full - lp_fast)[real].abs().max().item(),
    }
    print("ppo_update_16_replies", json.dumps(results["ppo_update_16_replies"]), flush=True)
    opening = [{"role": "system", "content": mcfg.system_prompt}, {"role": "user", "content": "x"}]
    shared = len(tok(tok.apply_chat_template(opening, tokenize=False))["input_ids"])
    record = {
        "model": args.model,
        "reward": str(args.reward) if args.reward else "fresh head",
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "sequence_tokens_mean": round(mask.float().sum(1).mean().item(), 1),
        "system_turn_tokens_about": shared,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in record.items() if k != "results"}))


if __name__ == "__main__":
    main()
