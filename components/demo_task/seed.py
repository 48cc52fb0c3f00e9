"""Seed feedback for the demo task: sample replies from the base policy, let the gold annotator pick pairs.

Steps: (1) copy the bundled prompts to ``data/prompts/{train,heldout}.jsonl``; (2) sample
``replies_per_prompt`` replies for each of ``seed_prompts`` train prompts, in batches; (3) score every reply
with the gold annotator; (4) per prompt, the best reply is chosen over the worst non-empty one, and with
``pairs_per_prompt`` > 1 the 2nd best over the 2nd worst and so on (margin = the gold-score gap; pairs whose gap
is under ``min_gold_gap`` are not made); (5) validate the pairs and append
them to the versioned store, which makes a DVC version.

Sampling best-vs-worst of k policy samples follows the on-policy comparison collection of Ziegler et al. 2019
(humans compared samples of the policy being trained) with a scripted labeller in place of people.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.demo_task import gold, load_prompts
from components.feedback.config import DataConfig
from components.feedback.schema import PAIRS
from components.feedback.store import IngestResult, ingest_frame
from components.generation import generate
from components.paths import ProjectPaths

log = logging.getLogger(__name__)

SEED_SOURCE = "demo-seed"
GOLD_ANNOTATOR = "gold"


def write_prompt_files(paths: ProjectPaths) -> dict[str, Path]:
    """``data/prompts/train.jsonl`` and ``heldout.jsonl``: one ``{"prompt": ...}`` per line."""
    paths.prompts.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "heldout"):
        path = paths.prompts / f"{split}.jsonl"
        lines = [json.dumps({"prompt": p["prompt"]}) for p in load_prompts(split)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out[split] = path
    return out


def sample_replies(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: DataConfig,
    *,
    system: str | None,
    progress: bool = True,
) -> list[list[str]]:
    """``cfg.replies_per_prompt`` sampled replies for each prompt (copies of a prompt share a batch)."""
    requests = [p for p in prompts for _ in range(cfg.replies_per_prompt)]
    texts: list[str] = []
    starts = range(0, len(requests), cfg.batch_size)
    for i, start in enumerate(tqdm(starts, desc="seed replies", unit="batch", disable=not progress)):
        batch = requests[start : start + cfg.batch_size]
        out = generate(
            model,
            tok,
            batch,
            system=system,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            generator_seed=cfg.seed + i,
        )
        texts += out.texts
    k = cfg.replies_per_prompt
    return [texts[j * k : (j + 1) * k] for j in range(len(prompts))]


def label_pairs(prompts: list[str], replies: list[list[str]], cfg: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Pairs by gold score (raw pairs rows) and labelling statistics.

    Per prompt the distinct non-empty replies are ranked; pair q (q = 0 .. ``pairs_per_prompt`` - 1) is the
    q-th best over the q-th worst, so a prompt's pairs share no reply and the first has the widest gap.
    """
    rows, gaps, best_scores, worst_scores = [], [], [], []
    skipped = 0
    now = pd.Timestamp.now(tz="UTC")
    for prompt, options in zip(prompts, replies):
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
    cfg: DataConfig,
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    *,
    system: str | None,
    report_dir: Path | None = None,
    push: bool = True,
    progress: bool = True,
) -> SeedResult:
    """Write the prompt files, sample + label seed pairs, validate and store them as a new DVC version."""
    start = time.perf_counter()
    write_prompt_files(paths)
    prompts = [p["prompt"] for p in load_prompts("train")[: cfg.seed_prompts]]
    replies = sample_replies(model, tok, prompts, cfg, system=system, progress=progress)
    frame, stats = label_pairs(prompts, replies, cfg)
    log.info("gold annotator labelled %d pairs from %d replies", stats["pairs"], stats["replies"])
    if frame.empty:
        frame = pd.DataFrame(columns=["prompt", "chosen", "rejected"])
    ingest = ingest_frame(
        frame, PAIRS, paths, cfg, origin=SEED_SOURCE, source=SEED_SOURCE, report_dir=report_dir, push=push
    )
    return SeedResult(stats, ingest, time.perf_counter() - start)
