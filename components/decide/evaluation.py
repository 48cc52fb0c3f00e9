"""Evaluate a policy on held-out prompts: the judge's win rate, reward-model score, KL to the reference.

:func:`evaluate` (the **evaluate stage**, ``EvalConfig``; its DVC command is :func:`main`): a candidate against
the current champion, ``samples_per_prompt`` seeded samples per held-out prompt from each (sample k of both
models drawn with the same seed); the configured judge (``eval.judge``, :mod:`components.decide.judges`) decides each
(prompt, sample): win rate (ties half) with a 95 % bootstrap interval over prompts, an A/A figure (the champion
against itself), the training reward model's win rate on the same pairs and the disagreement flags both ways,
the candidate's KL to its reference on its own samples, reply length, EOS rate, degenerate rate. Writes
``metrics/eval.json``, ``reports/eval.md`` and every verdict to ``reports/judge_verdicts.jsonl``.

Letters: B batch, P prompt tokens (left padded), R response tokens, V vocabulary; K samples per prompt.

The judge is the only way the evaluation reaches a task's notion of "better"; the demo task's annotator is one
judge (``demo``), refused in projects without the demo task.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.common.fsutil import atomic_write_text
from components.common.progress import Progress, log_progress, report
from components.config.evaluation import EvalConfig
from components.config.model import ModelConfig
from components.data.prompt_pool import Prompt, prompt_text
from components.decide.judges import Comparison, Judge, ScoringJudge, Verdict, make_judge
from components.decide.judges.base import judge_label, outcome_from_scores
from components.models.generation import StaticCacheMode, generate
from components.models.policy import ppo_math
from components.models.precision import autocast, bf16_fast
from components.models.shared_prefix import reply_logits_shared
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)


@torch.no_grad()
def sequence_kl(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    policy_logits: torch.Tensor | None = None,
    estimator: Literal["exact", "k1"] = "exact",
) -> torch.Tensor:
    """KL of each sampled response under policy vs reference, summed over its tokens; shape (B,).

    ``exact`` (default): at each position the exact KL of the two tempered next-token distributions
    (:func:`~components.models.policy.ppo_math.chunked_token_kl`), the same mean over sampled replies as
    ``k1`` (the sampled token's log-ratio) with about a quarter of its variance. ``policy_logits`` (B, R, V):
    the raw logits that sampled the response (``generate(return_internals=True)``), used instead of a second
    policy forward, as PPO's rollout uses them. The same model as reference: 0."""
    if reference is policy:
        return torch.zeros(response_ids.shape[0], device=response_ids.device)
    ids = torch.cat([query_ids, response_ids], dim=1)  # shape: (B, P+R)
    mask = torch.cat([query_mask, response_mask], dim=1)  # shape: (B, P+R)
    r = response_ids.shape[1]
    pol = policy_logits if policy_logits is not None else reply_logits_shared(policy, ids, mask, r)  # (B, R, V)
    if estimator == "exact":
        ref = reply_logits_shared(reference, ids, mask, r)  # shape: (B, R, V); the shared system prompt once
        return ppo_math.reply_kl(pol, ref, response_mask, temperature)  # shape: (B,)
    if estimator != "k1":
        raise ValueError(f"unknown KL estimator {estimator!r} (use 'exact' or 'k1')")
    logp = ppo_math.chunked_logprobs(pol, response_ids, temperature)[0]  # shape: (B, R)
    del pol  # a second pass's (B, R, V) logits are freed before the reference pass builds its own
    ref = reply_logits_shared(reference, ids, mask, r)  # shape: (B, R, V); the shared system prompt once
    ref_logp = ppo_math.chunked_logprobs(ref, response_ids, temperature)[0]  # shape: (B, R)
    return (ppo_math.kl_per_token(logp, ref_logp, "k1") * response_mask).sum(dim=1)  # shape: (B,)


# ---------------------------------------------------------------------------------------------
# The evaluate stage: candidate against champion
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEval:
    """One model's means over every (prompt, sample) of the evaluation."""

    version: str
    judge_score: float | None
    """Mean score under the judge, where it scores replies one by one (``demo``, ``reward_model``); None for
    pairwise-only judges (``llm``)."""
    reward_score: float | None
    """Mean score under the training reward model (None where none was asked: a comparison in a project without
    one)."""
    mean_tokens: float
    eos_rate: float
    degenerate_rate: float
    kl: float | None = None
    """Mean KL to the reference per reply, summed along the reply (:func:`sequence_kl`, exact per position; the
    candidate only)."""


@dataclass(frozen=True)
class EvalResult:
    """What the evaluate stage measured (JSON-serialisable)."""

    candidate: ModelEval
    champion: ModelEval
    candidate_path: str
    prompts: int
    samples_per_prompt: int
    win_rate: float
    """The judge's pairwise win rate of the candidate over the champion (ties count half)."""
    win_rate_low: float
    win_rate_high: float
    interval: str
    """How the interval was computed."""
    wins: int
    ties: int
    losses: int
    overoptimised: bool
    """The training reward model prefers the candidate while the judge prefers the champion (by more than
    ``overopt_tolerance``)."""
    reward_version: str | None
    reward_accuracy: float | None
    """Held-out accuracy of the reward model the candidate was trained against (from its manifest)."""
    kl_target: float | None
    metrics_path: str
    report_path: str
    examples: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    judge: dict[str, Any] = field(default_factory=dict)
    """Which judge decided: its name and settings (``describe()``)."""
    judge_accuracy: float | None = None
    """The judge's held-out accuracy on human pairs (the judge reward model), else None."""
    judge_min_accuracy: float | None = None
    """The floor ``judge_accuracy`` must reach for the gate to decide."""
    reward_win_rate: float | None = None
    """The training reward model's pairwise win rate of the candidate on the same comparisons (ties half)."""
    judge_disagrees: bool = False
    """The judge prefers the candidate while the training reward model prefers the champion."""
    aa_win_rate: float | None = None
    """A/A: the champion judged against itself with other seeds (should read about 0.5)."""
    aa_low: float | None = None
    aa_high: float | None = None
    aa_comparisons: int = 0
    verdicts_path: str = ""
    """Every verdict and its reason, one JSON line each."""
    champion_replayed: bool = False
    """The champion's replies were read from the sample cache (an earlier evaluation drew them from the same model
    files with the same prompts and settings, :mod:`components.decide.sample_cache`) and scored again by this
    round's reward model, not sampled again; the same replies and verdicts as sampling afresh."""


@dataclass
class _Samples:
    texts: list[list[str]]  # [K][P]
    reward: list[list[float]]
    tokens: list[list[float]]
    ended: list[list[float]]
    kl: list[list[float]]


def eval_batches(prompts: int, cfg: EvalConfig) -> int:
    """How many generation batches :func:`_sample_and_score` runs for one model."""
    return -(-prompts // prompts_per_batch(cfg))


def prompts_per_batch(cfg: EvalConfig) -> int:
    """Prompts in one batch: every sample of a prompt is in its batch (one encoding of the prompt, its KV cache
    copied), about ``cfg.batch_size`` replies in all."""
    return max(1, cfg.batch_size // cfg.samples_per_prompt)


def _sample_and_score(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    reward: Callable[[list[str], list[str]], torch.Tensor] | None,
    cfg: EvalConfig,
    system: str | None,
    on_batch: Callable[[], None],
    static_cache: StaticCacheMode = "auto",
) -> _Samples:
    """``cfg.samples_per_prompt`` replies to each prompt, a batch of prompts at a time with all their samples;
    a batch is seeded with ``cfg.seed`` plus the index of its first prompt, so two models draw sample k of a prompt
    from the same random numbers. With ``reference``: each reply's KL to it, from the logits that sampled it."""
    k_n, step = cfg.samples_per_prompt, prompts_per_batch(cfg)
    flat: dict[str, list] = {"texts": [], "reward": [], "tokens": [], "ended": [], "kl": []}  # prompt-major
    for start in range(0, len(prompts), step):
        chunk = prompts[start : start + step]
        gen = generate(
            policy,
            tok,
            chunk,
            system=system,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            generator_seed=cfg.seed + start,
            samples_per_prompt=k_n,
            return_internals=reference is not None and reference is not policy,
            static_cache=static_cache,
        )
        flat["texts"] += gen.texts
        if reward is not None:
            flat["reward"] += reward([p for p in chunk for _ in range(k_n)], gen.texts).float().cpu().tolist()
        flat["tokens"] += gen.response_mask.sum(dim=1).float().cpu().tolist()
        flat["ended"] += gen.ended.float().cpu().tolist()
        if reference is not None:
            kl = sequence_kl(
                policy, reference, gen.query_ids, gen.query_mask, gen.response_ids, gen.response_mask,
                cfg.temperature, policy_logits=gen.logits,
            )  # fmt: skip
            flat["kl"] += kl.float().cpu().tolist()
        del gen
        on_batch()
    out = _Samples([], [], [], [], [])
    for name, values in flat.items():  # prompt-major (p * K + k) -> [K][P]
        getattr(out, name).extend(values[k::k_n] for k in range(k_n))
    return out


def _summary(version: str, s: _Samples, cfg: EvalConfig, judge_scores: list[float] | None) -> ModelEval:
    from components.decide.eval_stats import is_degenerate

    texts = [t for row in s.texts for t in row]
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    degenerate = [is_degenerate(t, n=cfg.repeat_ngram, min_distinct=cfg.min_distinct_ngrams) for t in texts]
    kls, rewards = flat(s.kl), flat(s.reward)
    return ModelEval(
        version=version,
        judge_score=None if judge_scores is None else round(float(np.mean(judge_scores)), 6),
        reward_score=round(float(np.mean(rewards)), 6) if rewards else None,
        mean_tokens=round(float(np.mean(flat(s.tokens))), 4),
        eos_rate=round(float(np.mean(flat(s.ended))), 6),
        degenerate_rate=round(float(np.mean(degenerate)), 6),
        kl=round(float(np.mean(kls)), 6) if kls else None,
    )


def read_prompt_file(path: Path) -> list[Prompt]:
    """The held-out prompts (a pool file: strings, or conversations as messages)."""
    from components.data.prompt_pool import read_prompts

    return read_prompts(path)


@dataclass(frozen=True)
class _Judged:
    """A judge's verdicts on K x P comparisons, and each side's judge scores where the judge scores replies."""

    outcomes: np.ndarray  # shape: (P, K)
    verdicts: list[Verdict]  # K x P, sample-major
    scores_a: list[float] | None
    scores_b: list[float] | None


def judge_samples(
    judge: Judge, prompts: Sequence[str], a: list[list[str]], b: list[list[str]], note: str,
    progress: Progress | None = None,
) -> _Judged:  # fmt: skip
    """Judge a[k][p] against b[k][p] for every sample k and prompt p (sample-major)."""
    items = [Comparison(prompts[p], a[k][p], b[k][p]) for k in range(len(a)) for p in range(len(prompts))]
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        report(progress, done[0], len(items), note)

    scores_a = scores_b = None
    if isinstance(judge, ScoringJudge):
        s = judge.scores([*(i.prompt for i in items), *(i.prompt for i in items)],
                         [*(i.reply_a for i in items), *(i.reply_b for i in items)])  # fmt: skip
        scores_a, scores_b = s[: len(items)], s[len(items) :]
        verdicts = [Verdict(outcome_from_scores(x, y), f"{judge.name} scores {x:.3f} vs {y:.3f}")
                    for x, y in zip(scores_a, scores_b)]  # fmt: skip
        tick(len(items))
    else:
        verdicts = judge.compare_many(items, on_done=tick)
    values = np.array([v.value for v in verdicts]).reshape(len(a), len(prompts))  # shape: (K, P)
    return _Judged(values.T, verdicts, scores_a, scores_b)


def _verdict_lines(kind: str, prompts: Sequence[str], a: list[list[str]], b: list[list[str]], names: tuple[str, str],
                   judged: _Judged, judge: str, sample_of: Callable[[int], tuple[int, int]]) -> list[str]:  # fmt: skip
    lines = []
    for i, v in enumerate(judged.verdicts):
        k, p = divmod(i, len(prompts))
        ka, kb = sample_of(k)
        lines.append(json.dumps({
            "kind": kind, "judge": judge, "prompt_index": p, "prompt": prompts[p],
            "a": names[0], "sample_a": ka, "reply_a": a[k][p], "b": names[1], "sample_b": kb, "reply_b": b[k][p],
            "outcome": v.outcome, "reason": v.reason,
        }))  # fmt: skip
    return lines


def judged_win_rate(outcomes: np.ndarray, cfg: EvalConfig) -> tuple[float, dict[str, Any]]:
    """The judge's win rate over ``(P, K)`` outcomes (1 win, 0.5 tie, 0 loss) with ``cfg``'s percentile bootstrap
    over prompts: the rate itself, and the result fields it fills (``win_rate``, ``win_rate_low``,
    ``win_rate_high``, ``interval``, ``wins``, ``ties``, ``losses``) for :class:`EvalResult` and a comparison."""
    from components.decide.eval_stats import win_rate_interval

    rate, low, high = win_rate_interval(
        outcomes, confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=cfg.seed
    )
    return rate, {
        "win_rate": round(rate, 6),
        "win_rate_low": round(low, 6),
        "win_rate_high": round(high, 6),
        "interval": f"{cfg.confidence:.0%} percentile bootstrap over prompts ({cfg.bootstrap_resamples} resamples)",
        "wins": int((outcomes == 1.0).sum()),
        "ties": int((outcomes == 0.5).sum()),
        "losses": int((outcomes == 0.0).sum()),
    }


def eval_judge(cfg: EvalConfig, paths: ProjectPaths, *, demo_task: bool, training_manifest: Path) -> Judge:
    """The judge ``cfg.judge`` for the project, checked reachable (``preflight``) before any sampling."""
    judge = make_judge(
        cfg.judge, root=paths.root, demo_task=demo_task, judge_reward=cfg.judge_reward, llm_judge=cfg.llm_judge,
        human_judge=cfg.human_judge, training_manifest=training_manifest,
    )  # fmt: skip
    judge.preflight()  # an unreachable judge fails before minutes of sampling
    return judge


def _sample_key(folder: str | Path, prompts: list[Prompt], cfg: EvalConfig, model: ModelConfig,
                device: torch.device) -> str:  # fmt: skip
    """The sample cache's key for ``folder``'s replies as :func:`_sample_and_score` draws them on ``device``."""
    from components.decide import sample_cache

    return sample_cache.sample_key(Path(folder), prompts, cfg, model, cfg.bf16 and bf16_fast(device))


def keep_samples(paths: ProjectPaths, cfg: EvalConfig, model: ModelConfig, device: torch.device, prompts: list[Prompt],
                 sampled: list[tuple[str | Path, str, _Samples]]) -> None:  # fmt: skip
    """Keep each model's replies in the sample cache (``staging/samples/``) for a later comparison or evaluation
    (the next round's, where this candidate is the champion) to replay."""
    from components.decide import sample_cache

    for folder, version, s in sampled:
        key = _sample_key(folder, prompts, cfg, model, device)
        sample_cache.save(paths, key, version, s.texts, s.tokens, s.ended)


def replayed_samples(paths: ProjectPaths, folder: str | Path, prompts: list[Prompt], cfg: EvalConfig,
                     model: ModelConfig, device: torch.device, reward: Any) -> _Samples | None:  # fmt: skip
    """The replies the sample cache holds for ``folder`` under the current prompts and settings, scored by
    ``reward`` (None: not scored), or None when it holds none (no KL: it needs the token ids)."""
    from components.decide import sample_cache

    key = _sample_key(folder, prompts, cfg, model, device)
    record = sample_cache.load(paths, key, cfg.samples_per_prompt, len(prompts))
    if record is None:
        return None
    log.info("%s: replies replayed from %s", folder, paths.sample_cache / f"{key}.json")
    rewards = [] if reward is None else [reward(prompts, texts).float().cpu().tolist() for texts in record["texts"]]
    return _Samples(record["texts"], rewards, record["tokens"], record["ended"], [])


def model_loader(
    model: ModelConfig, device: torch.device
) -> Callable[[str | Path], tuple[PreTrainedModel, PreTrainedTokenizerBase]]:
    """``load(folder)``: the model and tokenizer in ``folder``, loaded once however often it is asked for."""
    from components.models.base_model import load_base

    loaded: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}

    def load(folder: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        key = str(Path(folder).resolve())
        if key not in loaded:
            loaded[key] = load_base(key, dtype=model.dtype, device=device)
        return loaded[key]

    return load


def evaluate(
    cfg: EvalConfig,
    paths: ProjectPaths,
    *,
    model: ModelConfig,
    candidate: str | Path,
    kl_target: float | None = None,
    demo_task: bool = False,
    progress: Progress | None = None,
) -> EvalResult:
    """The evaluate stage: the candidate policy folder against the registry's champion on held-out prompts.

    The base model is registered as the first champion if the registry has none. The reward model and the
    KL reference are the ones named in the candidate's manifest (``reward_model.spec``, ``base_dir``). The judge
    (``cfg.judge``) decides each comparison; ``demo_task`` is the project's ``seeding.demo_task`` (the demo judge
    refuses a project without it). A judge that cannot decide raises :class:`JudgeError` before anything is
    written (nothing is promoted).
    """
    from components.decide.eval_stats import overoptimised, pairwise_outcomes, win_rate_interval
    from components.models.base_model import accelerator_device, resolve_model_dir
    from components.models.reward.model import RewardModel
    from components.records import registry

    t0 = time.perf_counter()
    candidate = Path(candidate)
    manifest = json.loads((candidate / "manifest.json").read_text(encoding="utf-8"))
    rm_info = manifest.get("reward_model") or {}
    rm_path = paths.root / rm_info.get("spec", "models/reward")
    judge = eval_judge(cfg, paths, demo_task=demo_task, training_manifest=rm_path / "manifest.json")
    champ = registry.ensure_base_champion(paths, model.base, resolve_model_dir(model.base))
    prompts = read_prompt_file(paths.root / cfg.prompts)[: cfg.max_prompts]
    device = accelerator_device()

    # 1. models: candidate, champion, the candidate's KL reference (loaded once when folders coincide), RM
    load = model_loader(model, device)
    cand_model, tok = load(candidate)
    ref_dir = manifest.get("base_dir") or str(resolve_model_dir(manifest.get("base", model.base)))
    reference, _ = load(Path(ref_dir))
    rm = RewardModel.load(rm_path, device=device)

    # 2. sample and score: K seeded samples per prompt from each model; the champion's replies are replayed where
    # an earlier evaluation kept them (it was the last round's candidate: same files, prompts and settings)
    champ_s = replayed_samples(paths, champ.path, prompts, cfg, model, device, rm.score)
    replayed = champ_s is not None
    total = (1 + (not replayed)) * eval_batches(len(prompts), cfg)
    done = [0]

    def tick() -> None:
        done[0] += 1
        report(progress, done[0], total, "evaluating candidate and champion")

    with autocast(device, cfg.bf16):
        sys_prompt, static = model.system_prompt, model.static_cache
        cand = _sample_and_score(cand_model, reference, tok, prompts, rm.score, cfg, sys_prompt, tick, static)
        if champ_s is None:
            champ_model, champ_tok = load(champ.path)
            champ_s = _sample_and_score(champ_model, None, champ_tok, prompts, rm.score, cfg, sys_prompt, tick, static)
    fresh = [(candidate, manifest.get("version", candidate.name), cand)]
    fresh += [] if replayed else [(champ.path, champ.version, champ_s)]
    keep_samples(paths, cfg, model, device, prompts, fresh)

    # 3. judge: per prompt and sample, ties half; bootstrap over prompts; the training RM on the same pairs
    c_version = manifest.get("version", candidate.name)
    judged = judge_samples(judge, prompts, cand.texts, champ_s.texts, f"judge {judge.name}: candidate vs champion",
                           progress)  # fmt: skip
    outcomes = judged.outcomes  # shape: (P, K)
    rate, rate_fields = judged_win_rate(outcomes, cfg)
    rm_rate = float(pairwise_outcomes(np.array(cand.reward).T, np.array(champ_s.reward).T).mean())
    verdict_lines = _verdict_lines("candidate_vs_champion", prompts, cand.texts, champ_s.texts,
                                   (c_version, champ.version), judged, judge.name, lambda k: (k, k))  # fmt: skip

    # 4. A/A: the champion's sample 2i against its sample 2i+1 (other seeds): about 50 % if judge and interval
    # are sound
    aa: tuple[float, float, float] | None = None
    aa_n = 0
    if cfg.aa_check and cfg.samples_per_prompt >= 2:
        even, odd = champ_s.texts[0::2], champ_s.texts[1::2]
        even = even[: len(odd)]
        aa_j = judge_samples(judge, prompts, even, odd, f"judge {judge.name}: A/A (champion vs itself)", progress)
        aa = win_rate_interval(aa_j.outcomes, confidence=cfg.confidence, resamples=cfg.bootstrap_resamples,
                               seed=cfg.seed + 1)  # fmt: skip
        aa_n = aa_j.outcomes.size
        verdict_lines += _verdict_lines("aa", prompts, even, odd, (champ.version, champ.version), aa_j, judge.name,
                                        lambda k: (2 * k, 2 * k + 1))  # fmt: skip

    c_sum = _summary(c_version, cand, cfg, judged.scores_a)
    h_sum = _summary(champ.version, champ_s, cfg, judged.scores_b)
    flag = overoptimised(rm_rate - 0.5, rate - 0.5, cfg.overopt_tolerance)
    reverse = overoptimised(rate - 0.5, rm_rate - 0.5, cfg.overopt_tolerance)
    examples = [
        {"prompt": prompt_text(p), "candidate": c, "champion": h}
        for p, c, h in list(zip(prompts, cand.texts[0], champ_s.texts[0]))[:3]
    ]
    result = EvalResult(
        candidate=c_sum,
        champion=h_sum,
        candidate_path=str(candidate),
        prompts=len(prompts),
        samples_per_prompt=cfg.samples_per_prompt,
        **rate_fields,
        overoptimised=bool(flag),
        reward_version=rm_info.get("version"),
        reward_accuracy=rm_info.get("heldout_accuracy"),
        kl_target=kl_target,
        metrics_path=str(paths.eval_metrics),
        report_path=str(paths.eval_report),
        examples=examples,
        seconds=round(time.perf_counter() - t0, 1),
        judge=judge.describe(),
        judge_accuracy=judge.accuracy,
        judge_min_accuracy=cfg.judge_min_accuracy if judge.accuracy is not None else None,
        reward_win_rate=round(rm_rate, 6),
        judge_disagrees=bool(reverse),
        aa_win_rate=None if aa is None else round(aa[0], 6),
        aa_low=None if aa is None else round(aa[1], 6),
        aa_high=None if aa is None else round(aa[2], 6),
        aa_comparisons=aa_n,
        verdicts_path=str(paths.judge_verdicts),
        champion_replayed=replayed,
    )
    atomic_write_text(paths.judge_verdicts, "\n".join(verdict_lines) + "\n")
    atomic_write_text(paths.eval_metrics, json.dumps(asdict(result), indent=2) + "\n")
    atomic_write_text(paths.eval_report, eval_markdown(result))
    log.info("candidate %s vs champion %s: win rate by judge %s %.3f [%.3f, %.3f]",
             c_sum.version, h_sum.version, judge.name, rate, result.win_rate_low, result.win_rate_high)  # fmt: skip
    return result


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def eval_markdown(r: EvalResult) -> str:
    """A short Markdown report of an evaluation."""
    c, h = r.candidate, r.champion
    kl = "n/a" if c.kl is None else f"{c.kl:.3f}" + (f" (target {r.kl_target:g})" if r.kl_target else "")
    score = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    label = judge_label(r.judge)
    lines = [
        f"# Evaluation: candidate `{c.version}` vs champion `{h.version}`",
        "",
        f"{r.prompts} held-out prompts x {r.samples_per_prompt} seeded samples from each model; judge: **{label}**.",
        "",
        f"**Win rate of the candidate by the judge: {r.win_rate:.1%}** "
        f"({r.interval}: {r.win_rate_low:.1%} - {r.win_rate_high:.1%}); "
        f"{r.wins} wins, {r.ties} ties, {r.losses} losses.",
        "",
    ]
    if r.aa_win_rate is not None:
        lines += [
            f"A/A check (the champion judged against itself, other seeds; should read about 50 %): "
            f"{r.aa_win_rate:.1%} ({_pct(r.aa_low)} - {_pct(r.aa_high)}, {r.aa_comparisons} comparisons).",
            "",
        ]
    else:
        lines += ["A/A check: not measured (it needs eval.aa_check and eval.samples_per_prompt >= 2).", ""]
    if r.judge_accuracy is not None:
        ok = r.judge_min_accuracy is None or r.judge_accuracy >= r.judge_min_accuracy
        lines += [
            f"Judge held-out accuracy on human pairs: {r.judge_accuracy:.1%} (floor {_pct(r.judge_min_accuracy)})"
            + ("." if ok else ": **below the floor, the gate will not decide**."),
            "",
        ]
    lines += [
        "| metric | champion | candidate |",
        "| --- | --- | --- |",
        f"| judge score ({r.judge.get('name', 'judge')}) | {score(h.judge_score)} | {score(c.judge_score)} |",
        f"| reward-model score | {h.reward_score:.3f} | {c.reward_score:.3f} |",
        f"| reply length (tokens) | {h.mean_tokens:.1f} | {c.mean_tokens:.1f} |",
        f"| replies that end (EOS) | {h.eos_rate:.1%} | {c.eos_rate:.1%} |",
        f"| degenerate replies | {h.degenerate_rate:.1%} | {c.degenerate_rate:.1%} |",
        f"| KL to the reference (nats/reply) | - | {kl} |",
        "",
        f"Training reward model's win rate of the candidate on the same pairs: {_pct(r.reward_win_rate)}.",
        f"Over-optimisation (reward model prefers the candidate, judge the champion): "
        f"**{'yes' if r.overoptimised else 'no'}**; the reverse (judge prefers the candidate, reward model the "
        f"champion): **{'yes' if r.judge_disagrees else 'no'}**.",
        f"Reward model {r.reward_version or 'n/a'}, held-out accuracy {_pct(r.reward_accuracy)}.",
        f"Every verdict with its reason: `{r.verdicts_path}`.",
        "The champion's replies: "
        + (
            "replayed from the sample cache (an earlier evaluation drew them from the same "
            "model files, prompts and settings)."
            if r.champion_replayed
            else "sampled."
        ),
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
    from components.config.policy import PolicyConfig
    from components.config.seeding import SeedingConfig
    from components.decide.judges import JudgeError
    from components.models.policy.train import exported_policy

    parser = argparse.ArgumentParser(prog="python -m components.decide.evaluation", description=main.__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (sections eval, model)")
    parser.add_argument("--candidate", type=Path, default=None, help="policy folder (default: the last PPO export)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths(args.params.resolve().parent)
    cfg = load_section(EvalConfig, "eval", args.params)
    model_cfg = load_section(ModelConfig, "model", args.params)
    policy = load_section(PolicyConfig, "policy", args.params)
    candidate = args.candidate or exported_policy(paths.root)
    if candidate is None:
        print("evaluate: no exported policy (metrics/ppo.json); run the ppo stage first", file=sys.stderr)
        return 2
    kl_target = policy.controller_kl_target
    progress = log_progress(log, "evaluate batch")
    demo_task = load_section(SeedingConfig, "seeding", args.params).demo_task
    try:
        evaluate(cfg, paths, model=model_cfg, candidate=candidate, kl_target=kl_target, demo_task=demo_task,
                 progress=progress)  # fmt: skip
    except JudgeError as exc:
        print(f"evaluate: the judge could not decide: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
