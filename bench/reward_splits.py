"""Reward-model accuracy you can trust: held-out accuracy averaged over several prompt splits.

    python -m bench reward_splits [--splits 3] [--heldout 100] [--variants params prompts_400 ...]
    python -m bench reward_splits --model tiny --splits 1 --heldout 8 --replies 2 --out /tmp/s.json  # quick check

1. Sample ``--replies`` (6) replies at the seed temperature for every train prompt of the demo task from the
   base policy (once; cached), and score them with the gold annotator.
2. For each split s: a seeded random ``--heldout`` of those prompts is held out. Its evaluation pairs are the
   gold annotator's best vs worst of the 6 replies (the demo's seed labelling), the same for every variant.
3. Each variant trains a reward model on pairs from the other prompts and is scored on the held-out pairs:
   accuracy with its Wilson interval; with ``--rank`` also the accuracy over *all* pairs of a held-out
   prompt's replies whose gold gap is at least ``seeding.min_gold_gap``, and the gold score of the reward
   model's pick among the 6 (best-of-6 with the reward model; the mean and the gold annotator's own pick
   for scale).
4. Per variant: the mean accuracy over splits with a 95 % interval over splits, and the pooled accuracy.

A variant is ``params`` (the defaults of params.yaml: ``data`` and ``reward`` sections) with overrides,
``seeding.<key>`` or ``reward.<key>``; ``seeding.seed_prompts`` is capped at the prompts outside the held-out
split, and ``seeding.replies_per_prompt`` <= 6 uses the first replies of each prompt. Results JSON (``--out``,
default bench/results/reward_splits.json) has the ``params`` variant's figure under ``mean_accuracy``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from bench import harness
from bench.align_common import DEFAULT_CACHE, cached, device_name, gold_scores, log, sample_replies, setup, write_json
from components.config import load_section, to_dict
from components.config.model import ModelConfig
from components.config.reward import RewardConfig
from components.config.seeding import SeedingConfig
from components.decide.stats import mean_interval, wilson_interval
from components.demo_task import load_prompts
from components.demo_task.seed import label_pairs
from components.models.base_model import load_base
from components.models.reward.losses import preference_accuracy
from components.models.reward.model import RewardModel
from components.models.reward.pairs import Pairs
from components.models.reward.trainer import fit_reward_model, score_pairs

VARIANTS: dict[str, dict[str, object]] = {
    "params": {},
    # more and more varied prompts: all 400 train prompts (capped at those outside the held-out split)
    "prompts_400": {"seeding.seed_prompts": 400},
    # the same number of sampled replies as params (~960), spread over twice the prompts
    "prompts_400_k3": {"seeding.seed_prompts": 400, "seeding.replies_per_prompt": 3},
    "prompts_400_k3_e2": {"seeding.seed_prompts": 400, "seeding.replies_per_prompt": 3, "reward.epochs": 2},
    "prompts_400_e2": {"seeding.seed_prompts": 400, "reward.epochs": 2},
    "early_stop": {"reward.val_fraction": 0.2, "reward.epochs": 4},
    "average_3": {"reward.average_epochs": 3},
    "layers_2": {"reward.train_layers": 2},
    "layers_8": {"reward.train_layers": 8},
    "weight_decay": {"reward.weight_decay": 0.1},
    "lr_1e-4": {"reward.lr": 1.0e-4},
    "pairs_1": {"seeding.pairs_per_prompt": 1},  # the default before 2 pairs per prompt (measured as "params")
    "pairs_2": {"seeding.pairs_per_prompt": 2},
    "no_margin": {"reward.use_margin": False},
}


def _pairs(frame) -> Pairs:
    margins = frame["margin"].fillna(0.0).astype(float).tolist() if "margin" in frame else [0.0] * len(frame)
    return Pairs(frame["prompt"].tolist(), frame["chosen"].tolist(), frame["rejected"].tolist(), margins)


def _split_overrides(overrides: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    data, reward = {}, {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        {"seeding": data, "reward": reward}[section][name] = value
    return data, reward


@torch.no_grad()
def rank_metrics(
    rm: RewardModel, prompts: list[str], replies: list[list[str]], golds: list[list[float]], min_gap: float
) -> dict[str, float]:
    """How the reward model orders all replies of each held-out prompt, against the gold annotator."""
    flat_p = [p for p, rs in zip(prompts, replies) for _ in rs]
    flat_r = [r for rs in replies for r in rs]
    scores = rm.raw_scores(flat_p, flat_r, batch_size=64).tolist()
    concordant = total = 0
    picked, oracle, mean = [], [], []
    i = 0
    for gs in golds:
        s = scores[i : i + len(gs)]
        i += len(gs)
        for a in range(len(gs)):
            for b in range(a + 1, len(gs)):
                if abs(gs[a] - gs[b]) >= min_gap:
                    total += 1
                    concordant += (s[a] - s[b]) * (gs[a] - gs[b]) > 0
        picked.append(gs[int(np.argmax(s))])
        oracle.append(max(gs))
        mean.append(float(np.mean(gs)))
    return {
        "all_pairs_accuracy": round(concordant / max(total, 1), 4),
        "all_pairs": total,
        "gold_rm_pick": round(float(np.mean(picked)), 4),
        "gold_mean": round(float(np.mean(mean)), 4),
        "gold_oracle_pick": round(float(np.mean(oracle)), 4),
    }


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="reward_splits", out="reward_splits.json", model=None)
    ap.add_argument("--model", default=None, help="policy and reward backbone (default: the params file's)")
    ap.add_argument("--params", type=Path, default=harness.REPO / "params.yaml")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--heldout", type=int, default=100, help="held-out prompts (= pairs) per split")
    ap.add_argument("--replies", type=int, default=6, help="replies sampled per prompt for the pool")
    ap.add_argument("--variants", nargs="*", default=["params"], help=f"from: {', '.join(VARIANTS)}")
    ap.add_argument("--rank", action="store_true", help="also rank all replies of the held-out prompts")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--fresh", action="store_true", help="resample the reply pool")
    args = ap.parse_args(argv)
    device = setup(args.threads or 0)
    model_cfg = load_section(ModelConfig, "model", args.params)
    data_cfg = load_section(SeedingConfig, "seeding", args.params)
    reward_cfg = load_section(RewardConfig, "reward", args.params)
    if args.model:
        model_cfg = dataclasses.replace(model_cfg, base=args.model)
        reward_cfg = dataclasses.replace(reward_cfg, backbone=args.model)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")

    # 1. the reply pool (base policy, seed temperature), gold-scored
    prompts = [p["prompt"] for p in load_prompts("train")]
    batch = 384 if device.type == "cuda" else data_cfg.batch_size

    def make_pool() -> dict:
        model, tok = load_base(model_cfg.base, dtype=model_cfg.dtype)
        model.to(device)
        replies = sample_replies(
            model, tok, prompts, args.replies, system=model_cfg.system_prompt, temperature=data_cfg.temperature,
            max_new_tokens=data_cfg.max_new_tokens, seed=data_cfg.seed, batch_size=batch,
        )  # fmt: skip
        return {"prompts": prompts, "replies": replies, "temperature": data_cfg.temperature}

    tag = f"_{args.model.replace('/', '_')}" if args.model else ""  # the params file's model: no tag
    name = f"pool_train{tag}_k{args.replies}_t{data_cfg.temperature}.json"
    pool = cached(args.cache / name, make_pool, args.fresh)
    if pool["prompts"] != prompts:
        raise SystemExit(f"{args.cache}: the cached pool is for other prompts; rerun with --fresh")
    replies = pool["replies"]
    golds = gold_scores(prompts, replies)
    index = {p: i for i, p in enumerate(prompts)}

    report: dict = {
        "device": device_name(device),
        "model": model_cfg.base,
        "conditions": {
            "pool": f"{args.replies} base-policy replies per train prompt at temperature {data_cfg.temperature}, "
            f"up to {data_cfg.max_new_tokens} tokens",
            "heldout_pairs": "gold best vs worst of the 6 replies of each held-out prompt (same for every variant)",
            "train_prompts_available": len(prompts) - args.heldout,
        },
        "splits": args.splits,
        "heldout_per_split": args.heldout,
        "params": {"data": to_dict(data_cfg), "reward": to_dict(reward_cfg)},
        "variants": {},
    }
    eval_cfg = dataclasses.replace(data_cfg, replies_per_prompt=args.replies, pairs_per_prompt=1)
    for name in args.variants:
        data_over, reward_over = _split_overrides(VARIANTS[name])
        dcfg = dataclasses.replace(data_cfg, **data_over)
        rcfg = dataclasses.replace(reward_cfg, **reward_over)
        per_split = []
        for s in range(args.splits):
            order = np.random.default_rng(1000 + s).permutation(len(prompts))
            held = [prompts[i] for i in order[: args.heldout]]
            rest = [prompts[i] for i in order[args.heldout :]]
            n_train = min(round(dcfg.seed_prompts * (1 - rcfg.eval_fraction)), len(rest))
            train_prompts = rest[:n_train]
            k = dcfg.replies_per_prompt
            train_frame, train_stats = label_pairs(train_prompts, [replies[index[p]][:k] for p in train_prompts], dcfg)
            held_frame, _ = label_pairs(held, [replies[index[p]] for p in held], eval_cfg)
            train, held_pairs = _pairs(train_frame), _pairs(held_frame)
            t0 = time.perf_counter()
            step_log = args.cache / "steps" / f"{name}_{s}.jsonl"
            step_log.parent.mkdir(parents=True, exist_ok=True)
            model, tok, fit = fit_reward_model(train, rcfg, step_log, device=device)
            seconds = time.perf_counter() - t0
            r_c, r_r = score_pairs(model, tok, held_pairs, rcfg, desc="held-out")
            correct = round(preference_accuracy(r_c, r_r).item() * len(held_pairs))
            acc = wilson_interval(correct, len(held_pairs))
            row = {
                "split": s,
                "train_prompts": len(train_prompts),
                "train_pairs": len(train),
                "sampled_replies": len(train_prompts) * k,
                "train_mean_gold_gap": train_stats["mean_gold_gap"],
                "heldout_pairs": len(held_pairs),
                "accuracy": acc.as_dict(),
                "train_steps": fit["steps"],
                "train_seconds": round(seconds, 1),
                "last_epoch_train_accuracy": fit["last_epoch_accuracy"],
                **{k2: fit[k2] for k2 in ("best_step", "averaged_epochs") if k2 in fit},
            }
            if args.rank:
                rm = RewardModel(model, tok, max_length=rcfg.max_length)
                row["rank"] = rank_metrics(
                    rm, held, [replies[index[p]] for p in held], [golds[index[p]] for p in held], data_cfg.min_gold_gap
                )
            log.info("variant %s split %d: accuracy %.3f (%s)", name, s, acc.value, row.get("rank", ""))
            per_split.append(row)
            del model
        accs = [r["accuracy"]["value"] for r in per_split]
        pooled = wilson_interval(
            sum(round(r["accuracy"]["value"] * r["heldout_pairs"]) for r in per_split),
            sum(r["heldout_pairs"] for r in per_split),
        )
        summary = {
            "overrides": VARIANTS[name],
            "mean_accuracy": round(float(np.mean(accs)), 4),
            "interval_over_splits": mean_interval(accs).as_dict(),
            "pooled": pooled.as_dict(),
            "mean_train_seconds": round(float(np.mean([r["train_seconds"] for r in per_split])), 1),
            "per_split": per_split,
        }
        if args.rank:
            for key in ("all_pairs_accuracy", "gold_rm_pick", "gold_mean", "gold_oracle_pick"):
                summary[f"mean_{key}"] = round(float(np.mean([r["rank"][key] for r in per_split])), 4)
        report["variants"][name] = summary
        log.info("variant %s: mean accuracy %.3f over %d splits", name, summary["mean_accuracy"], args.splits)
        mean = report["variants"].get("params", {}).get("mean_accuracy")
        write_json(args.out, {**report, **harness.context(), "run_conditions": args.conditions, "mean_accuracy": mean})
