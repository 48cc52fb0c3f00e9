"""``rlhf demo``'s presentation and project setup: the demo itself is the ``demo`` flow (``flows/demo.py``).

Here: the demo project (a fresh git + DVC project, ``--quick`` sizes), the round-by-round table the CLI prints
from the flow's result, and where to look next.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

QUICK: dict[str, dict[str, Any]] = {
    "seeding": {"seed_prompts": 48, "replies_per_prompt": 4},
    "reward": {"epochs": 2},
    "policy": {"steps": 4, "batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 4},
    "eval": {"max_prompts": 20},
}
"""``--quick``: the same loop with less of everything (a smoke test in a few minutes)."""


def prepare_project(dest: Path, params: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """A project at ``dest`` made as ``rlhf init`` makes one (the package's pipeline, no code copied), holding
    ``params`` with ``overrides`` applied (the demo's: ``seeding.demo_task: true``); reused when it exists."""
    from components.project import create_project, set_params

    dest = Path(dest).resolve()
    if (dest / "dvc.yaml").is_file():
        return dest
    raw = yaml.safe_load(Path(params).read_text(encoding="utf-8")) or {}
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    paths = create_project(dest, model=(raw.get("model") or {}).get("base"))
    set_params(paths, raw, "the demo task's params")
    return paths.root


def round_table(rounds: list[dict[str, Any]]) -> Any:
    """One column per round: counts, reward-model accuracy, win rate with its interval, KL, decision, version."""
    from rich.table import Table

    table = Table(title="rlhf demo: the loop, round by round")
    table.add_column("")
    for r in rounds:
        table.add_column(r.get("label") or "round", justify="right")

    def cell(r: dict[str, Any], key: str) -> str:
        val, ev = r.get("validation") or {}, r.get("evaluation") or {}
        exp = r.get("exported") or {}
        acc = (r.get("reward") or {}).get("accuracy")
        values = {
            "feedback": "seed (demo annotator)"
            if r.get("seeded")
            else f"served: {exp.get('ratings', 0)} ratings, {exp.get('pairs', 0)} choices",
            "rows": f"{val.get('accepted', 0)} / {val.get('quarantined', 0)}",
            "data": (r.get("data_version") or "-")[:12],
            "acc": "-" if acc is None else f"{acc:.1%}",
            "against": ev.get("champion", "-"),
            "win": "-"
            if "win_rate" not in ev
            else f"{ev['win_rate']:.1%} [{ev['win_rate_low']:.1%}, {ev['win_rate_high']:.1%}]",
            "judge": (ev.get("judge") or {}).get("name", "-"),
            "score": "-"
            if ev.get("judge_candidate") is None
            else f"{ev['judge_candidate']:.3f} vs {ev['judge_champion']:.3f}",
            "aa": "-"
            if ev.get("aa_win_rate") is None
            else f"{ev['aa_win_rate']:.1%} [{ev['aa_low']:.1%}, {ev['aa_high']:.1%}]",
            "kl": "-"
            if ev.get("kl") is None
            else f"{ev['kl']:.2f}" + (f" (target {ev['kl_target']:g})" if ev.get("kl_target") else ""),
            "decision": r.get("decision", "-"),
            "candidate": r.get("candidate") or "-",
            "champion": r.get("champion_after") or "-",
            "time": f"{r.get('seconds', 0):.0f} s",
        }
        return values[key]

    for name, key in (
        ("feedback", "feedback"),
        ("rows accepted / quarantined", "rows"),
        ("data version", "data"),
        ("reward model held-out accuracy", "acc"),
        ("evaluated against", "against"),
        ("judge", "judge"),
        ("win rate by the judge [95 % interval]", "win"),
        ("A/A: champion vs itself (about 50 %)", "aa"),
        ("judge score candidate vs champion", "score"),
        ("KL to reference, nats/reply", "kl"),
        ("gate decision", "decision"),
        ("candidate version", "candidate"),
        ("champion after the round", "champion"),
        ("round time (CPU)", "time"),
    ):
        table.add_row(name, *(cell(r, key) for r in rounds))
    return table


def where_next(root: Path, service_note: str) -> str:
    prefect_home = os.environ.get("PREFECT_HOME", "~/.prefect")
    return "\n".join(
        [
            "Where to look next:",
            f"  Prefect UI (flow runs, task logs, artifacts): PREFECT_HOME={prefect_home} prefect server start, "
            "then http://127.0.0.1:4200",
            f"  evaluation report: {root / 'reports' / 'eval.md'}; gate: {root / 'metrics' / 'gate.json'}",
            f"  plots: {root / 'metrics'}/ppo_score.png, ppo_kl.png, reward_train.png (or `dvc plots show`)",
            "  models and their gate decisions: rlhf models; lineage of the champion: rlhf audit",
            f"  the pipeline's state: dvc status; dvc.lock; serve the champion again: rlhf serve ({service_note})",
        ]
    )
