"""The ``sweep`` flow (``rlhf sweep``): a grid or list of ``policy`` overrides, each recipe trained and evaluated
against the champion with the retrain flow's own tasks, a table and the best recipe as a params file.

The inputs every recipe shares come first, as in a retraining round: the champion pointer, the reward model and
the judge model (DVC stages, skipped when up to date). Then, for each recipe, the tasks a tournament's extra
candidate runs (``train-candidate``, ``evaluate-candidate-vs-champion``, ``gate``), one recipe at a time (a CPU
trains one model at a time; each is its own task run in the Prefect UI). Each recipe keeps its state in
``models/candidates/<name>/``: a rerun after a crash reuses the recipes already trained on the same inputs and
continues an unfinished one from its last checkpoint. Nothing is registered or promoted: a sweep measures; the
next retrain decides (docs/tournaments.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.project.paths import ProjectPaths
from flows.retrain import (
    champion_pointer,
    decide_tournament,
    evaluate_extra,
    gate_candidate,
    train_candidate,
    train_judge,
    train_reward_model,
)

SWEEP_KEY = "sweep"


@flow(name="sweep", log_prints=True)
def sweep(project: str | None = None, axes: list[str] | None = None, zip_axes: bool = False) -> dict[str, Any]:
    """Train and evaluate every recipe of ``axes`` (``policy.KEY=V1,V2`` each: their grid, or with ``zip_axes``
    the i-th values together) on the project at ``project`` (default: the checkout holding ``params.yaml``)."""
    from components.config import to_dict
    from components.config.flow import load_flow_config
    from components.decide import tournament

    t0 = time.perf_counter()
    paths = ProjectPaths(Path(project).resolve()) if project else ProjectPaths.discover()
    root, params = str(paths.root), str(paths.params)
    recipes = tournament.sweep_recipes(axes or [], zip_axes=zip_axes)
    cfg = load_flow_config(paths.params)
    opts = {"retries": cfg.retries, "retry_delay_seconds": cfg.retry_delay_s}

    # 1. what every recipe shares: the starting point, the reward model, the judge
    champion_pointer.with_options(**opts)(root, params)
    train_reward_model.with_options(**opts)(root)
    train_judge.with_options(**opts)(root)

    # 2. each recipe: trained, evaluated against the champion, gated (the tournament's tasks)
    entrants, policies = [], []
    for recipe in recipes:
        name = recipe.name
        policy = train_candidate.with_options(**opts, task_run_name=f"train-candidate-{name}")(root, to_dict(recipe))
        ev = evaluate_extra.with_options(**opts, task_run_name=f"evaluate-candidate-{name}")(root, name, policy)
        gate = gate_candidate(root, params, ev, name)
        entrants.append({"name": name, "evaluation": ev, "gate": gate})
        policies.append(policy)

    # 3. the table: the gate with the win-rate test corrected over the recipes; the best as a params file
    gates = decide_tournament(root, params, entrants) if len(entrants) > 1 else [e["gate"] for e in entrants]
    rows = [
        tournament.row(r.name, tournament.recipe_dict(r), p, e["evaluation"], g, _verdict(g))
        for r, p, e, g in zip(recipes, policies, entrants, gates)
    ]
    result = tournament.write_sweep(paths, recipes, rows)
    create_markdown_artifact(key=SWEEP_KEY, markdown=tournament.markdown(rows, "Sweep"), description="rlhf sweep")
    return asdict(result) | {"seconds": round(time.perf_counter() - t0, 1)}


def _verdict(gate: dict[str, Any]) -> str:
    """``best``, ``passes`` (every check but being the best) or ``fails`` (a gate check)."""
    failed = [c["name"] for c in gate["checks"] if not c["passed"]]
    return "best" if gate["passed"] else "passes" if failed == ["best candidate of the tournament"] else "fails"
