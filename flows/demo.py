"""The ``demo`` flow: the loop ``rounds`` times, with real HTTP traffic between rounds, as one Prefect run.

round 1 (a ``retrain`` sub-flow run: seed -> validate -> version -> reward model -> policy -> evaluate -> gate ->
promote) -> start the service (a real ``bentoml serve`` of the champion) -> then, for each further round:
simulated users ask the served champion questions and rate its replies over HTTP -> round n (a ``retrain``
sub-flow run on seed + all served feedback so far, waiting for the service, whose URL it gets as a parameter,
to switch to a new champion) -> stop the service -> the final champion against the base model the loop started
from (``champion-vs-base``; read-only, ``reports/compare/``).

The rounds show in the Prefect UI as sub-flow runs of the one ``demo`` run. The service is stopped whatever
happens to the rounds after the first.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.progress import task_progress
from flows.retrain import retrain


@task(name="start-service", cache_policy=NO_CACHE)
def start_service(root: str, params: str, port: int | None = None, raters: int = 1) -> dict[str, Any]:
    """``bentoml serve`` of the project's champion on a loopback port with a fresh API token and ``raters`` rater
    tokens for the simulated users (one per concurrent user); ready when done."""
    from components.common.service_process import start_service as start

    return asdict(start(Path(root), Path(params), port=port, simulated_raters=raters))


@task(name="simulated-users", cache_policy=NO_CACHE)
def simulated_users(
    root: str, url: str, tokens: list[str], users: int, clients: int, max_tokens: int, phase: int = 0
) -> dict[str, Any]:
    """``users`` prompts of the project's training pool asked ``clients`` at a time, each client a rater with a
    token of its own; each reply rated, the better of two chosen, over HTTP. Phase ``n`` asks the next ``users``
    prompts of the pool's seeded order after those of the phases before it."""
    from components.demo_task.traffic import simulate_users, traffic_prompts
    from components.project.paths import ProjectPaths

    prompts = traffic_prompts(ProjectPaths(Path(root)), users, skip=phase * users)
    progress = task_progress("simulated-users")
    done = simulate_users(url, prompts, tokens=tokens, clients=clients, max_tokens=max_tokens, progress=progress)
    return asdict(done)


@task(name="served-version", cache_policy=NO_CACHE)
def served_version(url: str) -> str | None:
    """The model version the service answers with now."""
    from components.common.service_process import served_version as version

    return version(url)


@task(name="stop-service", cache_policy=NO_CACHE)
def stop_service(service: dict[str, Any]) -> None:
    """Stop the service's process group (SIGTERM, then SIGKILL)."""
    from components.common.service_process import ServiceProcess
    from components.common.service_process import stop_service as stop

    stop(ServiceProcess(**service))


@task(name="champion-vs-base", cache_policy=NO_CACHE)
def champion_vs_base(root: str, params: str) -> dict[str, Any]:
    """The final champion against the base model the loop started from, with the evaluate stage's judge, prompts,
    seeds and interval (``reports/compare/``); registers and promotes nothing. Without the KL to the base and the
    reward-model scores, so both models' replies are replayed from the rounds' evaluations and nothing is sampled
    or scored but by the judge (``rlhf compare champion base`` measures them)."""
    from components import stages
    from components.project.paths import ProjectPaths
    from flows.report import publish_comparison

    p, progress = stages.load_params(Path(params)), task_progress("champion-vs-base")
    result = stages.compare(p.eval, ProjectPaths(Path(root)), model=p.model, a="champion", b="base",
                            demo_task=p.seeding.demo_task, kl=False, reward_scores=False,
                            progress=progress)  # fmt: skip
    publish_comparison(asdict(result))
    return asdict(result)


@flow(name="demo", log_prints=True)
def demo(
    project: str,
    params: str | None = None,
    users: int = 96,
    clients: int = 16,
    max_tokens: int = 32,
    port: int | None = None,
    rounds: int = 2,
) -> dict[str, Any]:
    """``rounds`` (>= 2) rounds of the loop on the project at ``project``, with simulated users of the served
    champion before each round after the first. Returns every round's summary, what the users did before each
    (``traffic``, one entry per round after the first), what the service served at the end, and the final champion
    against the base."""
    if rounds < 2:
        raise ValueError(f"the demo runs at least 2 rounds (one on served feedback), got {rounds}")
    params = params or str(Path(project) / "params.yaml")
    summaries = [retrain(project=project, params=params, seed_if_empty=True, label="round 1")]
    service = start_service(project, params, port, raters=clients)
    url, tokens, traffic = service["url"], service["rater_tokens"], []
    try:
        first_served = served_version(url)
        for n in range(2, rounds + 1):
            traffic.append(simulated_users(project, url, tokens, users, clients, max_tokens, phase=n - 2))
            summaries.append(retrain(project=project, params=params, label=f"round {n}", service_url=url))
        served_after = served_version(url)
    finally:
        stop_service(service)
    final = champion_vs_base(project, params)
    public = {k: v for k, v in service.items() if k not in ("token", "rater_tokens")}
    served = public | {"first": first_served, "last": served_after}
    return {"rounds": summaries, "traffic": traffic, "service": served, "champion_vs_base": final}
