"""Gold score against KL for best-of-n and for every policy optimiser (PPO, RLOO, GRPO, DPO, online DPO,
best-of-n distillation), the gold win rate against the base, and the reward model's normalisation on the
policy's own rollouts.

Usage: python bench/alignment.py [--samples 16] [--k 4] [--ppo RECIPE ...] [--seeds 0 1 2]
                                 [--ppo-set KEY=VALUE ...] [--reward-set KEY=VALUE ...]
       python bench/alignment.py --ppo ppo rloo grpo dpo online_dpo bon_sft --tag algorithms

1. Reward model: trained as the demo trains it (params.yaml ``data`` + ``reward``: the first
   ``seeding.seed_prompts`` train prompts, best vs worst of ``seeding.replies_per_prompt`` base replies, the
   ``reward.eval_fraction`` held out), from the reply pool ``reward_splits.py`` caches (sampled if missing).
2. Base samples on the 40 held-out prompts at PPO's temperature and reply budget: ``--samples`` (16) for
   best-of-n and ``--refs`` (8) more as the baseline of the win rate; all scored by the reward model
   (normalised, as PPO sees it) and the gold annotator.
3. Normalisation (Ziegler et al. 2019 normalise on the policy's own samples): mean and std of the reward
   model's normalised score on base replies to train prompts at PPO's temperature (PPO's step-0 rollouts),
   against the seed replies (temperature ``seeding.temperature``) the stored statistics came from.
4. Best-of-n with the reward model for n = 1, 2, 4, 8, 16: the unbiased estimate over the 16 samples of the
   gold score, the reward-model score and the win rate against a base sample; KL = log n - (n-1)/n. The same
   with the gold annotator choosing (an upper bound).
5. Policy runs: one per ``--ppo`` recipe (params.yaml ``policy`` with the recipe's overrides, ``algorithm``
   included) and ``--seeds`` training seed (``policy.seed``), each trained by the product's own
   ``PolicyTrainer`` and evaluated at ``--eval-steps`` and the last step with the same evaluation seeds:
   ``--k`` samples per held-out prompt, gold and reward-model score, the KL to the base (summed k1 log-ratio
   per reply at the sampling temperature, as the KL controller measures it), and the gold win rate against
   the base's reference samples (ties half, 95 % interval over prompts); the training time per step beside it.
   Offline DPO trains on the reward model's own pairs (the demo's seed pairs), as the demo's stage would.
6. Results JSON (``--out``) and a PNG of gold and reward-model score against KL.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from align_common import DEFAULT_CACHE, cached, device_name, gold_scores, log, sample_replies, setup, write_json

from components.config import from_dict, load_section, to_dict
from components.config.model import ModelConfig
from components.config.policy import PolicyConfig
from components.config.reward import RewardConfig
from components.config.seeding import SeedingConfig
from components.decide.eval_stats import pairwise_outcomes, win_rate_interval
from components.decide.evaluation import sequence_kl
from components.decide.stats import best_of_n_kl, best_of_n_weights
from components.demo_task import load_prompts
from components.demo_task.seed import label_pairs
from components.models.base_model import load_base
from components.models.generation import generate
from components.models.policy.loop import PolicyTrainer as PPOTrainer
from components.models.reward.model import RewardModel
from components.models.reward.trainer import train_reward
from components.project.paths import ProjectPaths

PPO_VARIANTS: dict[str, dict[str, object]] = {
    # params.yaml's policy section with these overrides; dotted keys reach an algorithm's own section
    "default": {},
    "ppo": {"algorithm": "ppo"},
    "rloo": {"algorithm": "rloo"},
    "rloo_k8": {"algorithm": "rloo", "rloo.k": 8},
    "rloo_k4_epochs2": {"algorithm": "rloo", "rloo.epochs": 2},
    "grpo": {"algorithm": "grpo"},
    "dr_grpo": {"algorithm": "grpo", "grpo.variant": "dr_grpo"},
    "dpo": {"algorithm": "dpo"},
    "dpo_steps_48": {"algorithm": "dpo", "steps": 48},
    "ipo": {"algorithm": "dpo", "dpo.loss": "ipo"},
    # replies cut at the seeding's 32-token cap keep no EOS (a reply the sampler cut did not end there)
    "dpo_cut32": {"algorithm": "dpo", "dpo.max_reply_tokens": 32},
    # RPO: DPO plus the chosen replies' NLL (the seed's chosen replies are the gold annotator's best of 6)
    "rpo_cut32": {"algorithm": "dpo", "dpo.max_reply_tokens": 32, "dpo.rpo_alpha": 1.0},
    # one optimizer update per step's 8 pairs instead of two of 4 (the same compute, half the updates' noise)
    "dpo_mb16": {"algorithm": "dpo", "mini_batch_size": 16},
    # a larger beta saturates the loss of pairs already separated, so later updates go to the pairs not yet learned
    "dpo_beta_0.5": {"algorithm": "dpo", "dpo.beta": 0.5},
    "online_dpo": {"algorithm": "online_dpo"},
    "bon_sft": {"algorithm": "bon_sft"},
    "bon_sft_n16": {"algorithm": "bon_sft", "bon_sft.n": 16, "batch_size": 64, "steps": 8},
    # the same n with 4x the distinct prompts per step (16 of them, 128 in a run): 4 minibatches of 8 best replies
    "bon_sft_n16_wide": {"algorithm": "bon_sft", "bon_sft.n": 16, "batch_size": 256, "steps": 8},
    "bon_sft_n8_wide": {"algorithm": "bon_sft", "bon_sft.n": 8, "batch_size": 128, "steps": 8},
    "norm_rollouts": {"norm": "rollouts"},
    "steps_32": {"steps": 32},
    "kl_target_8": {"kl_target": 8.0},
    "lr_1e-3": {"learning_rate": 1.0e-3},
    "tokens_48": {"max_new_tokens": 48},
    "eos_penalty_1": {"missing_eos_penalty": 1.0},
    "no_eos_penalty": {"missing_eos_penalty": 0.0},
    "beta_0.2": {"init_kl_coef": 0.2},
}


class NormalisedScorer:
    """A reward model re-normalised with other statistics: ``(raw - mean) / std``."""

    def __init__(self, rm: RewardModel, mean: float, std: float) -> None:
        self.rm, self.mean, self.std = rm, mean, std

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return (self.rm.raw_scores(prompts, responses) - self.mean) / self.std


class AdapterOff:
    """Calls a LoRA policy with its adapter disabled: the reference policy, without a second copy."""

    def __init__(self, peft_model) -> None:
        self.model = peft_model

    def __call__(self, **kwargs):
        with self.model.disable_adapter():
            return self.model(**kwargs)

    def __getattr__(self, name: str):  # config, device, ...: the wrapped model's
        return getattr(self.__dict__["model"], name)


def _overrides(items: list[str]) -> dict[str, object]:
    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in items)}


def train_demo_reward_model(
    params: Path, overrides: dict[str, object], pool: dict, folder: Path, device: torch.device
) -> tuple[RewardModel, dict]:
    """The demo's reward model from the cached pool (trained once per settings, then reused)."""
    data_over = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("seeding.")}
    reward_over = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("reward.")}
    dcfg = dataclasses.replace(load_section(SeedingConfig, "seeding", params), **data_over)
    rcfg = dataclasses.replace(load_section(RewardConfig, "reward", params), **reward_over)
    tag = json.dumps({"data": to_dict(dcfg), "reward": to_dict(rcfg)}, sort_keys=True)
    if (folder / "settings.json").is_file() and (folder / "settings.json").read_text() == tag:
        log.info("reusing the reward model in %s", folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        index = {p: i for i, p in enumerate(pool["prompts"])}
        prompts = [p["prompt"] for p in load_prompts("train")[: dcfg.seed_prompts]]
        replies = [pool["replies"][index[p]][: dcfg.replies_per_prompt] for p in prompts]
        frame, _ = label_pairs(prompts, replies, dcfg)
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "pairs.parquet")
        train_reward(folder / "pairs.parquet", rcfg, folder / "model", folder / "metrics", project_root=folder)
        (folder / "settings.json").write_text(tag)
    metrics = json.loads((folder / "metrics" / "reward.json").read_text())
    return RewardModel.load(folder / "model", device=device), metrics


def all_pairs_outcomes(candidate: list[float], baseline: list[float]) -> np.ndarray:
    """Outcomes (1 win, 0.5 tie, 0 loss) of every candidate reply of a prompt against every baseline reply of
    it, flattened: shape (k * m,). Their mean over a prompt is the chance a candidate sample beats a base sample."""
    cand = np.repeat(np.asarray(candidate, dtype=float), len(baseline))  # shape: (k*m,)
    base = np.tile(np.asarray(baseline, dtype=float), len(candidate))  # shape: (k*m,)
    return pairwise_outcomes(cand[None, :], base[None, :])[0]


def interval(outcomes: np.ndarray) -> dict:
    """Win rate (ties half) with the evaluation stage's prompt-bootstrap 95 % interval; outcomes (P, K)."""
    rate, low, high = win_rate_interval(outcomes)
    return {"value": round(rate, 4), "low": round(low, 4), "high": round(high, 4), "n": int(outcomes.shape[0])}


def best_of_n(
    rm_scores: list[list[float]], golds: list[list[float]], refs: list[list[float]], n: int, by_gold: bool = False
) -> dict:
    """Unbiased best-of-n estimates from m >= n samples per prompt (selection by reward model or gold)."""
    gold_v, rm_v, win_v = [], [], []
    for rs, gs, ref in zip(rm_scores, golds, refs):
        key = gs if by_gold else rs
        order = sorted(range(len(gs)), key=lambda j: (key[j], -j))  # ascending; ties broken by sample index
        w = best_of_n_weights(n, len(gs))
        gold_v.append(sum(wj * gs[j] for wj, j in zip(w, order)))
        rm_v.append(sum(wj * rs[j] for wj, j in zip(w, order)))
        win_v.append(sum(wj * all_pairs_outcomes([gs[j]], ref).mean() for wj, j in zip(w, order)))
    return {
        "n": n,
        "kl": round(best_of_n_kl(n), 4),
        "gold": round(float(np.mean(gold_v)), 4),
        "rm_score": round(float(np.mean(rm_v)), 4),
        "win_rate": interval(np.array(win_v)[:, None]),
    }


@torch.no_grad()
def evaluate_samples(policy, reference, tok, rm_score, prompts, k, refs_gold, *, system, temperature, max_new_tokens,
                     batch_size, seed) -> dict:  # fmt: skip
    """k samples per prompt from ``policy``: gold, reward-model score, KL to ``reference``, win rate."""
    requests = [p for p in prompts for _ in range(k)]
    texts, kls, ended, lengths = [], [], [], []
    for i, start in enumerate(range(0, len(requests), batch_size)):
        chunk = requests[start : start + batch_size]
        out = generate(policy, tok, chunk, system=system, max_new_tokens=max_new_tokens, temperature=temperature,
                       generator_seed=seed + i)  # fmt: skip
        texts += out.texts
        kl = sequence_kl(policy, reference, out.query_ids, out.query_mask, out.response_ids, out.response_mask,
                         temperature)  # fmt: skip
        kls += kl.float().cpu().tolist()
        ended += out.ended.float().cpu().tolist()
        lengths += out.response_mask.sum(1).float().cpu().tolist()
    rm = rm_score(requests, texts).tolist()
    gold = gold_scores(requests, [[t] for t in texts])
    gold = [g[0] for g in gold]
    per_prompt_gold = [gold[j * k : (j + 1) * k] for j in range(len(prompts))]
    wr = interval(np.stack([all_pairs_outcomes(c, b) for c, b in zip(per_prompt_gold, refs_gold)]))
    return {
        "kl": round(float(np.mean(kls)), 4),
        "gold": round(float(np.mean(gold)), 4),
        "rm_score": round(float(np.mean(rm)), 4),
        "win_rate": wr,
        "eos_fraction": round(float(np.mean(ended)), 4),
        "tokens": round(float(np.mean(lengths)), 2),
        "examples": [[requests[j], texts[j]] for j in range(0, min(len(texts), 3 * k), k)],
    }


def nested(overrides: dict[str, object]) -> dict[str, object]:
    """Dotted keys (``rloo.k``) as nested mappings (``{"rloo": {"k": ...}}``), as params.yaml writes them."""
    out: dict[str, object] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            out.setdefault(head, {}).update(nested({rest: value}))  # type: ignore[union-attr]
        else:
            out[key] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_ppo(name: str, overrides: dict, args, params_raw: dict, rm: RewardModel, norm: tuple[float, float],
            heldout: list[str], refs_gold, device: torch.device, base_point: dict, *, seed: int | None = None,
            pairs: Path | None = None) -> dict:  # fmt: skip
    """Train one recipe (any ``policy.algorithm``) with the product's trainer, evaluating its policy at
    ``args.eval_steps`` and the last step; ``seed`` overrides ``policy.seed``; ``pairs`` is offline DPO's file."""
    overrides = dict(overrides)
    norm_mode = overrides.pop("norm", "model")
    root = args.cache / f"ppo_{name}" if seed is None else args.cache / f"ppo_{name}_seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data" / "prompts").mkdir(parents=True)
    train_prompts = [p["prompt"] for p in load_prompts("train")]
    (root / "data" / "prompts" / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in train_prompts)
    )
    section = merge(params_raw.get("policy", params_raw.get("ppo", {})), nested(overrides))
    if seed is not None:
        section["seed"] = seed
    if device.type == "cuda" and not args.bf16:
        section["bf16"] = False
    cfg = from_dict(PolicyConfig, section, prefix="policy.")
    if cfg.algorithm == "dpo":
        if pairs is None:
            raise SystemExit(f"recipe {name!r} is offline DPO and needs the seed pairs file")
        target = root / cfg.dpo.pairs
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pairs, target)
    model_cfg = load_section(ModelConfig, "model", params_raw)
    scorer = NormalisedScorer(rm, *norm) if norm_mode == "rollouts" else rm
    t0 = time.perf_counter()
    trainer = PPOTrainer(cfg, model_cfg, scorer, ProjectPaths(root))
    rm_score = rm.score  # evaluation always with the stored normalisation: comparable across variants

    def evaluate(step: int) -> dict:
        policy = trainer.unwrapped.policy
        row = evaluate_samples(
            policy, AdapterOff(policy), trainer.tok, rm_score, heldout, args.k, refs_gold,
            system=model_cfg.system_prompt, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
            batch_size=args.batch, seed=10_000 + step,
        )  # fmt: skip
        # always report the reward model's score with the stored normalisation too (comparable across variants)
        row["step"] = step
        log.info("%s seed %s step %d: gold %.3f rm %.3f kl %.2f win %.3f", name, cfg.seed, step, row["gold"],
                 row["rm_score"], row["kl"], row["win_rate"]["value"])  # fmt: skip
        return row

    # step 0 is the base policy: its point is the base samples' (KL 0), not sampled again
    checkpoints = [{"step": 0, "kl": 0.0, **base_point}]
    eval_steps = sorted({s for s in args.eval_steps if 0 < s < cfg.steps} | {cfg.steps})
    train_seconds = 0.0
    for target in eval_steps:
        t1 = time.perf_counter()
        trainer.train(stop_after=target - trainer.step)
        train_seconds += time.perf_counter() - t1
        checkpoints.append(evaluate(trainer.step))
    final = checkpoints[-1]
    phases = ("time/step", "time/rollout", "time/forward", "time/score", "time/update")
    logged = ("step", "objective/score", "objective/kl", "objective/kl_coef")
    return {
        "algorithm": cfg.algorithm,
        "seed": cfg.seed,
        "overrides": {**overrides, **({"norm": norm_mode} if norm_mode != "model" else {})},
        "budget": {
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "samples_per_prompt": cfg.group_size,
            "replies_sampled": cfg.steps * cfg.batch_size if cfg.algorithm != "dpo" else 0,
        },
        "rm_normalisation": "rollouts" if norm_mode == "rollouts" else "stored",
        "checkpoints": checkpoints,
        "final": {k: final[k] for k in ("step", "kl", "gold", "rm_score", "win_rate", "eos_fraction", "tokens")},
        "train_log": [{k: round(float(m[k]), 4) for k in logged if k in m} for m in trainer.metrics],
        "seconds_per_step": {
            p.split("/")[1]: round(float(np.mean([m[p] for m in trainer.metrics])), 2) for p in phases
        },
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summarise(runs: dict[str, dict]) -> dict:
    """One recipe over its training seeds: mean and spread of the final gold, KL, win rate and time."""
    finals = [r["final"] for r in runs.values()]

    def stat(values: list[float]) -> dict:
        return {"mean": round(float(np.mean(values)), 4), "min": round(min(values), 4), "max": round(max(values), 4)}

    return {
        "seeds": len(finals),
        "gold": stat([f["gold"] for f in finals]),
        "kl": stat([f["kl"] for f in finals]),
        "rm_score": stat([f["rm_score"] for f in finals]),
        "win_rate": stat([f["win_rate"]["value"] for f in finals]),
        "win_rate_low": stat([f["win_rate"]["low"] for f in finals]),
        "seconds_per_step": stat([r["seconds_per_step"]["step"] for r in runs.values()]),
        "train_seconds": stat([r["train_seconds"] for r in runs.values()]),
    }


def plot(report: dict, path: Path, variants: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    bon, oracle = report["best_of_n"]["reward_model"], report["best_of_n"]["gold_annotator"]
    for ax, key, title in (
        (axes[0], "gold", "gold annotator score"),
        (axes[1], "rm_score", "reward-model score (normalised)"),
    ):
        ax.plot(
            [b["kl"] for b in bon], [b[key] for b in bon], "o-", color="tab:blue", label="best-of-n, reward model picks"
        )
        for b in bon:
            ax.annotate(f"n={b['n']}", (b["kl"], b[key]), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if key == "gold":
            ax.plot([b["kl"] for b in oracle], [b[key] for b in oracle], "s--", color="tab:gray", alpha=0.7,
                    label="best-of-n, gold annotator picks")  # fmt: skip
        runs = [(n, r) for n, r in report["ppo"].items() if variants is None or n in variants]
        for i, (name, run) in enumerate(runs):
            seeds = run.get("seeds", {"": run})
            for j, one in enumerate(seeds.values()):
                pts = one["checkpoints"]
                label = f"{name} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}; steps)" if j == 0 else None
                ax.plot([p["kl"] for p in pts], [p[key] for p in pts], "^-", color=f"C{(i + 1) % 10}", alpha=0.8,
                        label=label)  # fmt: skip
                last = pts[-1]
                ax.annotate(str(last["step"]), (last["kl"], last[key]), textcoords="offset points", xytext=(3, 3),
                            fontsize=7)  # fmt: skip
        ax.set_xlabel("KL to the base policy (nats per reply)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Held-out prompts, {report['device']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def interpolate_bon(bon: list[dict], kl: float, key: str = "gold") -> float | None:
    """The best-of-n curve's value at ``kl`` (linear between its points); None beyond best-of-16."""
    pts = sorted((b["kl"], b[key]) for b in bon)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= kl <= x1:
            return round(y0 + (y1 - y0) * (kl - x0) / (x1 - x0), 4)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--samples", type=int, default=16, help="base samples per held-out prompt for best-of-n")
    ap.add_argument("--refs", type=int, default=8, help="base reference samples per held-out prompt (win rate)")
    ap.add_argument("--k", type=int, default=4, help="policy samples per held-out prompt at each PPO evaluation")
    ap.add_argument("--ppo", nargs="*", default=["default"], help=f"policy recipes, from: {', '.join(PPO_VARIANTS)}")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="training seeds per recipe (default: params')")
    ap.add_argument("--eval-steps", type=int, nargs="*", default=[4, 8, 12], help="PPO steps evaluated (and the last)")
    ap.add_argument("--ppo-set", nargs="*", default=[], help="KEY=VALUE policy overrides for every recipe (rloo.k=8)")
    ap.add_argument("--reward-set", nargs="*", default=[], help="seeding./reward. overrides for the reward model")
    ap.add_argument(
        "--norm-prompts", type=int, default=128, help="train prompts for the normalisation check (0: skip it)"
    )
    ap.add_argument("--bf16", action="store_true", help="on CUDA keep ppo.bf16 (default: float32, as on CPU)")
    ap.add_argument("--batch", type=int, default=0, help="sampling batch (0: 64 on CPU, 512 on CUDA)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--append", action="store_true", help="keep the runs already in the results JSON, add the rest")
    ap.add_argument("--tag", default="", help="suffix for the results files")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--replot", type=Path, default=None, help="only redraw the PNG of this results JSON")
    ap.add_argument("--plot-variants", nargs="*", default=None, help="PPO variants drawn (default: all)")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"), args.plot_variants)
        return
    device = setup(args.threads)
    args.batch = args.batch or (512 if device.type == "cuda" else 64)
    unknown = [v for v in args.ppo if v not in PPO_VARIANTS]
    if not args.norm_prompts and any(PPO_VARIANTS.get(v, {}).get("norm") == "rollouts" for v in args.ppo):
        raise SystemExit("the norm_rollouts recipe needs the normalisation check: leave --norm-prompts above 0")
    if unknown:
        raise SystemExit(f"unknown PPO variant(s) {unknown}; known: {', '.join(PPO_VARIANTS)}")
    params_raw = yaml.safe_load(args.params.read_text())
    model_cfg = load_section(ModelConfig, "model", args.params)
    data_cfg = load_section(SeedingConfig, "seeding", args.params)
    ppo_cfg = load_section(PolicyConfig, "policy", args.params)
    t_ppo, n_tok = ppo_cfg.temperature, ppo_cfg.max_new_tokens
    base, tok = load_base(model_cfg.base, dtype=model_cfg.dtype)
    base.to(device)
    sys_prompt = model_cfg.system_prompt

    # 1. the demo's reward model
    train_prompts = [p["prompt"] for p in load_prompts("train")]

    # only the prompts the reward model and the normalisation check read are sampled
    seed_prompts = _overrides(args.reward_set).get("seeding.seed_prompts", data_cfg.seed_prompts)
    pool_prompts = train_prompts[: max(int(seed_prompts), args.norm_prompts)]

    def make_pool() -> dict:
        replies = sample_replies(
            base, tok, pool_prompts, 6, system=sys_prompt, temperature=data_cfg.temperature,
            max_new_tokens=data_cfg.max_new_tokens, seed=data_cfg.seed, batch_size=args.batch,
        )  # fmt: skip
        return {"prompts": pool_prompts, "replies": replies, "temperature": data_cfg.temperature}

    whole = args.cache / f"pool_train_k6_t{data_cfg.temperature}.json"  # all train prompts, from earlier runs
    part = args.cache / f"pool_train{len(pool_prompts)}_k6_t{data_cfg.temperature}.json"
    pool = cached(whole if whole.is_file() else part, make_pool)
    reward_over = _overrides(args.reward_set)
    rm_folder = args.cache / ("rm_" + ("_".join(f"{k}={v}" for k, v in sorted(reward_over.items())) or "params"))
    rm, rm_metrics = train_demo_reward_model(args.params, reward_over, pool, rm_folder, device)

    # 2. base samples on the held-out prompts at PPO's temperature
    heldout = [p["prompt"] for p in load_prompts("heldout")]
    m = args.samples + args.refs
    samples = cached(
        args.cache / f"base_heldout_{m}_t{t_ppo}_{n_tok}.json",
        lambda: sample_replies(
            base,
            tok,
            heldout,
            m,
            system=sys_prompt,
            temperature=t_ppo,
            max_new_tokens=n_tok,
            seed=50_000,
            batch_size=args.batch,
        ),
    )
    bon_replies = [s[: args.samples] for s in samples]
    ref_replies = [s[args.samples :] for s in samples]
    golds = gold_scores(heldout, bon_replies)
    refs_gold = gold_scores(heldout, ref_replies)
    flat = [(p, r) for p, rs in zip(heldout, bon_replies) for r in rs]
    rm_flat = rm.score([p for p, _ in flat], [r for _, r in flat]).tolist()
    rm_scores = [rm_flat[j * args.samples : (j + 1) * args.samples] for j in range(len(heldout))]

    # 3. normalisation on the policy's own rollouts (train prompts, PPO temperature) vs the seed replies
    roll_mean, roll_std = rm.mean, rm.std
    normalisation: dict = {"skipped": "--norm-prompts 0"}
    if args.norm_prompts:
        norm_prompts = train_prompts[: args.norm_prompts]
        rollouts = cached(
            args.cache / f"base_train_{args.norm_prompts}_t{t_ppo}_{n_tok}.json",
            lambda: sample_replies(
                base,
                tok,
                norm_prompts,
                1,
                system=sys_prompt,
                temperature=t_ppo,
                max_new_tokens=n_tok,
                seed=60_000,
                batch_size=args.batch,
            ),
        )
        raw_roll = rm.raw_scores(norm_prompts, [r[0] for r in rollouts])
        seed_idx = {p: i for i, p in enumerate(pool["prompts"])}
        seed_replies = [pool["replies"][seed_idx[p]][: data_cfg.replies_per_prompt] for p in norm_prompts]
        raw_seed = rm.raw_scores(
            [p for p, rs in zip(norm_prompts, seed_replies) for _ in rs], [r for rs in seed_replies for r in rs]
        )
        roll_mean, roll_std = raw_roll.mean().item(), raw_roll.std(unbiased=False).item()
        normalisation = {
            "stored": {
                "mean": round(rm.mean, 4),
                "std": round(rm.std, 4),
                "from": "seed pairs' chosen+rejected replies",
            },
            "seed_replies_all": {
                "raw_mean": round(raw_seed.mean().item(), 4),
                "raw_std": round(raw_seed.std(unbiased=False).item(), 4),
                "from": f"all {data_cfg.replies_per_prompt} seed replies of {len(norm_prompts)} train prompts, "
                f"T={data_cfg.temperature}",
            },
            "policy_rollouts": {
                "raw_mean": round(roll_mean, 4),
                "raw_std": round(roll_std, 4),
                "normalised_mean": round((roll_mean - rm.mean) / rm.std, 4),
                "normalised_std": round(roll_std / rm.std, 4),
                "from": f"base policy (PPO step 0) on {len(norm_prompts)} train prompts, T={t_ppo}, {n_tok} tokens",
            },
            "heldout_base_samples_normalised": {
                "mean": round(float(np.mean(rm_flat)), 4),
                "std": round(float(np.std(rm_flat)), 4),
            },
        }
        log.info("normalisation: %s", normalisation)

    # 4. best-of-n
    ns = [n for n in (1, 2, 4, 8, 16, 32) if n <= args.samples]
    report: dict = {
        "device": device_name(device),
        "conditions": {
            "heldout_prompts": len(heldout),
            "bon_samples_per_prompt": args.samples,
            "reference_samples_per_prompt": args.refs,
            "ppo_eval_samples_per_prompt": args.k,
            "temperature": t_ppo,
            "max_new_tokens": n_tok,
            "reward_overrides": reward_over,
            "win_rate": "gold win rate against the base's reference samples of the same prompt, ties half; "
            "95 % prompt-bootstrap interval (components.decide.eval_stats)",
        },
        "reward_model": {"eval": rm_metrics["eval"], "normalization": rm_metrics["normalization"]},
        "normalisation": normalisation,
        "base": {
            "gold": round(float(np.mean(golds)), 4),
            "gold_refs": round(float(np.mean(refs_gold)), 4),
            "rm_score": round(float(np.mean(rm_flat)), 4),
        },
        "best_of_n": {
            "reward_model": [best_of_n(rm_scores, golds, refs_gold, n) for n in ns],
            "gold_annotator": [best_of_n(rm_scores, golds, refs_gold, n, by_gold=True) for n in ns],
        },
        "ppo": {},
    }
    tag = f"_{args.tag}" if args.tag else ""
    out_json, out_png = args.out / f"alignment{tag}.json", args.out / f"alignment{tag}.png"
    # with --append, the runs already in the results JSON are kept: read before this run overwrites the file,
    # and only when they were measured against the same reward model and base samples
    if args.append and out_json.is_file():
        earlier = json.loads(out_json.read_text())
        same = ("reward_model", "base", "best_of_n")
        if any(earlier.get(k) != report[k] for k in same):
            raise SystemExit(
                f"--append: {out_json} was measured with another reward model or other base samples "
                f"({', '.join(k for k in same if earlier.get(k) != report[k])} differ); "
                "rerun with the same --samples/--refs/--reward-set/params, or write to another --tag"
            )
        report["ppo"] = earlier["ppo"]
    write_json(out_json, report)
    base.to("cpu")  # PPO loads its own copy

    # 5. policy runs: every recipe x seed (with --append, the ones already in the results JSON are kept)
    seeds = args.seeds if args.seeds else [ppo_cfg.seed]
    bon = report["best_of_n"]["reward_model"]
    for name in args.ppo:
        overrides = {**_overrides(args.ppo_set), **PPO_VARIANTS[name]}
        entry = report["ppo"].setdefault(name, {"overrides": overrides, "seeds": {}})
        if "seeds" not in entry:  # a single-run entry of an older results file
            entry = report["ppo"][name] = {"overrides": entry["overrides"], "seeds": {str(ppo_cfg.seed): entry}}
        for seed in seeds:
            if str(seed) in entry["seeds"]:
                log.info("%s seed %d: kept from %s", name, seed, out_json)
                continue
            base_point = {"gold": report["base"]["gold"], "rm_score": report["base"]["rm_score"],
                          "win_rate": bon[0]["win_rate"]}  # fmt: skip
            run = run_ppo(name, overrides, args, params_raw, rm, (roll_mean, roll_std), heldout, refs_gold, device,
                          base_point, seed=seed, pairs=rm_folder / "pairs.parquet")  # fmt: skip
            final = run["final"]
            best = max(run["checkpoints"], key=lambda c: c["gold"])
            run["against_best_of_n"] = {
                "bon_gold_at_final_kl": interpolate_bon(bon, final["kl"]),
                "gold_peak_step": best["step"],
                "rm_after_gold_peak_rises": any(
                    c["rm_score"] > best["rm_score"] and c["gold"] < best["gold"]
                    for c in run["checkpoints"]
                    if c["step"] > best["step"]
                ),
            }
            entry["seeds"][str(seed)] = run
            entry["summary"] = summarise(entry["seeds"])
            write_json(out_json, report)
            plot(report, out_png, args.plot_variants)
    if not args.ppo:
        plot(report, out_png)
    if math.isfinite(report["base"]["gold"]):
        log.info("done: %s", out_json)


if __name__ == "__main__":
    main()
