"""Seed feedback for the demo task: sample replies from the base policy, let the gold annotator pick pairs.

Steps: (1) copy the bundled prompts into the prompt pool's sources (``data/prompts/sources/demo.jsonl``);
(2) sample ``replies_per_prompt`` replies for each of ``seed_prompts`` prompts the pool trains on, in batches;
(3) score every reply with the gold annotator; (4) per prompt, the best reply is chosen over the worst non-empty
one, and with ``pairs_per_prompt`` > 1 the 2nd best over the 2nd worst and so on (margin = the gold-score gap;
pairs whose gap is under ``min_gold_gap`` are not made); (5) validate the pairs and append
them to the versioned store, which makes a DVC version.

As stages (:func:`sample_seed` -> :func:`label_seed` -> :func:`ingest_seed`), each step writes its output to
``staging/seed/`` named by a fingerprint of its inputs, so a retried step reuses what an earlier try made and a
retry never samples again.

Sampling best-vs-worst of k policy samples follows the on-policy comparison collection of Ziegler et al. 2019
(humans compared samples of the policy being trained) with a scripted labeller in place of people.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.common.fsutil import atomic_write_text
from components.common.progress import Progress, report
from components.config import to_dict
from components.config.model import ModelConfig
from components.config.seeding import SeedingConfig
from components.config.validation import ValidationConfig
from components.data.feedback.schema import PAIRS
from components.data.feedback.store import IngestResult, IngestSummary, ingest_frame, summarise_ingest
from components.demo_task import gold, load_prompts
from components.models.generation import generate
from components.models.precision import autocast
from components.project.paths import ProjectPaths

log = logging.getLogger(__name__)

SEED_SOURCE = "demo-seed"
GOLD_ANNOTATOR = "gold"


def write_prompt_files(paths: ProjectPaths) -> Path:
    """The bundled prompts as a prompt file of the pool (``data/prompts/sources/demo.jsonl``); the pool built at
    the next data version splits them train / held-out by hash like any other prompt."""
    from components.data.prompt_pool import sources_dir

    path = sources_dir(paths) / "demo.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in load_prompts()), encoding="utf-8")
    return path


def train_prompts(paths: ProjectPaths, n: int | None = None) -> list[str]:
    """The first ``n`` bundled prompts that the project's pool puts in train (never a held-out one)."""
    from components.data.feedback.store import pool_config
    from components.data.prompt_pool import is_heldout

    fraction = pool_config(paths).heldout_fraction
    return [p["prompt"] for p in load_prompts() if not is_heldout(p["prompt"], fraction)][:n]


def sample_replies(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: SeedingConfig,
    *,
    system: str | None,
    progress: Progress | None = None,
) -> list[list[str]]:
    """``cfg.replies_per_prompt`` sampled replies for each prompt; a prompt's replies share one batch and one
    encoding of the prompt (its KV cache is copied), batches hold about ``cfg.batch_size`` replies, and the
    forward passes run under bf16 autocast where the device computes bf16 natively (``cfg.bf16``)."""
    k = cfg.replies_per_prompt
    per_batch = max(1, cfg.batch_size // k)  # prompts per batch
    starts = range(0, len(prompts), per_batch)
    texts: list[str] = []
    for i, start in enumerate(starts):
        report(progress, i, len(starts), "sampling seed replies")
        with autocast(model.device, cfg.bf16):
            out = generate(
                model,
                tok,
                prompts[start : start + per_batch],
                system=system,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                generator_seed=cfg.seed + i,
                samples_per_prompt=k,
            )
        texts += out.texts
    report(progress, len(starts), len(starts), "sampling seed replies")
    return [texts[j * k : (j + 1) * k] for j in range(len(prompts))]


def label_pairs(
    prompts: list[str], replies: list[list[str]], cfg: SeedingConfig, progress: Progress | None = None
) -> tuple[pd.DataFrame, dict]:
    """Pairs by gold score (raw pairs rows) and labelling statistics.

    Per prompt the distinct non-empty replies are ranked; pair q (q = 0 .. ``pairs_per_prompt`` - 1) is the
    q-th best over the q-th worst, so a prompt's pairs share no reply and the first has the widest gap.
    """
    rows, gaps, best_scores, worst_scores = [], [], [], []
    skipped = 0
    now = pd.Timestamp.now(tz="UTC")
    for i, (prompt, options) in enumerate(zip(prompts, replies)):
        report(progress, i, len(prompts), "gold-labelling seed replies")
        distinct = list(dict.fromkeys(r for r in options if r.strip()))
        scored = sorted(((gold.score(prompt, r), r) for r in distinct), key=lambda t: -t[0])
        made = 0
        for q in range(min(cfg.pairs_per_prompt, len(scored) // 2)):
            (best, chosen), (worst, rejected) = scored[q], scored[-1 - q]
            if best - worst < cfg.min_gold_gap:
                break  # the gaps only shrink from here
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "source": SEED_SOURCE,
                    "annotator": GOLD_ANNOTATOR,
                    "created_at": now.isoformat(),
                    "margin": round(best - worst, 6) if cfg.with_margin else None,
                }
            )
            gaps.append(best - worst)
            best_scores.append(best)
            worst_scores.append(worst)
            made += 1
        skipped += made == 0
    report(progress, len(prompts), len(prompts), "gold-labelling seed replies")
    stats = {
        "prompts": len(prompts),
        "replies": sum(len(r) for r in replies),
        "pairs": len(rows),
        "skipped_prompts": skipped,
        "mean_gold_gap": round(sum(gaps) / len(gaps), 4) if gaps else None,
        "mean_gold_chosen": round(sum(best_scores) / len(rows), 4) if rows else None,
        "mean_gold_rejected": round(sum(worst_scores) / len(rows), 4) if rows else None,
    }
    return pd.DataFrame(rows), stats


@dataclass
class SeedResult:
    """The seeded feedback: labelling statistics and the ingest (validation counts, data version)."""

    stats: dict
    ingest: IngestResult
    seconds: float


def seed_demo_feedback(
    paths: ProjectPaths,
    cfg: SeedingConfig,
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    *,
    system: str | None,
    limits: ValidationConfig | None = None,
    report_dir: Path | None = None,
    push: bool = True,
    progress: Progress | None = None,
) -> SeedResult:
    """Write the prompt files, sample + label seed pairs, validate and store them as a new DVC version."""
    start = time.perf_counter()
    write_prompt_files(paths)
    prompts = train_prompts(paths, cfg.seed_prompts)
    replies = sample_replies(model, tok, prompts, cfg, system=system, progress=progress)
    frame, stats = label_pairs(prompts, replies, cfg)
    log.info("gold annotator labelled %d pairs from %d replies", stats["pairs"], stats["replies"])
    if frame.empty:
        frame = pd.DataFrame(columns=["prompt", "chosen", "rejected"])
    limits = limits or ValidationConfig()
    ingest = ingest_frame(
        frame, PAIRS, paths, limits, origin=SEED_SOURCE, source=SEED_SOURCE, report_dir=report_dir, push=push
    )
    return SeedResult(stats, ingest, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# The seed stages: sample -> label -> ingest (each reusable on retry)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSample:
    """Sampled seed replies on disk (``staging/seed/replies-<fingerprint>.json``)."""

    path: str
    prompts: int
    replies: int
    reused: bool
    """True when an earlier try had already sampled them (nothing was sampled again)."""
    seconds: float


@dataclass(frozen=True)
class SeedLabels:
    """Gold-labelled seed pairs on disk (``staging/seed/pairs-<fingerprint>.jsonl``) and labelling statistics."""

    path: str
    pairs: int
    stats: dict[str, Any]


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def sample_seed(
    cfg: SeedingConfig, paths: ProjectPaths, *, model: ModelConfig, progress: Progress | None = None
) -> SeedSample:
    """Sample ``replies_per_prompt`` replies for the first ``seed_prompts`` train prompts with the base model.

    Writes the prompt files, then the replies; when the replies file for these settings exists already it is
    reused, so a retry never samples again.
    """
    from components.models.base_model import accelerator_device, load_base

    t0 = time.perf_counter()
    write_prompt_files(paths)
    prompts = train_prompts(paths, cfg.seed_prompts)
    fp = _fingerprint(to_dict(cfg), to_dict(model), prompts)
    out = paths.seed_work / f"replies-{fp}.json"
    if out.is_file():
        log.info("reusing sampled seed replies in %s", out)
        n = sum(len(r) for r in json.loads(out.read_text(encoding="utf-8"))["replies"])
        return SeedSample(str(out), len(prompts), n, True, round(time.perf_counter() - t0, 1))
    policy, tok = load_base(model.base, dtype=model.dtype, device=accelerator_device())
    replies = sample_replies(policy, tok, prompts, cfg, system=model.system_prompt, progress=progress)
    atomic_write_text(out, json.dumps({"prompts": prompts, "replies": replies}))
    n = sum(len(r) for r in replies)
    return SeedSample(str(out), len(prompts), n, False, round(time.perf_counter() - t0, 1))


def label_seed(
    cfg: SeedingConfig, paths: ProjectPaths, *, sample: SeedSample, progress: Progress | None = None
) -> SeedLabels:
    """Let the gold annotator rank each prompt's replies and write the pairs (best over worst) as JSONL."""
    data = json.loads(Path(sample.path).read_text(encoding="utf-8"))
    frame, stats = label_pairs(data["prompts"], data["replies"], cfg, progress)
    log.info("gold annotator labelled %d pairs from %d replies", stats["pairs"], stats["replies"])
    out = Path(sample.path).with_name(Path(sample.path).name.replace("replies-", "pairs-") + "l")
    lines = frame.to_json(orient="records", lines=True) if len(frame) else ""
    atomic_write_text(out, lines)
    return SeedLabels(str(out), int(stats["pairs"]), stats)


def _already_ingested(paths: ProjectPaths, origin: str) -> dict | None:
    if not paths.data_versions.is_file():
        return None
    for line in reversed(paths.data_versions.read_text(encoding="utf-8").splitlines()):
        entry = json.loads(line) if line.strip() else {}
        if entry.get("origin") == origin:
            return entry
    return None


def ingest_seed(
    cfg: ValidationConfig, paths: ProjectPaths, *, labels: SeedLabels, report_dir: Path | None = None, push: bool = True
) -> IngestSummary:
    """Validate the labelled pairs (Great Expectations) and store them as a new DVC version of ``data/``.

    A labels file that was ingested already is not stored again (its earlier ingest is returned, ``reused``)."""
    label_file = Path(labels.path)
    origin = str(label_file.relative_to(paths.root)) if label_file.is_relative_to(paths.root) else labels.path
    done = _already_ingested(paths, origin)
    if done is not None:
        return IngestSummary(
            kind=done["kind"], rows_in=done["rows_in"], accepted=done["accepted"], quarantined=done["quarantined"],
            by_reason=done["by_reason"], version=done["version"], previous_version=done["previous_version"],
            totals=done["totals"], report=None, reused=True,
        )  # fmt: skip
    text = Path(labels.path).read_text(encoding="utf-8")
    frame = pd.read_json(labels.path, lines=True, convert_dates=False, dtype=False) if text.strip() else pd.DataFrame()
    if frame.empty:
        frame = pd.DataFrame(columns=["prompt", "chosen", "rejected"])
    ingest = ingest_frame(frame, PAIRS, paths, cfg, origin=origin, source=SEED_SOURCE, report_dir=report_dir, push=push)
    return summarise_ingest(ingest)
