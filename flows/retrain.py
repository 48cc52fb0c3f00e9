"""The ``retrain`` flow: served feedback -> validate -> version -> reward model -> PPO -> evaluate -> gate ->
promote or reject -> tell the service.

Each step is a thin Prefect task around a stage function or a DVC stage. The training steps run through
``dvc repro`` (one DVC command at a time per repository), so a rerun with unchanged data, params and code skips
them and ``dvc.lock`` records what ran. A step that still fails after its retries fails the flow run, and
nothing is promoted: promotion is the last step and runs only after a passing gate.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.paths import ProjectPaths
from flows import dvc_steps
from flows.config import FlowConfig, load_flow_config
from flows.report import publish_summary
from flows.routing import TRAIN_FLOW_NAME, training_route

log = logging.getLogger(__name__)


@dataclass
class RetrainSummary:
    """What one run did, JSON-serialisable (the CLI prints it, artifacts show it)."""

    project: str
    label: str = ""
    data_version: str | None = None
    previous_data_version: str | None = None
    exported: dict[str, int] = field(default_factory=dict)
    """Served outputs exported by kind (ratings, pairs) before validation."""
    validation: dict[str, Any] = field(default_factory=dict)
    """rows_in / accepted / quarantined / by_reason, summed over what this run ingested."""
    seeded: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    """Where training ran, the DVC stages that ran, and those skipped as up to date."""
    reward: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    decision: str = "not reached"
    """promoted / rejected / unchanged (nothing new to evaluate) / not reached (the run failed before the gate)."""
    champion_before: str | None = None
    champion_after: str | None = None
    service: str = ""
    links: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# --- tasks: a few lines each around a component or a DVC stage ------------------------------------------------


@task(name="seed-feedback", cache_policy=NO_CACHE)
def seed_feedback(root: str, params: str) -> dict[str, Any]:
    """Round one on an empty store: sample replies from the base policy, gold-label pairs, validate, version."""
    from components.base_model import load_base
    from components.config import ModelConfig, load_section
    from components.demo_task.seed import seed_demo_feedback
    from components.feedback.config import DataConfig

    paths = ProjectPaths(Path(root))
    model_cfg = load_section(ModelConfig, "model", Path(params))
    model, tok = load_base(model_cfg.base, dtype=model_cfg.dtype)
    seeded = seed_demo_feedback(
        paths,
        load_section(DataConfig, "data", Path(params)),
        model,
        tok,
        system=model_cfg.system_prompt,
        report_dir=paths.reports / "seed-validation",
        progress=False,
    )
    get_run_logger().info("seeded %s pairs: data version %s", seeded.stats["pairs"], seeded.ingest.version)
    return {"stats": seeded.stats, "ingest": seeded.ingest.summary()}


@task(name="export-served-feedback", cache_policy=NO_CACHE)
def export_served_feedback(root: str, params: str) -> dict[str, Any]:
    """Feedback on served outputs since the last export (the store's watermark), as feedback files."""
    from flows.served import export_new_feedback

    return export_new_feedback(ProjectPaths(Path(root)), Path(params))


@task(name="validate-and-version", cache_policy=NO_CACHE)
def validate_and_version(root: str, params: str, exported: dict[str, Any]) -> dict[str, Any]:
    """Great Expectations validation of the exported rows, then one DVC version of ``data/`` per kind."""
    from flows.served import ingest_exported

    return ingest_exported(ProjectPaths(Path(root)), Path(params), exported)


@task(name="train-reward-model", cache_policy=NO_CACHE)
def train_reward_model(root: str) -> list[str]:
    """``dvc repro train_reward``: skipped when pairs, reward params and code are unchanged."""
    return dvc_steps.repro(Path(root), "train_reward", echo=get_run_logger().info)


@task(name="train-policy-ppo", cache_policy=NO_CACHE)
def train_policy(root: str) -> list[str]:
    """``dvc repro ppo``: skipped when the reward model, prompts, params and code are unchanged."""
    return dvc_steps.repro(Path(root), "ppo", echo=get_run_logger().info)


@flow(name=TRAIN_FLOW_NAME, persist_result=True, log_prints=True)
def train_models(root: str, retries: int = 1, retry_delay_s: float = 5.0) -> dict[str, Any]:
    """Reward model then PPO, as DVC stages: what a GPU work pool's worker runs for the ``retrain`` flow."""
    opts = {"retries": retries, "retry_delay_seconds": retry_delay_s}
    ran = train_reward_model.with_options(**opts)(root)
    ran += train_policy.with_options(**opts)(root)
    return {"ran": ran, "skipped": [s for s in ("train_reward", "ppo") if s not in ran]}


@task(name="train-on-work-pool", cache_policy=NO_CACHE)
def train_on_pool(root: str, deployment: str, cfg: FlowConfig) -> dict[str, Any]:
    """Run the training deployment on its work pool and wait for it; a failed run fails this task."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters={"root": root, "retries": cfg.retries, "retry_delay_s": cfg.retry_delay_s},
        timeout=cfg.train_timeout_s,
        poll_interval=2,
    )
    state = run.state
    if state is None or not state.is_completed():
        name = state.name if state else "unknown"
        raise RuntimeError(f"training run {run.name} of {deployment} ended {name}: see it in the Prefect UI")
    return state.result()


# --- the flow --------------------------------------------------------------------------------------------------


@flow(name="retrain", log_prints=True)
def retrain(
    project: str | None = None,
    params: str | None = None,
    seed_if_empty: bool = False,
    label: str = "",
) -> dict[str, Any]:
    """One retraining round on the project at ``project`` (default: the checkout holding ``params.yaml``)."""
    t0 = time.perf_counter()
    paths = ProjectPaths(Path(project).resolve()) if project else ProjectPaths.discover()
    root, params_path = str(paths.root), str(Path(params).resolve() if params else paths.params)
    cfg = load_flow_config(Path(params_path))
    summary = RetrainSummary(project=root, label=label)
    opts = {"retries": cfg.retries, "retry_delay_seconds": cfg.retry_delay_s}

    # 1. feedback: seed an empty store (round one), or export what users rated since the last run
    if seed_if_empty and not paths.pairs.is_file():
        summary.seeded = seed_feedback.with_options(**opts)(root, params_path)
        summary.validation = _counts(summary.seeded["ingest"])
    exported = export_served_feedback.with_options(**opts)(root, params_path)
    summary.exported = exported["counts"]
    ingested = validate_and_version.with_options(**opts)(root, params_path, exported)
    summary.validation = _add_counts(summary.validation, ingested["validation"])
    summary.data_version = ingested["version"]
    first = summary.seeded.get("ingest") if summary.seeded else ingested
    summary.previous_data_version = first["previous_version"]

    # 2. train: reward model then PPO, in-process or on the GPU work pool
    route = training_route(cfg)
    if route.where == "work-pool":
        trained = train_on_pool.with_options(**opts)(root, route.deployment, cfg)
    else:
        trained = train_models.fn(root, cfg.retries, cfg.retry_delay_s)
    summary.training = {"where": route.where, "pool": route.pool, "reason": route.reason, **trained}
    summary.reward = _read_json(paths.metrics / "reward.json")
    summary.policy = _read_json(paths.metrics / "ppo.json")

    # 3. evaluate -> gate -> promote or reject -> tell the service (see flows.decide)
    from flows.decide import decide_and_publish

    decide_and_publish(paths, Path(params_path), cfg, summary, opts)
    summary.links = _links(paths)
    summary.seconds = round(time.perf_counter() - t0, 1)
    publish_summary(summary.to_dict())
    return summary.to_dict()


def _counts(ingest: dict[str, Any]) -> dict[str, Any]:
    return {k: ingest.get(k) for k in ("rows_in", "accepted", "quarantined", "by_reason")}


def _add_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    if not a:
        return dict(b)
    reasons = dict(a.get("by_reason") or {})
    for k, v in (b.get("by_reason") or {}).items():
        reasons[k] = reasons.get(k, 0) + v
    keys = [k for k in {**a, **b} if k != "by_reason"]
    return {k: (a.get(k) or 0) + (b.get(k) or 0) for k in keys} | {"by_reason": reasons}


def _links(paths: ProjectPaths) -> dict[str, str]:
    candidates = {
        "reward metrics": paths.metrics / "reward.json",
        "reward training plot": paths.metrics / "reward_train.png",
        "PPO metrics": paths.metrics / "ppo.json",
        "PPO score plot": paths.metrics / "ppo_score.png",
        "PPO KL plot": paths.metrics / "ppo_kl.png",
        "validation reports": paths.reports,
    }
    return {name: str(p) for name, p in candidates.items() if p.exists()}
