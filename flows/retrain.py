"""The ``retrain`` flow: served feedback -> validate -> version -> reward model -> PPO -> evaluate -> gate ->
promote or reject -> the service switches.

Each task is a few lines around one stage function of :mod:`components.stages`, and passes the stage's result on
as a dict (``asdict`` of its frozen dataclass). Reward model, PPO and evaluation are DVC stages: their tasks run
the stage function under :func:`components.project.dvc_runner.run_stage` (one DVC command at a time per repository),
which runs it only when ``dvc status`` says the stage changed and then records it in ``dvc.lock`` as
``dvc repro`` would, so a rerun with unchanged data, params and code skips them. A step that still fails after
its retries fails the flow run; promotion is the last step and runs only after the gate, so a failed run
promotes nothing. A failing gate is a decision (the candidate is rejected, the champion stays), not an error.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.config.flow import POLICY_CANDIDATE, FlowConfig
from components.project.paths import ProjectPaths
from flows.progress import task_progress
from flows.report import publish_summary, publish_tournament
from flows.routing import TRAIN_FLOW_NAME, training_route


@dataclass
class RetrainSummary:
    """What one run did, JSON-serialisable (the CLI prints it, artifacts show it)."""

    project: str
    label: str = ""
    data_version: str | None = None
    previous_data_version: str | None = None
    exported: dict[str, Any] = field(default_factory=dict)
    """Feedback on served outputs exported (``ServedExport``: ratings, pairs, ties, files) before validation."""
    validation: dict[str, Any] = field(default_factory=dict)
    """rows_in / accepted / quarantined / by_reason, summed over what this run ingested."""
    prompts: dict[str, Any] = field(default_factory=dict)
    """The prompt pool this round trains and evaluates on (``data/prompts/pool.json``: train, held-out, by source,
    e.g. ``served`` for prompts users sent)."""
    seeded: dict[str, Any] = field(default_factory=dict)
    raters: dict[str, Any] = field(default_factory=dict)
    """Who gave the feedback of this data version (ratings / pairs per rater) and how far raters agree where they
    judged the same reply or pair (``components.data.feedback.agreement.rater_summary``)."""
    training: dict[str, Any] = field(default_factory=dict)
    """Where training ran, the DVC stages that ran, and those skipped as up to date."""
    reward: dict[str, Any] = field(default_factory=dict)
    """The reward-model stage's result (``RewardStageResult``)."""
    policy: dict[str, Any] = field(default_factory=dict)
    """The PPO stage's result (``PolicyResult``); in a tournament, the promoted candidate's when one was."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    human: dict[str, Any] = field(default_factory=dict)
    """With ``eval.judge: human``: the people's verdict on canary (``HumanVerdict``), or why there is none."""
    gate: dict[str, Any] = field(default_factory=dict)
    decision: str = "not reached"
    """promoted / rejected / unchanged (the candidate was decided on before) / no decision (too few human
    comparisons by the deadline: the champion stays) / not reached."""
    candidate: str | None = None
    tournament: list[dict[str, Any]] = field(default_factory=list)
    """With ``flow.candidates``: one row per candidate (``components.decide.tournament.row``: recipe, win rate with its
    interval, Holm-adjusted p, KL, seconds, decision); empty for a round with the ``policy`` section alone."""
    champion_before: str | None = None
    champion_after: str | None = None
    service: str = ""
    links: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _paths(root: str) -> ProjectPaths:
    return ProjectPaths(Path(root))


def _params(params: str):
    from components.project.params import load_params

    return load_params(Path(params))


# --- tasks: a few lines each around a stage function or a DVC stage ---------------------------------------------


@task(name="seed-sample", cache_policy=NO_CACHE)
def seed_sample(root: str, params: str) -> dict[str, Any]:
    """Sample replies from the base policy (a retry reuses replies already sampled for these settings)."""
    from components import stages

    p = _params(params)
    return asdict(stages.sample_seed(p.seeding, _paths(root), model=p.model, progress=task_progress("seed-sample")))


@task(name="seed-label", cache_policy=NO_CACHE)
def seed_label(root: str, params: str, sample: dict[str, Any]) -> dict[str, Any]:
    """The gold annotator picks best over worst of each prompt's replies."""
    from components import stages

    cfg, sampled = _params(params).seeding, stages.SeedSample(**sample)
    return asdict(stages.label_seed(cfg, _paths(root), sample=sampled, progress=task_progress("seed-label")))


@task(name="seed-validate-and-version", cache_policy=NO_CACHE)
def seed_ingest(root: str, params: str, labels: dict[str, Any]) -> dict[str, Any]:
    """Great Expectations validation of the seed pairs, then a DVC version of ``data/``."""
    from components import stages

    paths = _paths(root)
    report = paths.reports / "seed-validation"
    labelled = stages.SeedLabels(**labels)
    progress = task_progress("seed-validate-and-version")
    progress(0, 1, f"validating {labelled.pairs} pairs, then a DVC version")
    done = stages.ingest_seed(_params(params).validation, paths, labels=labelled, report_dir=report)
    progress(1, 1, f"{done.accepted} accepted, {done.quarantined} quarantined, version {done.version}")
    return asdict(done)


@task(name="export-served-feedback", cache_policy=NO_CACHE)
def export_served_feedback(root: str, params: str) -> dict[str, Any]:
    """Feedback on served outputs since the last export (the store's watermark), as feedback files."""
    from components import stages

    progress = task_progress("export-served-feedback")
    return asdict(stages.export_served_feedback(_params(params).serve, _paths(root), progress=progress))


@task(name="validate-and-version", cache_policy=NO_CACHE)
def validate_and_version(root: str, params: str, exported: dict[str, Any]) -> dict[str, Any]:
    """Great Expectations validation of the exported rows, then a DVC version of ``data/`` per kind."""
    from components import stages

    served, progress = stages.result_from_dict(stages.ServedExport, exported), task_progress("validate-and-version")
    return asdict(
        stages.ingest_served_feedback(_params(params).validation, _paths(root), exported=served, progress=progress)
    )


@task(name="rater-agreement", cache_policy=NO_CACHE)
def rater_agreement(root: str) -> dict[str, Any]:
    """Ratings and pairs per rater in the data version, and how far raters agree where they judged the same."""
    from components import stages

    return stages.rater_summary(_paths(root))


@task(name="champion-pointer", cache_policy=NO_CACHE)
def champion_pointer(root: str, params: str) -> str:
    """Point the ``ppo`` stage at the champion (registering the base model first when there is none): a new
    champion reruns PPO, the same one skips it."""
    from components import stages

    return stages.point_policy_at_champion(_params(params).model, _paths(root))


# The DVC stages read the project's own params.yaml (the file DVC tracks), whatever params file the flow got.


@task(name="train-reward-model", cache_policy=NO_CACHE)
def train_reward_model(root: str) -> dict[str, Any]:
    """The ``train_reward`` stage; skipped when the pairs, reward params and code match ``dvc.lock``."""
    from components import stages
    from components.project import dvc_runner

    paths, progress = _paths(root), task_progress("train-reward-model")
    ran, result = dvc_runner.run_stage(
        paths.root,
        "train_reward",
        run=lambda: stages.train_reward_model(_params(paths.params).reward, paths, progress=progress),
        last=lambda: stages.reward_result(paths),
    )
    return {"ran": ran, "result": asdict(result)}


@task(name="train-policy", cache_policy=NO_CACHE)
def train_policy(root: str) -> dict[str, Any]:
    """The ``ppo`` stage (continuing a killed run from its checkpoint when its params match); skipped when the
    reward model, prompts, params and code match ``dvc.lock``. The flow names it ``train-policy-<algorithm>``."""
    from components import stages
    from components.project import dvc_runner

    paths, p = _paths(root), _params(_paths(root).params)
    progress = task_progress(f"train-policy-{p.policy.algorithm}")
    ran, result = dvc_runner.run_stage(
        paths.root,
        "ppo",
        run=lambda: stages.train_policy(p.policy, paths, model=p.model, progress=progress),
        last=lambda: stages.policy_result(paths),
    )
    return {"ran": ran, "result": asdict(result)}


@task(name="train-policy-multi", cache_policy=NO_CACHE)
def train_policy_launched(root: str, processes: int) -> dict[str, Any]:
    """The ``ppo`` stage's command under ``accelerate launch`` on ``processes`` devices, recorded in ``dvc.lock``."""
    from components import stages
    from components.models.policy.train import launch_command
    from components.project import dvc_runner

    paths = _paths(root)
    ran, result = dvc_runner.run_command(
        paths.root,
        "ppo",
        launch_command(processes),
        last=lambda: stages.policy_result(paths),
        echo=get_run_logger().info,
    )
    return {"ran": ran, "result": asdict(result)}


@task(name="train-candidate", cache_policy=NO_CACHE)
def train_candidate(root: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """An extra candidate of the tournament (``flow.candidates``): the ``policy`` section with the recipe's
    overrides, into ``models/candidates/<name>/`` (not a DVC output); reused when trained on the same inputs."""
    from components import stages
    from components.config import from_dict
    from components.config.flow import CandidateRecipe

    paths, p = _paths(root), _params(_paths(root).params)
    spec = from_dict(CandidateRecipe, recipe)
    progress = task_progress(f"train-candidate-{spec.name}")
    return asdict(stages.train_candidate(p.policy, spec, paths, model=p.model, progress=progress))


@flow(name=TRAIN_FLOW_NAME, persist_result=True, log_prints=True)
def train_models(
    root: str,
    retries: int = 1,
    retry_delay_s: float = 5.0,
    ppo_processes: int | None = None,
    candidates: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Reward model then PPO, as DVC stages, then each extra candidate (``flow.candidates`` entries as dicts):
    what a GPU work pool's worker runs for the ``retrain`` flow.

    ``ppo_processes`` None takes ``flow.ppo_processes`` / ``$RLHF_PPO_PROCESSES`` where this runs (the worker)."""
    from components.config.flow import load_flow_config

    opts = {"retries": retries, "retry_delay_seconds": retry_delay_s}
    processes = ppo_processes or load_flow_config(Path(root) / "params.yaml").ppo_processes
    name = f"train-policy-{_params(_paths(root).params).policy.algorithm}"  # what the task is in the UI
    reward = train_reward_model.with_options(**opts)(root)
    if processes > 1:
        policy = train_policy_launched.with_options(**opts, name=f"{name}-multi")(root, processes)
    else:
        policy = train_policy.with_options(**opts, name=name)(root)
    extra = {
        r["name"]: train_candidate.with_options(**opts, task_run_name=f"train-candidate-{r['name']}")(root, r)
        for r in candidates or []
    }
    done = {"train_reward": reward["ran"], "ppo": policy["ran"]}
    return {
        "ran": [stage for stage, ran in done.items() if ran],
        "skipped": [stage for stage, ran in done.items() if not ran],
        "ppo_processes": processes,
        "reward": reward["result"],
        "policy": policy["result"],
        "candidates": extra,
    }


@task(name="train-on-work-pool", cache_policy=NO_CACHE)
def train_on_pool(root: str, deployment: str, cfg: FlowConfig) -> dict[str, Any]:
    """Run the training deployment on its work pool and wait for it; a failed run fails this task."""
    from prefect.deployments import run_deployment

    from components.config import to_dict

    run = run_deployment(
        deployment,
        parameters={
            "root": root,
            "retries": cfg.retries,
            "retry_delay_s": cfg.retry_delay_s,
            "candidates": [to_dict(c) for c in cfg.candidates],
        },
        timeout=cfg.train_timeout_s,
        poll_interval=2,
    )
    state = run.state
    if state is None or not state.is_completed():
        name = state.name if state else "unknown"
        raise RuntimeError(f"training run {run.name} of {deployment} ended {name}: see it in the Prefect UI")
    return state.result()


@task(name="train-judge-model", cache_policy=NO_CACHE)
def train_judge(root: str) -> dict[str, Any]:
    """The ``train_judge`` stage: the judge reward model on its slice of the pairs (``eval.judge: reward_model``),
    else a note; skipped when the pairs, params and code match ``dvc.lock``."""
    from components import stages
    from components.project import dvc_runner

    paths, p, progress = _paths(root), _params(_paths(root).params), task_progress("train-judge-model")
    used = p.eval.judge == "reward_model"
    ran, result = dvc_runner.run_stage(
        paths.root,
        "train_judge",
        run=lambda: stages.train_judge_model(p.reward, p.eval.judge_reward, paths, used=used, progress=progress),
        last=lambda: stages.judge_model_result(p.eval.judge_reward, paths),
    )
    return {"ran": ran, "result": asdict(result)}


@task(name="evaluate-vs-champion", cache_policy=NO_CACHE)
def evaluate_candidate(root: str, policy: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate`` stage: the new policy against the registry's champion on held-out prompts."""
    from components import stages
    from components.project import dvc_runner

    paths, p, progress = _paths(root), _params(_paths(root).params), task_progress("evaluate-vs-champion")
    kl_target = p.policy.controller_kl_target
    opts = {"kl_target": kl_target, "demo_task": p.seeding.demo_task, "progress": progress}
    ran, result = dvc_runner.run_stage(
        paths.root,
        "evaluate",
        run=lambda: stages.evaluate(p.eval, paths, model=p.model, candidate=policy["path"], **opts),
        last=lambda: stages.evaluation_result(paths),
    )
    return {"ran": ran, "result": asdict(result)}


@task(name="human-judge", cache_policy=NO_CACHE)
def human_judge(root: str, params: str, policy: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """The candidate on canary until enough people compared it with the champion (or the deadline); resumable."""
    from components import stages

    p, ev = _params(params), stages.result_from_dict(stages.EvalResult, evaluation)
    got = stages.judge_by_humans(
        p.eval, p.serve, _paths(root), policy=policy["path"], evaluation=ev, progress=task_progress("human-judge")
    )
    return asdict(got)


@task(name="evaluate-candidate-vs-champion", cache_policy=NO_CACHE)
def evaluate_extra(root: str, name: str, policy: dict[str, Any]) -> dict[str, Any]:
    """An extra candidate against the champion: the ``evaluate`` stage's judge, prompts and seeds, its files in
    ``models/candidates/<name>/`` (not a DVC stage)."""
    from components import stages

    paths, p = _paths(root), _params(_paths(root).params)
    kl_target = p.policy.controller_kl_target
    progress = task_progress(f"evaluate-candidate-{name}")
    opts = {"kl_target": kl_target, "demo_task": p.seeding.demo_task, "progress": progress}
    result = stages.evaluate_candidate(p.eval, paths, name=name, model=p.model, candidate=policy["path"], **opts)
    return asdict(result)


@task(name="gate", cache_policy=NO_CACHE)
def gate_candidate(root: str, params: str, evaluation: dict[str, Any], name: str = "policy") -> dict[str, Any]:
    """Every gate check (value vs threshold); never retried: a failing gate is a decision."""
    from components import stages
    from components.decide import tournament

    ev = stages.result_from_dict(stages.EvalResult, evaluation)
    paths = tournament.candidate_paths(_paths(root), name)
    return asdict(stages.gate(_params(params).gate, paths, evaluation=ev))


@task(name="tournament", cache_policy=NO_CACHE)
def decide_tournament(root: str, params: str, entrants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each candidate's gate plus its win-rate test Holm-corrected over the candidates; at most one passes."""
    from components import stages

    p, rebuild = _params(params), stages.result_from_dict
    found = [
        (e["name"], rebuild(stages.EvalResult, e["evaluation"]), rebuild(stages.GateResult, e["gate"]))
        for e in entrants
    ]
    return [asdict(g) for g in stages.decide_tournament(p.eval, p.gate, _paths(root), entrants=found)]


@task(name="promote-or-reject", cache_policy=NO_CACHE)
def promote_or_reject(root: str, policy_dir: str, evaluation: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate with its lineage; promote it when the gate passed, else mark it rejected."""
    from components import stages

    ev, decided = (
        stages.result_from_dict(stages.EvalResult, evaluation),
        stages.result_from_dict(stages.GateResult, gate),
    )
    return asdict(stages.register_and_decide(_paths(root), policy=policy_dir, evaluation=ev, gate=decided))


@task(name="service-switch", cache_policy=NO_CACHE)
def wait_for_service(url: str, version: str) -> str:
    """The service polls the registry and reloads on its own: wait until it answers with ``version``."""
    from components.common.service_process import wait_for_version

    return wait_for_version(url, version)


# --- the flow --------------------------------------------------------------------------------------------------


@flow(name="retrain", log_prints=True)
def retrain(
    project: str | None = None,
    params: str | None = None,
    seed_if_empty: bool = False,
    label: str = "",
    service_url: str | None = None,
) -> dict[str, Any]:
    """One retraining round on the project at ``project`` (default: the checkout holding ``params.yaml``).

    ``service_url``: a running service to wait for after a promotion (default ``flow.service_url``)."""
    from components.config import to_dict
    from components.config.flow import load_flow_config
    from components.records import registry

    t0 = time.perf_counter()
    paths = ProjectPaths(Path(project).resolve()) if project else ProjectPaths.discover()
    root, params_path = str(paths.root), str(Path(params).resolve() if params else paths.params)
    _params(params_path)  # the whole params file is validated before any work
    cfg = load_flow_config(Path(params_path))
    if cfg.candidates and _params(params_path).eval.judge == "human":
        raise ValueError(
            f"{params_path}: flow.candidates with eval.judge: human: people judge one candidate at a time on canary; "
            "race the candidates with another judge (or rlhf sweep), then let people judge the winner"
        )
    service_url = service_url or cfg.service_url
    summary = RetrainSummary(project=root, label=label)
    opts = {"retries": cfg.retries, "retry_delay_seconds": cfg.retry_delay_s}
    log = get_run_logger()

    # 1. feedback: seed an empty store (round one), then export what users rated since the last run
    if seed_if_empty and not paths.pairs.is_file():
        sample = seed_sample.with_options(**opts)(root, params_path)
        labels = seed_label.with_options(**opts)(root, params_path, sample)
        summary.seeded = seed_ingest.with_options(**opts)(root, params_path, labels)
        summary.validation = _counts(summary.seeded)
    summary.exported = export_served_feedback.with_options(**opts)(root, params_path)
    ingested = validate_and_version.with_options(**opts)(root, params_path, summary.exported)
    summary.validation = _add_counts(summary.validation, _counts(ingested))
    summary.data_version = ingested["version"]
    summary.prompts = _read_json(paths.prompts / "pool.json")
    summary.raters = rater_agreement(root)
    summary.previous_data_version = (summary.seeded or ingested)["previous_version"]

    # 2. train: reward model then PPO (from the champion, policy.init_from), in-process or on the GPU work pool
    champion_pointer.with_options(**opts)(root, params_path)
    route = training_route(cfg)
    if route.where == "work-pool":
        trained = train_on_pool.with_options(**opts)(root, route.deployment, cfg)
    else:
        recipes = [to_dict(c) for c in cfg.candidates]
        trained = train_models.fn(root, cfg.retries, cfg.retry_delay_s, cfg.ppo_processes, recipes)
    summary.reward, summary.policy = trained.pop("reward"), trained.pop("policy")
    extra = trained.pop("candidates", None) or {}
    summary.training = {"where": route.where, "pool": route.pool, "reason": route.reason, **trained}
    summary.candidate = candidate = summary.policy["version"]
    before = registry.champion(paths)
    summary.champion_before = summary.champion_after = before.version if before else None

    # 3. evaluate -> gate -> promote or reject (skipped when every candidate was decided on before); with
    # flow.candidates every candidate is evaluated the same way and at most one, the best that passes, promoted
    versions = [candidate, *(r["version"] for r in extra.values())]
    if "ppo" not in trained["ran"] and all(_decided(paths, v) for v in versions):
        summary.decision = "unchanged"
        log.info("policies %s were trained, evaluated and decided on before: nothing to do", ", ".join(versions))
    else:
        train_judge.with_options(**opts)(root)
        ev = evaluate_candidate.with_options(**opts)(root, summary.policy)["result"]
        summary.evaluation = _eval_summary(ev)
        summary.champion_before = summary.evaluation["champion"]  # the base, registered by a first evaluation
        if _params(params_path).eval.judge == "human":
            people = human_judge.with_options(**opts)(root, params_path, summary.policy, ev)
            summary.human = people["verdict"] | {"reason": people["reason"]}
            if not people["decided"]:
                summary.decision, summary.gate = "no decision", {"passed": False, "reasons": [people["reason"]]}
                return _finish(summary, paths, service_url, opts, t0)
            ev = people["evaluation"]
        entrants = [{"name": POLICY_CANDIDATE, "policy": summary.policy, "evaluation": ev}]
        for recipe in cfg.candidates:
            name, policy = recipe.name, extra[recipe.name]
            evaluate = evaluate_extra.with_options(**opts, task_run_name=f"evaluate-candidate-{name}")
            entrants.append({"name": name, "policy": policy, "evaluation": evaluate(root, name, policy)})
        gates = [gate_candidate(root, params_path, e["evaluation"], e["name"]) for e in entrants]
        if len(entrants) > 1:
            gates = decide_tournament(root, params_path, [e | {"gate": g} for e, g in zip(entrants, gates)])
        outcomes: dict[int, dict[str, Any]] = {}
        for i in sorted(range(len(entrants)), key=lambda i: gates[i]["passed"]):  # rejections first, the winner last
            e = entrants[i]
            outcomes[i] = promote_or_reject.with_options(**opts)(root, e["policy"]["path"], e["evaluation"], gates[i])
        chosen = next((i for i, g in enumerate(gates) if g["passed"]), 0)
        summary.policy, decision = entrants[chosen]["policy"], gates[chosen]
        summary.candidate = summary.policy["version"]
        summary.evaluation = _eval_summary(entrants[chosen]["evaluation"])
        reasons = [c["reason"] for c in decision["checks"] if not c["passed"]]
        summary.gate = {k: decision[k] for k in ("passed", "checks", "report_path")} | {"reasons": reasons}
        summary.decision = "promoted" if outcomes[chosen]["status"] == "champion" else "rejected"
        summary.champion_after = registry.champion(paths).version
        if len(entrants) > 1:
            summary.tournament = _tournament_rows(paths, cfg, entrants, gates, outcomes)
            publish_tournament(summary.tournament, label)

    return _finish(summary, paths, service_url, opts, t0)


def _finish(
    summary: RetrainSummary, paths: ProjectPaths, service_url: str | None, opts: dict[str, Any], t0: float
) -> dict[str, Any]:
    """4. The service reloads the champion by polling the registry: wait for it when one is configured."""
    if service_url and summary.champion_after:
        summary.service = wait_for_service.with_options(**opts)(service_url, summary.champion_after)
    summary.links = _links(paths)
    summary.seconds = round(time.perf_counter() - t0, 1)
    publish_summary(summary.to_dict())
    return summary.to_dict()


def _tournament_rows(
    paths: ProjectPaths,
    cfg: FlowConfig,
    entrants: list[dict[str, Any]],
    gates: list[dict[str, Any]],
    outcomes: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    from components.decide import tournament

    recipes = {POLICY_CANDIDATE: {"algorithm": _params(str(paths.params)).policy.algorithm, "overrides": {}}}
    recipes |= {c.name: tournament.recipe_dict(c) for c in cfg.candidates}
    status = {"champion": "promoted", "rejected": "rejected"}
    rows = []
    for i, (e, g) in enumerate(zip(entrants, gates)):
        decided = status.get(outcomes[i]["status"], outcomes[i]["status"])
        rows.append(tournament.row(e["name"], recipes[e["name"]], e["policy"], e["evaluation"], g, decided))
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _decided(paths: ProjectPaths, version: str) -> bool:
    """Registered and decided on (a ``candidate`` still waiting for people on canary is not)."""
    from components.records import registry

    try:
        return registry.get(paths, version).status != "candidate"
    except registry.RegistryError:
        return False


def _eval_summary(ev: dict[str, Any]) -> dict[str, Any]:
    c, h = ev["candidate"], ev["champion"]
    return {
        "candidate": c["version"],
        "champion": h["version"],
        "win_rate": ev["win_rate"],
        "win_rate_low": ev["win_rate_low"],
        "win_rate_high": ev["win_rate_high"],
        "prompts": ev["prompts"],
        "samples_per_prompt": ev["samples_per_prompt"],
        "judge": ev.get("judge") or {},
        "judge_candidate": c.get("judge_score"),
        "judge_champion": h.get("judge_score"),
        "judge_accuracy": ev.get("judge_accuracy"),
        "reward_win_rate": ev.get("reward_win_rate"),
        "judge_disagrees": ev.get("judge_disagrees"),
        "aa_win_rate": ev.get("aa_win_rate"),
        "aa_low": ev.get("aa_low"),
        "aa_high": ev.get("aa_high"),
        "kl": c["kl"],
        "kl_target": ev["kl_target"],
        "degenerate_rate": c["degenerate_rate"],
        "overoptimised": ev["overoptimised"],
        "reward_accuracy": ev["reward_accuracy"],
        "report": ev["report_path"],
    }


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
        "evaluation report": paths.eval_report,
        "evaluation metrics": paths.eval_metrics,
        "gate report": paths.gate_report,
        "reward metrics": paths.metrics / "reward.json",
        "reward training plot": paths.metrics / "reward_train.png",
        "PPO metrics": paths.metrics / "ppo.json",
        "PPO score plot": paths.metrics / "ppo_score.png",
        "PPO KL plot": paths.metrics / "ppo_kl.png",
        "validation reports": paths.reports,
    }
    return {name: str(p) for name, p in candidates.items() if p.exists()}
