"""Prefect artifacts for a retraining run: a Markdown summary (decision, reasons, links) and tables of counts
and metrics. Artifact keys are lowercase letters, digits and dashes."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

SUMMARY_KEY = "retrain-summary"
METRICS_KEY = "retrain-metrics"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def metric_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per figure a reviewer looks at first: counts, reward accuracy, PPO, evaluation, gate."""
    val, ev = summary.get("validation") or {}, summary.get("evaluation") or {}
    reward_eval = (summary.get("reward") or {}).get("eval") or {}
    policy = summary.get("policy") or {}
    rows = [
        ("served ratings exported", (summary.get("exported") or {}).get("ratings")),
        ("served pairs exported", (summary.get("exported") or {}).get("pairs")),
        ("rows in", val.get("rows_in")),
        ("rows accepted", val.get("accepted")),
        ("rows quarantined", val.get("quarantined")),
        ("data version", summary.get("data_version")),
        ("stages run", ", ".join((summary.get("training") or {}).get("ran", [])) or "none (up to date)"),
        ("reward model held-out accuracy", reward_eval.get("accuracy")),
        ("PPO final KL", policy.get("objective/kl") or policy.get("kl")),
    ]
    rows += [(f"evaluation: {k}", v) for k, v in ev.items() if not isinstance(v, (dict, list))]
    rows += [("decision", summary.get("decision")), ("champion", summary.get("champion_after"))]
    return [{"figure": name, "value": _fmt(value)} for name, value in rows]


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
    reasons = gate.get("reasons") or []
    if reasons:
        lines += ["| gate check | value | threshold | passed |", "| --- | --- | --- | --- |"]
        for r in reasons:
            lines.append(
                f"| {r.get('name')} | {_fmt(r.get('value'))} | {_fmt(r.get('threshold'))} | {r.get('passed')} |"
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
