"""The evaluation gate: may the candidate replace the champion? Every check is recorded as value vs threshold.

``gate`` is the stage function; :func:`checks` is the pure decision (unit-tested per check).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from components.common.fsutil import atomic_write_text
from components.config.gate import GateConfig
from components.decide.judges.base import judge_label
from components.project.paths import ProjectPaths

if TYPE_CHECKING:
    from components.decide.evaluation import EvalResult


@dataclass(frozen=True)
class GateCheck:
    """One check: its value, the threshold, and the reason in words."""

    name: str
    value: float | bool | None
    threshold: float | bool
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateResult:
    """The gate's decision and every check (JSON-serialisable)."""

    passed: bool
    candidate: str
    champion: str
    checks: list[GateCheck]
    report_path: str
    decided: bool = True
    """False when the gate refused to decide (the judge is not reliable enough); the candidate is not promoted."""
    decide_on: str = "point"
    """Which win-rate figure the decision used (``point`` or ``lower_bound``)."""
    judge: str = ""
    """The judge that decided: its name and what identifies it (the judge model's version, the LLM and its
    endpoint); its full settings are in the evaluation's ``judge``."""

    @property
    def reasons(self) -> list[str]:
        """The reasons of the failed checks (empty when the gate passed)."""
        return [c.reason for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return asdict(self)


def _judge_name(ev: EvalResult) -> str:
    return (ev.judge or {}).get("name") or "judge"


def win_rate_check(cfg: GateConfig, ev: EvalResult) -> GateCheck:
    """``min_win_rate`` on the point estimate or the interval's lower end (``decide_on``); both in the reason."""
    judge = _judge_name(ev)
    figure = ev.win_rate_low if cfg.decide_on == "lower_bound" else ev.win_rate
    which = "lower bound" if cfg.decide_on == "lower_bound" else "point estimate"
    ok = figure >= cfg.min_win_rate
    return GateCheck(
        f"win rate by {judge} vs champion ({which})",
        figure,
        cfg.min_win_rate,
        ok,
        f"win rate by {judge} {ev.win_rate:.1%} [{ev.win_rate_low:.1%}, {ev.win_rate_high:.1%}]: {which} "
        f"{figure:.1%} {'>=' if ok else '<'} minimum {cfg.min_win_rate:.1%}",
    )


def judge_reliability_check(ev: EvalResult) -> GateCheck | None:
    """The judge's own held-out accuracy against its floor (judges that have one); below it the gate refuses."""
    if ev.judge_accuracy is None:
        return None
    floor = ev.judge_min_accuracy if ev.judge_min_accuracy is not None else 0.0
    ok = ev.judge_accuracy >= floor
    judge = _judge_name(ev)
    reason = f"judge {judge} held-out accuracy {ev.judge_accuracy:.1%} {'>=' if ok else 'below'} floor {floor:.1%}"
    if not ok:
        reason += (
            ": the gate refuses to decide, the judge agrees with human labels too rarely to tell better from "
            "worse (more human pairs in its slice, reward.judge_fraction, or another judge)"
        )
    return GateCheck("judge held-out accuracy", ev.judge_accuracy, floor, ok, reason)


def agreement_check(cfg: GateConfig, ev: EvalResult) -> GateCheck:
    """The judge and the training reward model do not lean opposite ways (checked in both directions)."""
    judge = _judge_name(ev)
    flagged = ev.overoptimised or ev.judge_disagrees
    ok = not (cfg.block_overoptimisation and flagged)
    rm = "n/a" if ev.reward_win_rate is None else f"{ev.reward_win_rate:.1%}"
    figures = f"win rate by the training reward model {rm}, by {judge} {ev.win_rate:.1%}"
    if ev.overoptimised:
        reason = (
            f"over-optimisation flagged ({figures}): the reward model prefers the candidate, the judge the champion"
        )
    elif ev.judge_disagrees:
        reason = (
            f"over-optimisation check (reverse) flagged ({figures}): the judge prefers the candidate while the "
            "training reward model prefers the champion; the judge rewards what the human preferences did not"
        )
    else:
        reason = f"over-optimisation not flagged either way ({figures})"
    return GateCheck("judge and reward model agree", flagged, cfg.block_overoptimisation, ok, reason)


def checks(cfg: GateConfig, ev: EvalResult) -> list[GateCheck]:
    """Every check of the gate against one evaluation (in the order they are shown)."""
    out = []
    reliability = judge_reliability_check(ev)
    if reliability is not None:
        out.append(reliability)
    out.append(win_rate_check(cfg, ev))
    kl = ev.candidate.kl
    ok = kl is not None and kl <= cfg.max_kl
    shown = "unmeasured" if kl is None else f"{kl:.3f}"
    out.append(
        GateCheck("KL to reference", kl, cfg.max_kl, ok, f"KL {shown} {'<=' if ok else '>'} maximum {cfg.max_kl:g}")
    )
    d = ev.candidate.degenerate_rate
    ok = d <= cfg.max_degenerate_rate
    out.append(
        GateCheck(
            "degenerate replies",
            d,
            cfg.max_degenerate_rate,
            ok,
            f"degenerate replies {d:.1%} {'<=' if ok else '>'} maximum {cfg.max_degenerate_rate:.1%}",
        )
    )
    out.append(agreement_check(cfg, ev))
    accuracy = ev.reward_accuracy
    ok = accuracy is not None and accuracy >= cfg.min_reward_accuracy
    shown = "unmeasured" if accuracy is None else f"{accuracy:.1%}"
    out.append(
        GateCheck(
            "reward model held-out accuracy",
            accuracy,
            cfg.min_reward_accuracy,
            ok,
            f"reward model accuracy {shown} {'>=' if ok else 'below'} minimum {cfg.min_reward_accuracy:.1%}",
        )
    )
    return out


def gate(cfg: GateConfig, paths: ProjectPaths, *, evaluation: EvalResult) -> GateResult:
    """The gate stage: decide, write ``metrics/gate.json``; promotion or rejection is the registry stage's job."""
    found = checks(cfg, evaluation)
    reliable = all(c.passed for c in found if c.name == "judge held-out accuracy")
    result = GateResult(
        passed=all(c.passed for c in found),
        candidate=evaluation.candidate.version,
        champion=evaluation.champion.version,
        checks=found,
        report_path=str(paths.gate_report),
        decided=reliable,
        decide_on=cfg.decide_on,
        judge=judge_label(evaluation.judge or {}),
    )
    atomic_write_text(paths.gate_report, json.dumps(result.to_dict(), indent=2) + "\n")
    return result
