"""Compare any two policies on the evaluate stage's terms: ``rlhf compare A B`` (e.g. ``champion`` vs ``base``).

:func:`compare` samples ``eval.samples_per_prompt`` seeded replies per held-out prompt from A and from B (sample k
of both drawn with the same seed, as the evaluate stage draws them), asks the configured judge (``eval.judge``)
about every (prompt, sample), and reports A's win rate over B (ties half) with the same percentile bootstrap over
prompts, each model's mean judge score, reward-model score, reply length and EOS rate, and A's KL to B per reply
(the exact KL of the next-token distributions summed along A's own samples, as the evaluate stage measures a
candidate's KL to its reference).

It is a read-only audit: it writes only under ``reports/compare/`` (git-ignored, no DVC stage's output, so the
evaluate stage's ``metrics/eval.json`` and reports, which the gate reads, stay as they were) and registers or
promotes nothing.

Names (:func:`resolve_policy`): ``champion`` (the registry's current champion), ``base`` (the registry's base
entry, the first champion; the unregistered base model before any round), any registered policy version, a
version folder under ``models/policy/``, or a folder holding a transformers model.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from components.common.fsutil import atomic_write_text
from components.common.progress import Progress, report
from components.config.evaluation import EvalConfig
from components.config.model import ModelConfig
from components.decide.evaluation import ModelEval
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)


class CompareError(ValueError):
    """A comparison that cannot run (an unknown name, a judge that needs people), with what to do."""


@dataclass(frozen=True)
class ResolvedPolicy:
    """A name given to ``rlhf compare`` and the model folder it stands for."""

    name: str
    """As asked (``champion``, ``base``, a version, a folder)."""
    version: str
    """The registry version, the manifest's version for a policy folder, else the folder's name."""
    path: str
    """The transformers folder."""
    source: str
    """``registry``, ``policy folder``, ``folder`` or ``base model (unregistered)``."""


def _is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file()


def resolve_policy(paths: ProjectPaths, model: ModelConfig, name: str) -> ResolvedPolicy:
    """The model folder behind ``name``; :class:`CompareError` naming what exists when nothing matches."""
    from components.records import registry

    policies = registry.list_models(paths, "policy")
    by_version = {r.version: r for r in policies}
    if name == "champion":
        champ = registry.champion(paths)
        if champ is None:
            raise CompareError(f"champion: the registry at {paths.registry} has no champion yet; run a round first "
                               "(`rlhf retrain` or `rlhf demo`) or name a folder")  # fmt: skip
        return ResolvedPolicy(name, champ.version, str(champ.path), "registry")
    if name == "base":
        roots = [r for r in policies if r.parent is None]
        wanted = registry.base_version(model.base)
        entry = by_version.get(wanted) or (roots[0] if roots else None)
        if entry is not None:
            return ResolvedPolicy(name, entry.version, str(entry.path), "registry")
        from components.models.base_model import resolve_model_dir

        return ResolvedPolicy(name, wanted, str(resolve_model_dir(model.base)), "base model (unregistered)")
    if name in by_version:
        return ResolvedPolicy(name, name, str(by_version[name].path), "registry")
    folder = paths.policies / name
    if "/" not in name and _is_model_folder(folder):
        return ResolvedPolicy(name, _folder_version(folder), str(folder), "policy folder")
    folder = Path(name).expanduser()
    if not folder.is_absolute():
        folder = (Path.cwd() / folder) if _is_model_folder(Path.cwd() / folder) else paths.root / folder
    if _is_model_folder(folder):
        return ResolvedPolicy(name, _folder_version(folder), str(folder.resolve()), "folder")
    known = ", ".join(f"{r.version} ({r.status})" for r in policies) or "none registered yet"
    raise CompareError(
        f"{name!r}: not a model version or model folder. Name one of: champion, base, a registered policy version "
        f"({known}), or a folder holding a transformers model (config.json) (registry: {paths.registry})"
    )


def _folder_version(folder: Path) -> str:
    manifest = folder / "manifest.json"
    if manifest.is_file():
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        if version:
            return str(version)
    return folder.name


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare` measured (JSON-serialisable). ``a.kl`` is A's KL to B; ``b.kl`` is None."""

    a: ModelEval
    b: ModelEval
    a_name: str
    b_name: str
    a_path: str
    b_path: str
    prompts: int
    samples_per_prompt: int
    comparisons: int
    """``prompts`` x ``samples_per_prompt``; ``wins + ties + losses``."""
    win_rate: float
    """The judge's win rate of A over B (ties count half)."""
    win_rate_low: float
    win_rate_high: float
    interval: str
    wins: int
    ties: int
    losses: int
    identical: bool
    """A and B are the same folder: B's samples are A's (every comparison a tie, the KL 0)."""
    replayed: list[str]
    """The sides (``a``, ``b``) whose replies were read from the sample cache (what the evaluation drew from the same
    model files with the same prompts and settings, :mod:`components.decide.sample_cache`), not sampled again."""
    reward_version: str | None
    """The training reward model that scored both (``models/reward``), None where the project has none or none was
    asked for."""
    judge: dict[str, Any] = field(default_factory=dict)
    judge_parts: dict[str, dict[str, float]] = field(default_factory=dict)
    """For a judge whose score is a weighted sum of named parts (the demo annotator): ``weights`` and each side's
    mean part over its replies (``a``, ``b``), so the judge scores' difference is the sum over parts of weight x
    (a - b): what the win is made of. Empty for other judges."""
    seconds: float = 0.0
    json_path: str = ""
    report_path: str = ""
    verdicts_path: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "model"


def compare(
    cfg: EvalConfig,
    paths: ProjectPaths,
    *,
    model: ModelConfig,
    a: str,
    b: str,
    demo_task: bool = False,
    kl: bool = True,
    reward_scores: bool = True,
    progress: Progress | None = None,
) -> CompareResult:
    """A against B on the held-out prompts with the evaluate stage's judge, seeds, samples and interval.

    ``a`` and ``b`` are names :func:`resolve_policy` knows. ``demo_task`` is the project's ``seeding.demo_task``
    (the demo judge refuses a project without it). ``kl``: also A's KL to B (a forward pass of each model over A's
    samples; without it ``a.kl`` is None). ``reward_scores``: also each model's mean score under the project's
    training reward model (replayed replies are scored again). Writes ``reports/compare/<A>-vs-<B>.json``, ``.md`` and
    ``.verdicts.jsonl`` (A and B by version) and nothing else."""
    from components.decide.evaluation import (
        _sample_and_score,
        _summary,
        _verdict_lines,
        eval_batches,
        eval_judge,
        judge_samples,
        judged_win_rate,
        keep_samples,
        model_loader,
        read_prompt_file,
        replayed_samples,
    )
    from components.models.base_model import accelerator_device
    from components.models.precision import autocast

    t0 = time.perf_counter()
    if cfg.judge == "human":
        raise CompareError("eval.judge is human: people judge only a candidate on canary; compare with an automatic "
                           "judge (demo, reward_model or llm: `rlhf compare --judge ...`)")  # fmt: skip
    pa, pb = resolve_policy(paths, model, a), resolve_policy(paths, model, b)
    judge = eval_judge(cfg, paths, demo_task=demo_task, training_manifest=paths.reward_model / "manifest.json")
    prompts = read_prompt_file(paths.root / cfg.prompts)[: cfg.max_prompts]
    device = accelerator_device()

    # 1. models: A, B (once when the folders coincide) and the project's training reward model where it has one
    load = model_loader(model, device)  # on first use: replayed replies without the KL need no model
    identical = Path(pa.path).resolve() == Path(pb.path).resolve()
    rm_version, reward = None, None
    if reward_scores and (paths.reward_model / "manifest.json").is_file():
        from components.models.reward.model import RewardModel

        rm_manifest = json.loads((paths.reward_model / "manifest.json").read_text(encoding="utf-8"))
        rm_version, reward = rm_manifest.get("version"), RewardModel.load(paths.reward_model, device=device).score
    # A's KL to B is only defined over one vocabulary
    with_kl = kl and (identical or load(pa.path)[1].get_vocab() == load(pb.path)[1].get_vocab())

    # 2. sample and score: sample k of A and of B with the same seed; B's are A's when they are one folder. Replies
    # the evaluation kept under the same fingerprint (model files, prompts, settings) are replayed, not resampled;
    # A's only without the KL, which needs its token ids
    replay = {
        "a": None if with_kl else replayed_samples(paths, pa.path, prompts, cfg, model, device, reward),
        "b": None if identical else replayed_samples(paths, pb.path, prompts, cfg, model, device, reward),
    }
    to_sample = (replay["a"] is None) + (not identical and replay["b"] is None)
    total = max(1, to_sample * eval_batches(len(prompts), cfg))
    done = [0]

    def tick() -> None:
        done[0] += 1
        report(progress, done[0], total, f"sampling {pa.version} and {pb.version}")

    def sample(folder: str, reference: Any) -> Any:
        policy, tok = load(folder)
        return _sample_and_score(policy, reference, tok, prompts, reward, cfg, model.system_prompt, tick,
                                 model.static_cache)  # fmt: skip

    with autocast(device, cfg.bf16):
        sa = replay["a"] or sample(pa.path, load(pb.path)[0] if with_kl else None)
        sb = sa if identical else replay["b"] or sample(pb.path, None)
    fresh = [(pa.path, pa.version, sa)] if replay["a"] is None else []
    fresh += [(pb.path, pb.version, sb)] if replay["b"] is None and not identical else []
    keep_samples(paths, cfg, model, device, prompts, fresh)

    # 3. judge every (prompt, sample); ties half; bootstrap over prompts
    judged = judge_samples(judge, prompts, sa.texts, sb.texts, f"judge {judge.name}: {pa.version} vs {pb.version}",
                           progress)  # fmt: skip
    outcomes = judged.outcomes  # shape: (P, K)
    rate, rate_fields = judged_win_rate(outcomes, cfg)
    out = paths.compare_reports
    stem = f"{_slug(pa.version)}-vs-{_slug(pb.version)}"
    result = CompareResult(
        a=_summary(pa.version, sa, cfg, judged.scores_a),
        b=_summary(pb.version, sb, cfg, judged.scores_b),
        a_name=pa.name,
        b_name=pb.name,
        a_path=pa.path,
        b_path=pb.path,
        prompts=len(prompts),
        samples_per_prompt=cfg.samples_per_prompt,
        comparisons=int(outcomes.size),
        **rate_fields,
        identical=identical,
        replayed=[side for side in ("a", "b") if replay[side] is not None],
        reward_version=rm_version,
        judge=judge.describe(),
        judge_parts=judge_parts(judge, prompts, sa.texts, sb.texts),
        seconds=round(time.perf_counter() - t0, 1),
        json_path=str(out / f"{stem}.json"),
        report_path=str(out / f"{stem}.md"),
        verdicts_path=str(out / f"{stem}.verdicts.jsonl"),
    )
    lines = _verdict_lines("a_vs_b", prompts, sa.texts, sb.texts, (pa.version, pb.version), judged, judge.name,
                           lambda k: (k, k))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(result.verdicts_path), "\n".join(lines) + "\n")
    atomic_write_text(Path(result.json_path), json.dumps(asdict(result), indent=2) + "\n")
    atomic_write_text(Path(result.report_path), compare_markdown(result))
    log.info("%s vs %s: win rate by judge %s %.3f [%.3f, %.3f] over %d comparisons in %.0f s", pa.version,
             pb.version, judge.name, rate, result.win_rate_low, result.win_rate_high, result.comparisons,
             result.seconds)  # fmt: skip
    return result


def judge_parts(judge: Any, prompts: list[Any], texts_a: list[list[str]], texts_b: list[list[str]]) -> dict:
    """``weights`` and the mean of each part of the judge's score over A's and over B's replies (texts [K][P]);
    {} when the judge's score has no parts."""
    weights = judge.part_weights
    if not weights:
        return {}
    out: dict[str, dict[str, float]] = {"weights": dict(weights)}
    for side, texts in (("a", texts_a), ("b", texts_b)):
        parts = judge.parts([p for _ in texts for p in prompts], [t for row in texts for t in row])
        out[side] = {k: round(fmean(x[k] for x in parts), 6) for k in weights}
    return out


def part_contributions(judge_parts: dict[str, dict[str, float]]) -> list[tuple[str, float, float, float, float]]:
    """``(part, weight, A's mean, B's mean, weight x (A - B))`` for each part of the judge's score that either side
    has (a ``judge_parts`` of :class:`CompareResult`); [] without parts."""
    if not judge_parts:
        return []
    w, a, b = judge_parts["weights"], judge_parts["a"], judge_parts["b"]
    return [(k, w[k], a[k], b[k], w[k] * (a[k] - b[k])) for k in w if a[k] or b[k]]


def compare_markdown(r: CompareResult) -> str:
    """A short Markdown report of a comparison."""
    from components.decide.judges.base import judge_label

    num = lambda x, f="{:.3f}": "-" if x is None else f.format(x)  # noqa: E731
    a, b = r.a, r.b
    return "\n".join([
        f"# Comparison: `{a.version}` ({r.a_name}) vs `{b.version}` ({r.b_name})",
        "",
        f"{r.prompts} held-out prompts x {r.samples_per_prompt} seeded samples from each model (sample k of both with "
        f"the same seed); judge: **{judge_label(r.judge)}**. Read-only: nothing was registered or promoted.",
        "",
        f"**Win rate of `{a.version}` by the judge: {r.win_rate:.1%}** ({r.interval}: {r.win_rate_low:.1%} - "
        f"{r.win_rate_high:.1%}); {r.wins} wins, {r.ties} ties, {r.losses} losses in {r.comparisons} comparisons.",
        "",
        f"| metric | {b.version} | {a.version} |",
        "| --- | --- | --- |",
        f"| judge score ({r.judge.get('name', 'judge')}) | {num(b.judge_score)} | {num(a.judge_score)} |",
        f"| reward-model score ({r.reward_version or 'none'}) | {num(b.reward_score)} | {num(a.reward_score)} |",
        f"| reply length (tokens) | {b.mean_tokens:.1f} | {a.mean_tokens:.1f} |",
        f"| replies that end (EOS) | {b.eos_rate:.1%} | {a.eos_rate:.1%} |",
        f"| degenerate replies | {b.degenerate_rate:.1%} | {a.degenerate_rate:.1%} |",
        f"| KL of A to B (nats/reply) | - | {num(a.kl)} |",
        "",
        *_parts_markdown(r),
        f"Folders: A `{r.a_path}`, B `{r.b_path}`. Replies replayed from the evaluation's sample cache (same model "
        f"files, prompts and settings): {', '.join(r.replayed).upper() or 'none'}. Every verdict: `{r.verdicts_path}`. "
        f"{r.seconds:.0f} s.",
        "",
    ])  # fmt: skip


def _parts_markdown(r: CompareResult) -> list[str]:
    """The judge score by part (mean over each side's replies), with each part's share of the difference."""
    rows = [f"| {k} | {w:+g} | {b:.3f} | {a:.3f} | {d:+.3f} |" for k, w, a, b, d in part_contributions(r.judge_parts)]
    if not rows:
        return []
    return [
        f"Judge score by part (the score is the sum of weight x part; mean over each model's {r.comparisons} replies):",
        "",
        f"| part | weight | {r.b.version} | {r.a.version} | weight x (A - B) |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
