"""The evaluation gate: may the candidate replace the champion? Every check is recorded as value vs threshold.

``gate`` is the stage function; :func:`checks` is the pure decision (unit-tested per check).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from components.fsutil import atomic_write_text
from components.paths import ProjectPaths

if TYPE_CHECKING:
    from components.evaluation import EvalResult


@dataclass(frozen=True)
class GateConfig:
    """Thresholds a candidate must meet to be promoted (``params.yaml`` section ``gate``)."""

    min_win_rate: float = 0.55
    """Minimum gold-annotator win rate against the champion (ties half; the point estimate)."""
    max_kl: float = 6.0
    """Maximum KL of the candidate to its reference, nats per reply (1.5 x PPO's default target of 4: the
    held-out KL of one evaluation scatters by about +-0.5 nats around the trained value)."""
    max_degenerate_rate: float = 0.15
    """Maximum share of the candidate's replies that are empty or repetitive."""
    block_overoptimisation: bool = True
    """Refuse a candidate whose reward-model score rose while its gold score fell."""
    min_reward_accuracy: float = 0.6
    """Minimum held-out preference accuracy of the reward model the candidate was trained against."""

    def __post_init__(self) -> None:
        for name in ("min_win_rate", "max_degenerate_rate", "min_reward_accuracy"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_kl < 0:
            raise ValueError(f"max_kl must be >= 0, got {self.max_kl}")


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

    @property
    def reasons(self) -> list[str]:
        """The reasons of the failed checks (empty when the gate passed)."""
        return [c.reason for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return asdict(self)


def checks(cfg: GateConfig, ev: EvalResult) -> list[GateCheck]:
    """Every check of the gate against one evaluation (in the order they are shown)."""
    out = []
    w = ev.win_rate
    ok = w >= cfg.min_win_rate
    out.append(
        GateCheck(
            "gold win rate vs champion",
            w,
            cfg.min_win_rate,
            ok,
            f"gold win rate {w:.1%} [{ev.win_rate_low:.1%}, {ev.win_rate_high:.1%}] "
            f"{'>=' if ok else '<'} minimum {cfg.min_win_rate:.1%}",
        )
    )
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
    flagged = ev.overoptimised
    ok = not (cfg.block_overoptimisation and flagged)
    delta_rm = ev.candidate.reward_score - ev.champion.reward_score
    delta_gold = ev.candidate.gold_score - ev.champion.gold_score
    out.append(
        GateCheck(
            "no over-optimisation",
            flagged,
            cfg.block_overoptimisation,
            ok,
            f"over-optimisation {'flagged' if flagged else 'not flagged'} (reward model {delta_rm:+.3f}, "
            f"gold {delta_gold:+.3f})" + ("" if ok else ": the reward model is being gamed"),
        )
    )
    acc = ev.reward_accuracy
    ok = acc is not None and acc >= cfg.min_reward_accuracy
    shown = "unmeasured" if acc is None else f"{acc:.1%}"
    out.append(
        GateCheck(
            "reward model held-out accuracy",
            acc,
            cfg.min_reward_accuracy,
            ok,
            f"reward model accuracy {shown} {'>=' if ok else 'below'} minimum {cfg.min_reward_accuracy:.1%}",
        )
    )
    return out


def gate(cfg: GateConfig, paths: ProjectPaths, *, evaluation: EvalResult) -> GateResult:
    """The gate stage: decide, write ``metrics/gate.json``; promotion or rejection is the registry stage's job."""
    found = checks(cfg, evaluation)
    result = GateResult(
        passed=all(c.passed for c in found),
        candidate=evaluation.candidate.version,
        champion=evaluation.champion.version,
        checks=found,
        report_path=str(paths.gate_report),
    )
    atomic_write_text(paths.gate_report, json.dumps(result.to_dict(), indent=2) + "\n")
    return result
