"""Prefect artifacts for a retraining run: a Markdown summary (decision, reasons, links) and tables of counts
and metrics. Artifact keys are lowercase letters, digits and dashes."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

SUMMARY_KEY = "retrain-summary"
METRICS_KEY = "retrain-metrics"
TOURNAMENT_KEY = "retrain-tournament"
COMPARE_KEY = "champion-vs-base"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _win(ev: dict[str, Any]) -> str | None:
    if "win_rate" not in ev:
        return None
    return f"{ev['win_rate']:.1%} (95 % interval {ev['win_rate_low']:.1%} - {ev['win_rate_high']:.1%})"


def _judge(ev: dict[str, Any]) -> str | None:
    if not ev.get("judge"):
        return None
    from components.decide.judges.base import judge_label

    return judge_label(ev["judge"])


def _aa(ev: dict[str, Any]) -> str | None:
    if ev.get("aa_win_rate") is None:
        return None
    return f"{ev['aa_win_rate']:.1%} ({ev['aa_low']:.1%} - {ev['aa_high']:.1%})"


def metric_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per figure a reviewer looks at first: counts, reward accuracy, win rate, KL, decision."""
    from components.models.policy.metrics import steps_run

    val, ev = summary.get("validation") or {}, summary.get("evaluation") or {}
    exported = summary.get("exported") or {}
    reward = summary.get("reward") or {}
    kl = ev.get("kl")
    rows = [
        ("served ratings / pairs exported", f"{exported.get('ratings', 0)} / {exported.get('pairs', 0)}"),
        ("rows in", val.get("rows_in")),
        ("rows accepted", val.get("accepted")),
        ("rows quarantined", val.get("quarantined")),
        ("data version", summary.get("data_version")),
        ("prompt pool: train / held-out (served)", _pool(summary.get("prompts") or {})),
        ("raters (ratings / pairs each)", _raters(summary.get("raters") or {})),
        ("rater agreement: ratings alpha (replies) / choices (pairs)", _agreement(summary.get("raters") or {})),
        ("training stages run", ", ".join((summary.get("training") or {}).get("ran", [])) or "none (up to date)"),
        ("policy steps run", steps_run((summary.get("policy") or {}).get("metrics") or {})),
        ("reward model held-out accuracy", reward.get("accuracy")),
        ("reward model trained on from", reward.get("parent") or "the backbone"),
        ("candidate", summary.get("candidate")),
        ("judge", _judge(ev)),
        (f"win rate by the judge vs {ev.get('champion', 'champion')}", _win(ev)),
        ("A/A: champion vs itself (about 50 %)", _aa(ev)),
        ("judge score candidate / champion", _pair(ev.get("judge_candidate"), ev.get("judge_champion"))),
        ("KL to reference" + (f" (target {ev['kl_target']:g})" if ev.get("kl_target") else ""), kl),
        *((f"candidate {r['name']}", _tournament_row(r)) for r in summary.get("tournament") or []),
        ("decision", summary.get("decision")),
        ("champion", summary.get("champion_after")),
    ]
    return [{"figure": name, "value": _fmt(value)} for name, value in rows]


def _tournament_row(r: dict[str, Any]) -> str:
    """A tournament candidate in one cell: algorithm, win rate with its interval, KL, decision."""
    win = "-"
    if r.get("win_rate") is not None:
        win = f"{r['win_rate']:.1%} [{r['win_rate_low']:.1%}, {r['win_rate_high']:.1%}]"
    kl = "-" if r.get("kl") is None else f"{r['kl']:.2f}"
    return f"{r.get('algorithm') or '-'}: win {win}, KL {kl}, {r.get('decision')}"


def _pool(pool: dict[str, Any]) -> str | None:
    if "train" not in pool:
        return None
    return f"{pool['train']} / {pool['heldout']} ({(pool.get('by_source') or {}).get('served', 0)} served)"


RATERS_SHOWN = 4
"""Raters a round's row names one by one; the rest are summed (``rlhf audit`` lists every one)."""


def _raters(raters: dict[str, Any]) -> str | None:
    by_rater = list((raters.get("by_rater") or {}).items())
    shown = [f"{n} {c['ratings']} / {c['pairs']}" for n, c in by_rater[:RATERS_SHOWN]]
    rest = by_rater[RATERS_SHOWN:]
    if rest:
        ratings, pairs = sum(c["ratings"] for _, c in rest), sum(c["pairs"] for _, c in rest)
        shown.append(f"{len(rest)} more {ratings} / {pairs}")
    return ", ".join(shown) or None


def _agreement(raters: dict[str, Any]) -> str | None:
    if not raters:
        return None
    return (
        f"{_fmt(raters.get('ratings_alpha'))} ({raters.get('replies_rated_more_than_once', 0)}) / "
        f"{_fmt(raters.get('choice_agreement'))} ({raters.get('pairs_judged_more_than_once', 0)})"
    )


def _pair(a: Any, b: Any) -> str | None:
    return None if a is None else f"{_fmt(a)} / {_fmt(b)}"


def markdown(summary: dict[str, Any]) -> str:
    gate = summary.get("gate") or {}
    lines = [
        f"# Retrain {summary.get('label') or ''}".rstrip(),
        "",
        f"**Decision: {summary.get('decision')}** (champion {summary.get('champion_before')} -> "
        f"{summary.get('champion_after')}); data version `{summary.get('data_version')}`; "
        f"{summary.get('seconds', 0):.0f} s.",
        "",
    ]
    human = summary.get("human") or {}
    if human:
        lines += [f"People on canary (human judge): {human.get('reason')}", ""]
    checks = gate.get("checks") or []
    if checks:
        lines += ["| gate check | value | threshold | result | reason |", "| --- | --- | --- | --- | --- |"]
        for c in checks:
            result = "pass" if c.get("passed") else "**fail**"
            lines.append(
                f"| {c.get('name')} | {_fmt(c.get('value'))} | {_fmt(c.get('threshold'))} | {result} | "
                f"{c.get('reason', '')} |"
            )
        lines.append("")
    training = summary.get("training") or {}
    lines.append(
        f"Training ran {training.get('where', '?')}: stages run {training.get('ran') or 'none'}, skipped as up to "
        f"date {training.get('skipped') or 'none'}."
    )
    if summary.get("service"):
        lines.append(f"Service: {summary['service']}.")
    links = summary.get("links") or {}
    if links:
        lines += ["", "Reports and plots:", ""] + [f"- {name}: `{path}`" for name, path in links.items()]
    return "\n".join(lines) + "\n"


def publish_summary(summary: dict[str, Any]) -> None:
    create_table_artifact(key=METRICS_KEY, table=metric_rows(summary), description="retrain: counts and metrics")
    create_markdown_artifact(key=SUMMARY_KEY, markdown=markdown(summary), description="retrain: decision")


def publish_tournament(rows: list[dict[str, Any]], label: str = "") -> None:
    """The round's candidates side by side (recipe, win rate with interval, Holm-adjusted p, KL, time, decision)."""
    from components.decide.tournament import markdown as tournament_markdown

    title = f"Tournament {label}".rstrip()
    create_markdown_artifact(key=TOURNAMENT_KEY, markdown=tournament_markdown(rows, title),
                             description="retrain: the candidates compared")  # fmt: skip


def publish_comparison(result: dict[str, Any]) -> None:
    """A comparison of two models (``components.decide.compare``) as a Markdown artifact."""
    from components.decide.compare import CompareResult, compare_markdown
    from components.stages import result_from_dict

    create_markdown_artifact(key=COMPARE_KEY, markdown=compare_markdown(result_from_dict(CompareResult, result)),
                             description="the final champion against the base")  # fmt: skip
