"""The ``human`` judge (``eval.judge: human``): people compare the candidate with the champion on canary.

The retrain flow registers the candidate, then :func:`await_human_verdict` puts it on canary
(``live/canary.json``, :mod:`components.decide.canary`; the running service picks it up at its next poll) and waits,
counting in the served-output store the raters' choices between a reply of the candidate and one of the
champion to the same message (the rater page's compare tab asks ``POST /compare`` for one of each, blind, in
random order). Once ``eval.human_judge.comparisons`` have arrived it returns their win rate (ties half) with a
percentile-bootstrap interval over comparisons, which :func:`human_evaluation` puts in place of the offline
judge's figures so the same gate decides. Past the deadline with fewer there is no decision: the champion stays.
Either way the candidate leaves canary.

Resumable: the comparisons live in the store and the deadline in the canary assignment, so a restarted flow
picks up the choices already made and keeps the first deadline.

In the evaluate stage itself (KL, degenerate replies, the reward model's figures) this judge answers every
comparison with a tie: people decide, not that stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common.fsutil import atomic_write_text
from components.common.progress import Progress
from components.config.judges import HumanJudgeConfig
from components.decide import canary
from components.decide.eval_stats import overoptimised, win_rate_interval
from components.decide.judges.base import VALUE, Comparison, Judge, Verdict
from components.project.paths import ProjectPaths

if TYPE_CHECKING:
    from components.config.evaluation import EvalConfig
    from components.config.serve import ServeConfig
    from components.decide.evaluation import EvalResult

log = logging.getLogger(__name__)


class HumanJudge(Judge):
    """Stands in for people inside the evaluate stage (a tie each); the decision comes from the canary."""

    name = "human"

    def __init__(self, cfg: HumanJudgeConfig | None = None):
        self.cfg = cfg or HumanJudgeConfig()

    def compare_many(self, items: Sequence[Comparison], on_done: Callable[[int], None] | None = None) -> list[Verdict]:
        if on_done:
            on_done(len(items))
        reason = "people decide on canary (eval.human_judge); no offline verdict"
        return [Verdict("tie", reason) for _ in items]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.cfg)}


@dataclass(frozen=True)
class HumanTally:
    """The human comparisons counted so far (outcomes are the candidate's)."""

    comparisons: int
    wins: int
    ties: int
    losses: int
    raters: int
    win_rate: float | None
    low: float | None
    high: float | None


def tally(
    outcomes: Sequence[str], raters: Sequence[str], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> HumanTally:
    """Win rate (ties half) of ``outcomes`` with a percentile-bootstrap interval, each comparison one unit
    (Efron & Tibshirani 1993, ch. 13); no rate without comparisons."""
    values = np.array([VALUE[o] for o in outcomes], dtype=float)  # shape: (N,)
    rate = low = high = None
    if values.size:
        rate, low, high = win_rate_interval(values, confidence=confidence, resamples=resamples, seed=seed)
    return HumanTally(
        comparisons=int(values.size),
        wins=int((values == 1.0).sum()),
        ties=int((values == 0.5).sum()),
        losses=int((values == 0.0).sum()),
        raters=len(set(raters)),
        win_rate=None if rate is None else round(rate, 6),
        low=None if low is None else round(low, 6),
        high=None if high is None else round(high, 6),
    )


@dataclass(frozen=True)
class HumanVerdict:
    """What the wait came to: a decision on enough comparisons, or none (with why)."""

    decided: bool
    candidate: str
    champion: str
    needed: int
    tally: HumanTally
    reason: str
    since: float
    """When the candidate went on canary (seconds since the epoch)."""
    deadline: float
    waited_s: float
    """Seconds this call waited (a resumed wait counts from its own start)."""


def await_human_verdict(
    cfg: HumanJudgeConfig,
    paths: ProjectPaths,
    *,
    candidate: str,
    champion: str,
    store_url: str,
    confidence: float = 0.95,
    resamples: int = 2000,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    progress: Progress | None = None,
) -> HumanVerdict:
    """Put ``candidate`` on canary and wait for ``cfg.comparisons`` human choices against ``champion`` (or the
    deadline); take it off canary either way. ``candidate`` must be registered (the service loads it)."""
    from components.data.served_store import open_store

    # 1. on canary, or the assignment a restarted run left (its deadline holds)
    start = clock()
    current = canary.read_assignment(paths)
    if current is not None and current.version == candidate and current.deadline is not None:
        since, deadline = current.since, current.deadline
        log.info("human judge: %s is on canary since %.0f; resuming the wait", candidate, since)
    else:
        deadline = start + cfg.deadline_s
        reason = f"human judge: {cfg.comparisons} comparisons against {champion}"
        since = canary.assign(paths, candidate, cfg.canary_share, reason=reason, deadline=deadline).since

    # 2. count the comparisons in the store until there are enough or the deadline passes
    store = open_store(store_url)
    try:
        while True:
            rows = store.version_comparisons(candidate, champion)
            if progress is not None:
                progress(min(len(rows), cfg.comparisons), cfg.comparisons, f"{len(rows)} human comparisons")
            if len(rows) >= cfg.comparisons or clock() >= deadline:
                break
            sleep(max(0.0, min(cfg.poll_s, deadline - clock())))
    finally:
        store.close()

    # 3. off canary; decide only on enough comparisons
    canary.clear(paths, candidate)
    counted = tally([r["outcome"] for r in rows], [r["annotator"] for r in rows], confidence=confidence,
                    resamples=resamples)  # fmt: skip
    decided = counted.comparisons >= cfg.comparisons
    if decided:
        reason = (
            f"{counted.comparisons} human comparisons by {counted.raters} rater(s): candidate win rate "
            f"{counted.win_rate:.1%} [{counted.low:.1%}, {counted.high:.1%}]"
        )
    else:
        reason = (
            f"no decision: {counted.comparisons} of {cfg.comparisons} human comparisons had arrived by the deadline "
            f"({cfg.deadline_s:g} s after the candidate went on canary); the champion stays. Ask raters to use the "
            "rater page's compare tab (the service must be running and polling: serve.reload_poll_seconds > 0), or "
            "raise eval.human_judge.deadline_s / lower eval.human_judge.comparisons"
        )
    log.info("human judge, %s vs %s: %s", candidate, champion, reason)
    verdict = HumanVerdict(decided, candidate, champion, cfg.comparisons, counted, reason, since, deadline,
                           round(clock() - start, 3))  # fmt: skip
    atomic_write_text(paths.reports / "human_judge.json", json.dumps(asdict(verdict), indent=2) + "\n")
    return verdict


def human_evaluation(ev: EvalResult, verdict: HumanVerdict, *, overopt_tolerance: float = 0.02) -> EvalResult:
    """The evaluation with the people's win rate and interval in place of the offline judge's (KL, degenerate
    replies and the reward model's figures stay), so the same gate decides on it."""
    t = verdict.tally
    if not verdict.decided or t.win_rate is None or t.low is None or t.high is None:
        raise ValueError(f"no human decision to evaluate on: {verdict.reason}")
    rm = ev.reward_win_rate
    return dataclasses.replace(
        ev,
        win_rate=t.win_rate,
        win_rate_low=t.low,
        win_rate_high=t.high,
        interval="percentile bootstrap over human comparisons",
        wins=t.wins,
        ties=t.ties,
        losses=t.losses,
        judge={"name": "human", "comparisons": t.comparisons, "raters": t.raters, "needed": verdict.needed},
        overoptimised=rm is not None and overoptimised(rm - 0.5, t.win_rate - 0.5, overopt_tolerance),
        judge_disagrees=rm is not None and overoptimised(t.win_rate - 0.5, rm - 0.5, overopt_tolerance),
        aa_win_rate=None,
        aa_low=None,
        aa_high=None,
        aa_comparisons=0,
    )


@dataclass(frozen=True)
class HumanJudgeResult:
    """The ``human`` judge stage's result: the verdict, and the evaluation with the people's figures when decided."""

    decided: bool
    reason: str
    verdict: dict[str, Any]
    """:class:`HumanVerdict` as a dict."""
    evaluation: EvalResult | None
    """The evaluation to gate on (the people's win rate and interval); None without a decision."""


def judge_by_humans(
    cfg: EvalConfig,
    serve: ServeConfig,
    paths: ProjectPaths,
    *,
    policy: str,
    evaluation: EvalResult,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    progress: Progress | None = None,
) -> HumanJudgeResult:
    """The ``human`` judge stage: register the candidate policy at ``policy`` (so the service can load it), put
    it on canary, wait for the people's comparisons with the champion, and return the evaluation to gate on."""
    from components.data.served_store import store_url
    from components.records import registry

    manifest = json.loads((Path(policy) / "manifest.json").read_text(encoding="utf-8"))
    candidate = evaluation.candidate.version
    registry.register(paths, candidate, Path(policy), parent=manifest.get("parent"), reason="on canary for people")
    verdict = await_human_verdict(
        cfg.human_judge,
        paths,
        candidate=candidate,
        champion=evaluation.champion.version,
        store_url=store_url(serve, paths),
        confidence=cfg.confidence,
        resamples=cfg.bootstrap_resamples,
        clock=clock,
        sleep=sleep,
        progress=progress,
    )
    judged = human_evaluation(evaluation, verdict, overopt_tolerance=cfg.overopt_tolerance) if verdict.decided else None
    return HumanJudgeResult(verdict.decided, verdict.reason, asdict(verdict), judged)
