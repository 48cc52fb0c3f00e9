"""``rlhf retrain`` and ``rlhf deploy``: the Prefect side of the CLI, registered on the main app."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rlhf_cli.console import make_console

ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", help="params.yaml holding every stage's config (default: the project's params.yaml)."),
]


def _params_file(console: Console, params: Path | None) -> Path:
    """The params file, every section validated before any work (exit 2 naming the file and key otherwise)."""
    from components.config import ConfigError
    from components.project.params import load_params
    from components.project.paths import ProjectPaths

    path = (params or ProjectPaths.discover().params).resolve()
    try:
        load_params(path)
    except ConfigError as exc:
        console.print(f"[red]config error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def summary_table(summary: dict[str, Any], title: str = "retrain") -> Table:
    """The flow's summary, one figure per row (the same rows as its Prefect table artifact)."""
    from flows.report import metric_rows

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for row in metric_rows(summary):
        table.add_row(row["figure"], row["value"])
    return table


def compare_table(r: dict[str, Any]) -> Table:
    """A comparison's figures, one row each: win rate [interval], judge and reward-model scores, KL, counts, time."""
    a, b = r["a"], r["b"]
    num = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    table = Table(title=f"{a['version']} ({r['a_name']}) vs {b['version']} ({r['b_name']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    judge = r["judge"].get("name", "judge")
    for name, value in (
        (f"win rate of A by the judge ({judge}) [95 % interval]",
         f"{r['win_rate']:.1%} [{r['win_rate_low']:.1%}, {r['win_rate_high']:.1%}]"),
        ("wins / ties / losses", f"{r['wins']} / {r['ties']} / {r['losses']}"),
        ("prompts x samples", f"{r['prompts']} x {r['samples_per_prompt']} = {r['comparisons']}"),
        ("judge score A / B", f"{num(a['judge_score'])} / {num(b['judge_score'])}"),
        ("reward-model score A / B", f"{num(a['reward_score'])} / {num(b['reward_score'])}"),
        ("KL of A to B, nats/reply", num(a["kl"])),
        ("reply length A / B (tokens)", f"{a['mean_tokens']:.1f} / {b['mean_tokens']:.1f}"),
        ("replies replayed from the evaluation", ", ".join(r.get("replayed") or []).upper() or "none"),
        *_part_rows(r.get("judge_parts") or {}),
        ("time", f"{r['seconds']:.0f} s"),
    ):  # fmt: skip
        table.add_row(name, value)
    return table


def _part_rows(parts: dict[str, Any]) -> list[tuple[str, str]]:
    """One row per part of the judge's score that either side has: weight, A / B means, weight x (A - B)."""
    from components.decide.compare import part_contributions

    return [(f"  judge part {k} (x{w:g}) A / B", f"{a:.3f} / {b:.3f} ({d:+.3f})")
            for k, w, a, b, d in part_contributions(parts)]  # fmt: skip


def _prefect_logs_visible() -> None:
    logging.getLogger("prefect").setLevel(logging.INFO)


def project_params(console: Console, params: Path | None) -> Path:
    """The project's params file, after making ``params`` (when given) the project's: every DVC stage reads
    ``PROJECT/params.yaml``, so another file is validated and copied over it (the previous one stays in git).
    The project is ``--project`` / the folder holding params.yaml at or above the current one; a ``--params``
    file inside a project folder (beside its dvc.yaml) names that project."""
    import os

    from components.config import ConfigError
    from components.project.paths import ProjectPaths
    from components.project.scaffold import use_params

    if params is not None and not os.environ.get("RLHF_PROJECT") and (params.resolve().parent / "dvc.yaml").is_file():
        paths = ProjectPaths(params.resolve().parent)
    else:
        paths = ProjectPaths.discover()
    if params is None:
        return _params_file(console, paths.params)
    try:
        target = use_params(paths, params)
    except (ConfigError, OSError) as exc:
        console.print(f"[red]config error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    if target != params.resolve():
        console.print(f"params: {params} copied to {target} (the file every stage reads)")
    return target


def retrain(params: ParamsOpt = None) -> None:
    """One run of the retraining flow on the current data (what the schedule runs).

    ``--params FILE`` becomes the project's params.yaml (copied over it) so every stage, DVC's included, reads it.
    """
    import os

    from components.project.paths import ProjectPaths
    from components.project.scaffold import ProjectError, require_project
    from flows.retrain import retrain as retrain_flow

    console = make_console()
    params = project_params(console, params)
    try:
        require_project(ProjectPaths(params.parent), "retrain")
    except ProjectError as exc:
        console.print(f"[red]not a project:[/] {exc}")
        raise typer.Exit(code=2) from exc
    os.environ.setdefault("PREFECT_HOME", str(params.parent / ".prefect"))
    _prefect_logs_visible()
    state = retrain_flow(project=str(params.parent), params=str(params), return_state=True)
    if not state.is_completed():
        console.print(f"[red]retrain failed[/] ({state.name}): {state.message}. Nothing was promoted.")
        raise typer.Exit(code=1)
    summary = state.result()
    console.print(summary_table(summary))
    if summary.get("tournament"):
        console.print(candidates_table(summary["tournament"], "tournament: every candidate against the champion"))
    console.print(f"decision: [bold]{summary['decision']}[/]; Prefect artifacts: retrain-summary, retrain-metrics")


def sweep(
    axes: Annotated[
        list[str],
        typer.Argument(help="policy.KEY=V1,V2 per axis, e.g. policy.learning_rate=1e-4,5e-4 policy.algorithm=rloo,ppo"),
    ],
    zip_axes: Annotated[
        bool, typer.Option("--list", help="The i-th values of every axis together (a list), not every combination.")
    ] = False,
    params: ParamsOpt = None,
) -> None:
    """Train and evaluate a grid (or list) of policy recipes against the champion; print the table and write the
    best recipe as a params file for the next retrain. Nothing is promoted."""
    import os

    from components.config import ConfigError
    from components.decide.tournament import sweep_recipes
    from flows.sweep import sweep as sweep_flow

    console = make_console()
    params = project_params(console, params)
    try:
        recipes = sweep_recipes(axes, zip_axes=zip_axes)
    except ConfigError as exc:
        console.print(f"[red]sweep:[/] {exc}")
        raise typer.Exit(code=2) from exc
    console.print(f"sweep: {len(recipes)} recipes: " + ", ".join(r.name for r in recipes))
    os.environ.setdefault("PREFECT_HOME", str(params.parent / ".prefect"))
    _prefect_logs_visible()
    state = sweep_flow(project=str(params.parent), axes=axes, zip_axes=zip_axes, return_state=True)
    if not state.is_completed():
        console.print(f"[red]sweep failed[/] ({state.name}): {state.message}. A rerun reuses the recipes trained.")
        raise typer.Exit(code=1)
    result = state.result()
    console.print(candidates_table(result["rows"], "sweep: each recipe against the champion"))
    if result["best"]:
        how = "passes the gate" if result["best_passes"] else "highest win rate; it does not pass the gate"
        console.print(f"best recipe: [bold]{result['best']}[/] ({how}); params: {result['best_params_path']}")
        console.print(f"table: {result['report_path']}; Prefect artifact: sweep")


def candidates_table(rows: list[dict[str, Any]], title: str) -> Table:
    """One row per candidate: recipe, win rate with its interval, Holm-adjusted p, KL, seconds, decision."""
    pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
    table = Table(title=title)
    for name in ("recipe", "algorithm", "overrides", "win rate [interval]", "Holm p", "KL", "train s", "eval s"):
        table.add_column(name, justify="right" if name not in ("recipe", "algorithm", "overrides") else "left")
    table.add_column("decision")
    for r in rows:
        overrides = ", ".join(f"{k.removeprefix('policy.')}={v}" for k, v in r["overrides"].items()) or "-"
        table.add_row(
            r["name"], r["algorithm"] or "-", overrides,
            f"{pct(r['win_rate'])} [{pct(r['win_rate_low'])}, {pct(r['win_rate_high'])}]",
            _fmt(r["p_adjusted"]), _fmt(r["kl"]), _fmt(r["train_seconds"]), _fmt(r["eval_seconds"]), r["decision"],
        )  # fmt: skip
    return table


def deploy(
    cron: Annotated[str, typer.Option(help="Cron schedule for retraining.")] = "0 3 * * *",
    pool: Annotated[
        str | None,
        typer.Option(help="Register on this work pool (workers run it); default: serve the schedule in this process."),
    ] = None,
    start_server: Annotated[
        bool, typer.Option("--start-server", help="Start a local `prefect server start` when PREFECT_API_URL is unset.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port of the local Prefect server that --start-server starts.")] = 4200,
    name: Annotated[
        str | None,
        typer.Option(help="Deployment name (retrain/NAME); default: flow.deployment, else the project folder's name."),
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Register the project's scheduled retraining deployment (a schedule needs a Prefect server, not the
    ephemeral API). Each project has its own deployment, named after its folder unless named otherwise."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.config.flow import load_flow_config
    from flows import deploy as d

    console = make_console()
    params = _params_file(console, params)
    project = params.parent
    cfg = load_flow_config(params)
    from components.config.flow import retrain_deployment_name, valid_deployment_name

    if name is not None and not valid_deployment_name(name):
        console.print(f"[red]--name {name!r}[/]: use letters, digits, '.', '_' and '-'.")
        raise typer.Exit(code=2)
    name = retrain_deployment_name(project, name or cfg.deployment)
    url = d.api_url()
    if not url:
        if not start_server:
            console.print(
                "[yellow]No Prefect server configured[/]: a schedule needs one (the ephemeral API has no scheduler).\n"
                "Start one and point Prefect at it, then rerun:\n"
                f"  prefect server start --host 127.0.0.1 --port {port} &\n"
                f"  export PREFECT_API_URL=http://127.0.0.1:{port}/api\n"
                f'  rlhf deploy --cron "{cron}"\n'
                "or let this command start a local one: rlhf deploy --start-server"
            )
            raise typer.Exit(code=2)
        log_file = project / ".prefect" / "server.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with console.status(f"starting `prefect server start` on port {port}"):
            url, pid = d.start_local_server(port, log_file)
        stop = f"; stop it with `kill -INT {pid}`" if pid else " (already running)"
        console.print(f"Prefect server at {url}{stop}; log {log_file}. UI: {url.removesuffix('/api')}")
    if not d.server_healthy(url):
        console.print(f"[red]The Prefect API at {url} does not answer[/]: start it with `prefect server start`.")
        raise typer.Exit(code=2)
    with temporary_settings({PREFECT_API_URL: url}):
        if cfg.gpu_pool:
            train = d.register_training(cfg.gpu_pool, cfg.train_deployment)
            console.print(f"training deployment {train.name} on pool {train.pool} ({train.workers} workers polling)")
            if not train.workers:
                console.print(f"  start a GPU worker: prefect worker start --pool {train.pool}")
        watch = (
            f"Watch it: prefect deployment ls; prefect flow-run ls --flow-name retrain; UI {url.removesuffix('/api')}\n"
            f"Run it now: prefect deployment run retrain/{name}"
        )
        if pool:
            try:
                reg = d.register_on_pool(project, cron, pool, name)
            except d.DeploymentTaken as exc:
                console.print(f"[red]{exc}[/]")
                raise typer.Exit(code=2) from exc
            polling = f"{reg.workers} workers polling"
            console.print(f'registered {reg.name} on work pool {reg.pool}, cron "{cron}" ({polling})')
            if not reg.workers:
                console.print(f"  nothing runs until a worker polls it: prefect worker start --pool {reg.pool}")
            console.print(watch)
            return
        console.print(f'serving retrain/{name} on cron "{cron}" from this process (Ctrl-C stops).')
        console.print(watch)
        try:
            d.serve_schedule(project, cron, name=name)
        except d.DeploymentTaken as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(code=2) from exc


def demo(
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            help="params file whose values the demo's project takes (the demo task switched on); default: the "
            "demo's params.",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A small version (minutes): its own project, less of every stage.")
    ] = False,
    project: Annotated[
        Path | None,
        typer.Option(help="Run in this project (made as rlhf init makes one if missing); default: a demo/ folder."),
    ] = None,
    users: Annotated[int, typer.Option(help="Prompts the simulated users ask (two replies each, all rated).")] = 96,
    clients: Annotated[int, typer.Option(help="Simulated users sending requests at the same time.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Reply length (tokens) the simulated users ask for.")] = 32,
    rounds: Annotated[
        int,
        typer.Option(
            min=2, help="Rounds of the loop; simulated users rate the served champion before each but the first."
        ),
    ] = 2,
) -> None:
    """The whole loop as the ``demo`` flow: round 1 (seed -> ... -> promote), the service with simulated users
    rating its replies over HTTP, round 2 on seed + served feedback, gated against round 1, and so on for
    ``--rounds``.

    It runs in a project of its own (``rlhf init``'s layout, the demo task on): by default ``demo/`` beside the
    code (``demo-quick/`` with ``--quick``), never the code checkout, whose files the demo leaves untouched."""
    import os
    import time

    import yaml

    from components.config import ConfigError
    from components.project.scaffold import ProjectError
    from rlhf_cli import demo_loop

    console = make_console()
    t0 = time.perf_counter()
    if params is not None and not params.is_file():
        console.print(f"[red]config error:[/] --params {params}: params file not found (pass a params.yaml)")
        raise typer.Exit(code=2)
    try:
        raw = demo_loop.demo_params(params, quick)
        root = demo_loop.prepare_project(
            project or demo_loop.demo_folder(quick), raw, sync=project is None or params is not None
        )
    except (ConfigError, ProjectError, yaml.YAMLError) as exc:
        console.print(f"[red]config error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    params = _params_file(console, root / "params.yaml")
    users = min(users, 16) if quick else users
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    _prefect_logs_visible()
    console.print(f"[bold]rlhf demo[/] in {root} ({'quick' if quick else 'full'}): the demo flow, {rounds} rounds")

    from flows.demo import demo as demo_flow

    state = demo_flow(
        project=str(root),
        params=str(params),
        users=users,
        clients=clients,
        max_tokens=max_tokens,
        rounds=rounds,
        return_state=True,
    )
    if not state.is_completed():
        console.print(f"[red]demo failed[/] ({state.name}): {state.message}. See the rounds above and in Prefect.")
        raise typer.Exit(code=1)
    result = state.result()
    summaries, traffic, service = result["rounds"], result["traffic"], result["service"]
    for summary in summaries:
        console.print(summary_table(summary, title=summary["label"]))
    console.print(demo_loop.round_table(summaries))
    final = result["champion_vs_base"]
    console.print(compare_table(final))
    which = demo_loop.which_champion(summaries)
    console.print(f"the final champion {final['a']['version']} ({which}) against the base {final['b']['version']}: "
                  f"report {final['report_path']}")  # fmt: skip
    for n, phase in enumerate(traffic, start=2):
        if phase["errors"]:
            console.print(f"[yellow]{len(phase['errors'])} simulated users failed[/]: {phase['errors'][0]}")
        console.print(
            f"simulated users before round {n}: {phase['prompts']} prompts, {phase['replies']} replies, "
            f"{phase['ratings']} ratings, {phase['pairs']} pairwise choices in {phase['seconds']:.0f} s; "
            f"requests {phase['requests']}"
        )
    console.print(f"the service at {service['url']} served {service['first']} after round 1 (log {service['log']})")
    switch = summaries[-1].get("service") or "no switch"
    console.print(f"the service served {service['last']} when {summaries[-1].get('label')} ended ({switch})")
    console.print(demo_loop.where_next(root, "stopped now"))
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s (CPU)")


def register(app: typer.Typer) -> None:
    """Add the flow commands to the ``rlhf`` app."""
    app.command()(demo)
    app.command()(retrain)
    app.command()(sweep)
    app.command()(deploy)
