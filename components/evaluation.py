"""Evaluate a policy on held-out prompts: reward-model score, gold-annotator score, KL to the reference.

Two layers:
- :func:`evaluate_policy`: one policy, one sampled reply per prompt (the before/after numbers);
- :func:`evaluate` (the **evaluate stage**, ``EvalConfig``): a candidate against the current champion,
  ``samples_per_prompt`` seeded samples per held-out prompt from each (sample k of both models drawn with the
  same seed), gold win rate per prompt and sample (ties half) with a 95 % bootstrap interval, mean gold and
  reward-model scores, the candidate's KL to its reference on its own samples, reply length, EOS rate,
  degenerate rate and the over-optimisation flag. Writes ``metrics/eval.json`` and ``reports/eval.md``.

Letters: B batch, P prompt tokens (left padded), R response tokens, V vocabulary.

The gold annotator stands in for human raters; it is used here (and to label feedback) only, never by
the reward model or PPO.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig
from components.fsutil import atomic_write_text
from components.generation import generate
from components.paths import ProjectPaths
from components.ppo import core
from components.precision import autocast
from components.progress import Progress, log_progress, report
from components.shared_prefix import reply_logits_shared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyEval:
    """Means over the held-out prompts (one sampled reply each)."""

    reward_score: float
    gold_score: float
    kl: float
    """Mean over replies of the summed per-token log-ratio log π(y|x) − log π_ref(y|x) (k1 estimator)."""
    eos_fraction: float
    mean_tokens: float
    n: int
    examples: list[tuple[str, str]] = field(default_factory=list)


@torch.no_grad()
def sequence_kl(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Summed k1 log-ratio of each sampled response under policy vs reference; shape (B,)."""
    ids = torch.cat([query_ids, response_ids], dim=1)  # shape: (B, P+R)
    mask = torch.cat([query_mask, response_mask], dim=1)  # shape: (B, P+R)
    r = response_ids.shape[1]
    pol = reply_logits_shared(policy, ids, mask, r)  # shape: (B, R, V); the shared system prompt once
    ref = reply_logits_shared(reference, ids, mask, r)  # shape: (B, R, V)
    logp = core.logprobs_from_logits(pol, response_ids, temperature)  # shape: (B, R)
    ref_logp = core.logprobs_from_logits(ref, response_ids, temperature)  # shape: (B, R)
    return (core.kl_per_token(logp, ref_logp, "k1") * response_mask).sum(dim=1)  # shape: (B,)


def evaluate_policy(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    reward: Callable[[list[str], list[str]], torch.Tensor],
    gold: Callable[[str, str], float],
    *,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 16,
    seed: int = 0,
) -> PolicyEval:
    """Sample one reply per prompt (seeded), then score it with the reward model and the gold annotator."""
    rewards, golds, kls, ended, lengths, examples = [], [], [], [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        out = generate(
            policy,
            tok,
            chunk,
            system=system,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            generator_seed=seed + start,
        )
        rewards.append(reward(chunk, out.texts).float().cpu())
        golds.extend(gold(p, r) for p, r in zip(chunk, out.texts))
        kls.append(
            sequence_kl(
                policy, reference, out.query_ids, out.query_mask, out.response_ids, out.response_mask, temperature
            )
        )
        ended.append(out.ended.float())
        lengths.append(out.response_mask.sum(dim=1).float())
        examples.extend(zip(chunk, out.texts))
    return PolicyEval(
        reward_score=torch.cat(rewards).mean().item(),
        gold_score=float(sum(golds) / len(golds)),
        kl=torch.cat(kls).mean().item(),
        eos_fraction=torch.cat(ended).mean().item(),
        mean_tokens=torch.cat(lengths).mean().item(),
        n=len(golds),
        examples=examples[:3],
    )


# ---------------------------------------------------------------------------------------------
# The evaluate stage: candidate against champion
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """How a candidate policy is evaluated against the champion (``params.yaml`` section ``eval``).

    Defaults cost about a minute of CPU on the demo (2 models x 40 prompts x 2 samples of 32 tokens)."""

    prompts: str = "data/prompts/heldout.jsonl"
    """Held-out prompts (JSONL, ``{"prompt": ...}``), never used to train the reward model or PPO."""
    max_prompts: int | None = None
    """Use only the first this many prompts (null = all)."""
    samples_per_prompt: int = 2
    """Seeded samples per prompt from each model; sample k of the candidate and of the champion use the same
    seed, and each (prompt, sample) is one comparison."""
    max_new_tokens: int = 32
    """Reply length cap (the PPO rollout's, so the candidate is judged at the length it was trained for)."""
    temperature: float = 0.7
    """Sampling temperature (PPO's; the KL is computed from logits divided by it, as in training)."""
    batch_size: int = 40
    """Replies generated per batch."""
    seed: int = 1234
    """Base sampling seed (different from PPO's so evaluation never replays training rollouts)."""
    confidence: float = 0.95
    """Confidence level of the win rate's interval."""
    bootstrap_resamples: int = 2000
    """Resamples of prompts for the percentile bootstrap interval (Efron & Tibshirani 1993)."""
    repeat_ngram: int = 3
    """A reply is *repetitive* (degenerate) when under ``min_distinct_ngrams`` of its word n-grams of this size are
    distinct."""
    min_distinct_ngrams: float = 0.5
    """See ``repeat_ngram``; empty replies are degenerate too."""
    overopt_tolerance: float = 0.02
    """Over-optimisation flag: the reward-model score rose while the mean gold score fell by more than this."""
    bf16: bool = True
    """Sample, score and compute the KL under bf16 autocast where the device computes bf16 natively (see
    ``components/precision.py``); float32 elsewhere."""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError("max_prompts must be >= 1 or null")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.bootstrap_resamples < 100:
            raise ValueError("batch_size, max_new_tokens must be >= 1 and bootstrap_resamples >= 100")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


@dataclass(frozen=True)
class ModelEval:
    """One model's means over every (prompt, sample) of the evaluation."""

    version: str
    gold_score: float
    reward_score: float
    mean_tokens: float
    eos_rate: float
    degenerate_rate: float
    kl: float | None = None
    """Mean summed k1 log-ratio to the reference per reply (the candidate only)."""


@dataclass(frozen=True)
class EvalResult:
    """What the evaluate stage measured (JSON-serialisable)."""

    candidate: ModelEval
    champion: ModelEval
    candidate_path: str
    prompts: int
    samples_per_prompt: int
    win_rate: float
    """Gold annotator's pairwise win rate of the candidate over the champion (ties count half)."""
    win_rate_low: float
    win_rate_high: float
    interval: str
    """How the interval was computed."""
    wins: int
    ties: int
    losses: int
    overoptimised: bool
    """Reward-model score rose while the gold score fell (by more than ``overopt_tolerance``)."""
    reward_version: str | None
    reward_accuracy: float | None
    """Held-out accuracy of the reward model the candidate was trained against (from its manifest)."""
    kl_target: float | None
    metrics_path: str
    report_path: str
    examples: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Samples:
    texts: list[list[str]]  # [K][P]
    gold: list[list[float]]
    reward: list[list[float]]
    tokens: list[list[float]]
    ended: list[list[float]]
    kl: list[list[float]]


def _sample_and_score(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    reward: Callable[[list[str], list[str]], torch.Tensor],
    cfg: EvalConfig,
    system: str | None,
    on_batch: Callable[[], None],
) -> _Samples:
    out = _Samples([], [], [], [], [], [])
    for k in range(cfg.samples_per_prompt):
        rows: dict[str, list] = {"texts": [], "gold": [], "reward": [], "tokens": [], "ended": [], "kl": []}
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[start : start + cfg.batch_size]
            gen = generate(
                policy,
                tok,
                chunk,
                system=system,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                generator_seed=cfg.seed + 1000 * k + start,
            )
            rows["texts"] += gen.texts
            rows["gold"] += [gold_score(p, r) for p, r in zip(chunk, gen.texts)]
            rows["reward"] += reward(chunk, gen.texts).float().cpu().tolist()
            rows["tokens"] += gen.response_mask.sum(dim=1).float().cpu().tolist()
            rows["ended"] += gen.ended.float().cpu().tolist()
            if reference is not None:
                kl = sequence_kl(
                    policy, reference, gen.query_ids, gen.query_mask, gen.response_ids, gen.response_mask,
                    cfg.temperature,
                )  # fmt: skip
                rows["kl"] += kl.float().cpu().tolist()
            on_batch()
        for name, values in rows.items():
            getattr(out, name).append(values)
    return out


def gold_score(prompt: str, reply: str) -> float:
    """The gold annotator's score (imported lazily: it loads a sentiment lexicon)."""
    from components.demo_task import gold

    return gold.score(prompt, reply)


def _summary(version: str, s: _Samples, cfg: EvalConfig) -> ModelEval:
    from components.eval_stats import is_degenerate

    texts = [t for row in s.texts for t in row]
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    degenerate = [is_degenerate(t, n=cfg.repeat_ngram, min_distinct=cfg.min_distinct_ngrams) for t in texts]
    kls = flat(s.kl)
    return ModelEval(
        version=version,
        gold_score=round(float(np.mean(flat(s.gold))), 6),
        reward_score=round(float(np.mean(flat(s.reward))), 6),
        mean_tokens=round(float(np.mean(flat(s.tokens))), 4),
        eos_rate=round(float(np.mean(flat(s.ended))), 6),
        degenerate_rate=round(float(np.mean(degenerate)), 6),
        kl=round(float(np.mean(kls)), 6) if kls else None,
    )


def read_prompt_file(path: Path) -> list[str]:
    """Prompts of a JSONL file of ``{"prompt": ...}`` lines; a missing or empty file is an actionable error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no held-out prompts; the seed stage writes them (or set eval.prompts)")
    prompts = [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: holds no prompts")
    return prompts


def evaluate(
    cfg: EvalConfig,
    paths: ProjectPaths,
    *,
    model: ModelConfig,
    candidate: str | Path,
    kl_target: float | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """The evaluate stage: the candidate policy folder against the registry's champion on held-out prompts.

    The base model is registered as the first champion if the registry has none. The reward model and the
    KL reference are the ones named in the candidate's manifest (``reward_model.spec``, ``base_dir``).
    """
    from components import registry
    from components.base_model import accelerator_device, load_base, resolve_model_dir
    from components.eval_stats import overoptimised, pairwise_outcomes, win_rate_interval
    from components.reward.model import RewardModel

    t0 = time.perf_counter()
    candidate = Path(candidate)
    manifest = json.loads((candidate / "manifest.json").read_text(encoding="utf-8"))
    champ = registry.ensure_base_champion(paths, model.base, resolve_model_dir(model.base))
    prompts = read_prompt_file(paths.root / cfg.prompts)[: cfg.max_prompts]
    device = accelerator_device()

    # 1. models: candidate, champion, the candidate's KL reference (loaded once when folders coincide), RM
    loaded: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}

    def load(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        key = str(Path(folder).resolve())
        if key not in loaded:
            loaded[key] = load_base(key, dtype=model.dtype, device=device)
        return loaded[key]

    cand_model, tok = load(candidate)
    champ_model, champ_tok = load(champ.path)
    ref_dir = manifest.get("base_dir") or str(resolve_model_dir(manifest.get("base", model.base)))
    reference, _ = load(Path(ref_dir))
    rm_info = manifest.get("reward_model") or {}
    rm_path = paths.root / rm_info.get("spec", "models/reward")
    rm = RewardModel.load(rm_path, device=device)

    # 2. sample and score: K seeded samples per prompt from each model
    total = 2 * cfg.samples_per_prompt * -(-len(prompts) // cfg.batch_size)
    done = [0]

    def tick() -> None:
        done[0] += 1
        report(progress, done[0], total, "evaluating candidate and champion")

    with autocast(device, cfg.bf16):
        cand = _sample_and_score(cand_model, reference, tok, prompts, rm.score, cfg, model.system_prompt, tick)
        champ_s = _sample_and_score(champ_model, None, champ_tok, prompts, rm.score, cfg, model.system_prompt, tick)

    # 3. compare: per prompt and sample, ties half; bootstrap over prompts
    outcomes = pairwise_outcomes(np.array(cand.gold).T, np.array(champ_s.gold).T)  # shape: (P, K)
    rate, low, high = win_rate_interval(
        outcomes, confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=cfg.seed
    )
    c_sum = _summary(manifest.get("version", candidate.name), cand, cfg)
    h_sum = _summary(champ.version, champ_s, cfg)
    flag = overoptimised(
        c_sum.reward_score - h_sum.reward_score, c_sum.gold_score - h_sum.gold_score, cfg.overopt_tolerance
    )
    examples = [
        {"prompt": p, "candidate": c, "champion": h}
        for p, c, h in list(zip(prompts, cand.texts[0], champ_s.texts[0]))[:3]
    ]
    result = EvalResult(
        candidate=c_sum,
        champion=h_sum,
        candidate_path=str(candidate),
        prompts=len(prompts),
        samples_per_prompt=cfg.samples_per_prompt,
        win_rate=round(rate, 6),
        win_rate_low=round(low, 6),
        win_rate_high=round(high, 6),
        interval=f"{cfg.confidence:.0%} percentile bootstrap over prompts ({cfg.bootstrap_resamples} resamples)",
        wins=int((outcomes == 1.0).sum()),
        ties=int((outcomes == 0.5).sum()),
        losses=int((outcomes == 0.0).sum()),
        overoptimised=bool(flag),
        reward_version=rm_info.get("version"),
        reward_accuracy=rm_info.get("heldout_accuracy"),
        kl_target=kl_target,
        metrics_path=str(paths.eval_metrics),
        report_path=str(paths.eval_report),
        examples=examples,
        seconds=round(time.perf_counter() - t0, 1),
    )
    atomic_write_text(paths.eval_metrics, json.dumps(asdict(result), indent=2) + "\n")
    atomic_write_text(paths.eval_report, eval_markdown(result))
    log.info("candidate %s vs champion %s: gold win rate %.3f [%.3f, %.3f]",
             c_sum.version, h_sum.version, rate, low, high)  # fmt: skip
    return result


def eval_markdown(r: EvalResult) -> str:
    """A short Markdown report of an evaluation."""
    c, h = r.candidate, r.champion
    kl = "n/a" if c.kl is None else f"{c.kl:.3f}" + (f" (target {r.kl_target:g})" if r.kl_target else "")
    lines = [
        f"# Evaluation: candidate `{c.version}` vs champion `{h.version}`",
        "",
        f"{r.prompts} held-out prompts x {r.samples_per_prompt} seeded samples from each model.",
        "",
        f"**Gold win rate of the candidate: {r.win_rate:.1%}** "
        f"({r.interval}: {r.win_rate_low:.1%} - {r.win_rate_high:.1%}); "
        f"{r.wins} wins, {r.ties} ties, {r.losses} losses.",
        "",
        "| metric | champion | candidate |",
        "| --- | --- | --- |",
        f"| gold score | {h.gold_score:.3f} | {c.gold_score:.3f} |",
        f"| reward-model score | {h.reward_score:.3f} | {c.reward_score:.3f} |",
        f"| reply length (tokens) | {h.mean_tokens:.1f} | {c.mean_tokens:.1f} |",
        f"| replies that end (EOS) | {h.eos_rate:.1%} | {c.eos_rate:.1%} |",
        f"| degenerate replies | {h.degenerate_rate:.1%} | {c.degenerate_rate:.1%} |",
        f"| KL to the reference (nats/reply) | - | {kl} |",
        "",
        f"Over-optimisation (reward up, gold down): **{'yes' if r.overoptimised else 'no'}**.",
        f"Reward model {r.reward_version or 'n/a'}, held-out accuracy "
        + ("n/a" if r.reward_accuracy is None else f"{r.reward_accuracy:.1%}")
        + ".",
        "",
    ]
    for ex in r.examples:
        lines += [f"- **{ex['prompt']}**", f"  - champion: {ex['champion']}", f"  - candidate: {ex['candidate']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """The ``evaluate`` DVC stage: the last exported policy against the champion."""
    import argparse
    import sys

    from components.config import load_section
    from components.ppo.config import PPOConfig
    from components.ppo.train import exported_policy

    parser = argparse.ArgumentParser(prog="python -m components.evaluation", description=main.__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (sections eval, model)")
    parser.add_argument("--candidate", type=Path, default=None, help="policy folder (default: the last PPO export)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths(args.params.resolve().parent)
    cfg = load_section(EvalConfig, "eval", args.params)
    model_cfg = load_section(ModelConfig, "model", args.params)
    ppo = load_section(PPOConfig, "ppo", args.params)
    candidate = args.candidate or exported_policy(paths.root)
    if candidate is None:
        print("evaluate: no exported policy (metrics/ppo.json); run the ppo stage first", file=sys.stderr)
        return 2
    kl_target = ppo.kl_target if ppo.adaptive_kl else None
    progress = log_progress(log, "evaluate batch")
    evaluate(cfg, paths, model=model_cfg, candidate=candidate, kl_target=kl_target, progress=progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
