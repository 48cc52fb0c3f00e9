"""``rlhf demo``'s presentation and project setup: the demo itself is the ``demo`` flow (``flows/demo.py``).

Here: the demo's project (made as ``rlhf init`` makes one, with the demo task switched on, in a folder of its
own: never the code checkout), ``--quick`` sizes, the round-by-round table the CLI prints from the flow's result,
and where to look next.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

DEMO_PARAMS = REPO / "params.yaml"
"""The demo's params in a source checkout (the values ``rlhf demo`` writes into its project); an installed package
without a checkout uses every section's defaults with :data:`DEMO_CHOICES` (the same values, tested)."""

DEMO_CHOICES: dict[str, dict[str, Any]] = {"policy": {"algorithm": "dpo"}, "reward": {"init_from": "champion"}}
"""Where :data:`DEMO_PARAMS` differs from the sections' defaults: the demo's measured choice of optimiser (offline
DPO; a project made with ``rlhf init`` keeps the default, PPO; docs/benchmarks.md, "Choosing the demo's
optimiser"), and its reward model trained on from the champion's each round (one pass instead of three from the
backbone; docs/benchmarks.md, "The reward model trained on from the champion's")."""

DEMO_TASK: dict[str, dict[str, Any]] = {"seeding": {"demo_task": True}}
"""What makes a project the demo: the demo task switched on (seed prompts and feedback, the demo judge)."""

QUICK: dict[str, dict[str, Any]] = {
    "seeding": {"seed_prompts": 48, "replies_per_prompt": 4},
    "reward": {"epochs": 2},
    "policy": {"steps": 4, "batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 4},
    "eval": {"max_prompts": 20},
}
"""``--quick``: the same loop with less of everything (a smoke test in a few minutes)."""


def demo_folder(quick: bool = False) -> Path:
    """Where ``rlhf demo`` keeps its project unless ``--project`` says otherwise: ``demo/`` (``demo-quick/``) at
    the root of the source checkout the code runs from (ignored by its git), else under ``$RLHF_HOME``.

    Not the checkout itself: a project versions its data and params in its own git + DVC, so the demo run in the
    checkout changed its tracked files and every model recorded a ``-dirty`` code revision."""
    from components.project.paths import rlhf_home

    name = "demo-quick" if quick else "demo"
    in_checkout = (REPO / "pyproject.toml").is_file() and (REPO / ".git").exists()
    return REPO / name if in_checkout else rlhf_home() / name


def demo_params(source: Path | None, quick: bool = False) -> dict[str, Any]:
    """The demo project's params: ``source`` (default: :data:`DEMO_PARAMS`, else every section's defaults) with
    the demo task switched on, and the ``--quick`` sizes when asked."""
    if source is None and DEMO_PARAMS.is_file():
        source = DEMO_PARAMS
    if source is not None:
        raw = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    else:
        from components.config import to_dict
        from components.project.params import SECTIONS

        raw = {name: to_dict(cls()) for name, cls in SECTIONS.items()}
        for section, values in DEMO_CHOICES.items():
            raw[section].update(values)
    for overrides in (DEMO_TASK, QUICK if quick else {}):
        for section, values in overrides.items():
            raw.setdefault(section, {}).update(values)
    return raw


def prepare_project(dest: Path, raw: dict[str, Any], *, sync: bool = True) -> Path:
    """The demo's project at ``dest``, made as ``rlhf init`` makes one (the package's pipeline, no code copied)
    and holding the params ``raw``. An existing project is reused (its data, models and registry kept); with
    ``sync`` its params become ``raw`` (committed) when they differ, so the demo always runs the current params."""
    from components.project.params import params_from_dict
    from components.project.paths import ProjectPaths
    from components.project.scaffold import create_project, set_params

    dest = Path(dest).resolve()
    if (dest / "dvc.yaml").is_file():
        paths = ProjectPaths(dest)
        current = yaml.safe_load(paths.params.read_text(encoding="utf-8")) if paths.params.is_file() else None
        if sync and current != raw:
            set_params(paths, raw, "the demo's params")
        return dest
    params_from_dict(raw)  # a bad params file fails before a folder is made
    paths = create_project(dest, model=(raw.get("model") or {}).get("base"))
    set_params(paths, raw, "the demo task's params")
    return paths.root


def round_table(rounds: list[dict[str, Any]]) -> Any:
    """One column per round: counts, reward-model accuracy, win rate with its interval, KL, decision, version."""
    from rich.table import Table

    from components.models.policy.metrics import steps_run

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
            else f"served: {exp.get('ratings', 0)} ratings, {exp.get('pairs', 0)} choices, "
            f"{exp.get('prompts', 0)} prompts",
            "rows": f"{val.get('accepted', 0)} / {val.get('quarantined', 0)}",
            "data": (r.get("data_version") or "-")[:12],
            "acc": ("-" if acc is None else f"{acc:.1%}")
            + (" (trained on from the champion's)" if (r.get("reward") or {}).get("parent") else ""),
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
            "steps": steps_run((r.get("policy") or {}).get("metrics") or {}) or "-",
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
        ("policy steps run", "steps"),
        ("gate decision", "decision"),
        ("candidate version", "candidate"),
        ("champion after the round", "champion"),
        ("round time (CPU)", "time"),
    ):
        table.add_row(name, *(cell(r, key) for r in rounds))
    return table


def which_champion(rounds: list[dict[str, Any]]) -> str:
    """Which round the demo's final champion came from, in words."""
    last = rounds[-1]
    promoted = [r for r in rounds if r.get("champion_after") and r.get("champion_after") == r.get("candidate")]
    if not promoted:
        return "the base: no round promoted a candidate"
    if promoted[-1] is last:
        return f"{last.get('label') or 'the last round'}'s candidate, promoted"
    champion = promoted[-1].get("label") or "an earlier round"
    return f"{champion}'s champion; {last.get('label')} was {last.get('decision')}"


def where_next(root: Path, service_note: str) -> str:
    prefect_home = os.environ.get("PREFECT_HOME", "~/.prefect")
    return "\n".join(
        [
            f"Where to look next (the demo's project: {root}):",
            f"  Prefect UI (flow runs, task logs, artifacts): PREFECT_HOME={prefect_home} prefect server start, "
            "then http://127.0.0.1:4200",
            f"  evaluation report: {root / 'reports' / 'eval.md'}; gate: {root / 'metrics' / 'gate.json'}",
            f"  plots: {root / 'metrics'}/ppo_score.png, ppo_kl.png, reward_train.png (or `dvc plots show`)",
            f"  models and their gate decisions: rlhf --project {root} models; "
            f"lineage of the champion: rlhf --project {root} audit",
            f"  the pipeline's state: cd {root} && dvc status; dvc.lock; "
            f"serve the champion again: rlhf --project {root} serve ({service_note})",
        ]
    )
