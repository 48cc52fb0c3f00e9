"""``rlhf``: the command-line face of rlhf-loop (typer + rich).

Heavy imports (torch, transformers, Prefect, BentoML, Great Expectations) happen inside each command so
``rlhf --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from components.common.env import telemetry_off
from rlhf_cli.console import log_handler, make_console

telemetry_off()

app = typer.Typer(
    name="rlhf",
    help="rlhf-loop: feedback -> validation -> reward model -> PPO -> gate -> serving, closed in one loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = make_console()


ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", help="params.yaml holding every stage's config (default: the project's params.yaml)."),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[log_handler(console)],
    )
    for noisy in ("httpx", "urllib3", "filelock", "prefect", "bentoml", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _not_built(command: str, issue: str) -> None:
    console.print(f"[bold yellow]rlhf {command}[/]: not built yet ({issue}). Nothing was done.")
    raise typer.Exit(code=2)


def _fail(what: str, exc: Exception, code: int = 2) -> typer.Exit:
    console.print(f"[red]{what}:[/] {exc}")
    return typer.Exit(code=code)


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    project: Annotated[
        Path | None,
        typer.Option(
            "--project",
            help="The project folder every command works on (default: the folder holding params.yaml at or above "
            "the current one; or $RLHF_PROJECT).",
        ),
    ] = None,
) -> None:
    import os

    _setup_logging(verbose)
    if project is not None:
        before = os.environ.get("RLHF_PROJECT")
        os.environ["RLHF_PROJECT"] = str(project.expanduser().resolve())  # what ProjectPaths.discover() reads

        def restore() -> None:
            if before is None:
                os.environ.pop("RLHF_PROJECT", None)
            else:
                os.environ["RLHF_PROJECT"] = before

        ctx.call_on_close(restore)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new project (created; must not be a project).")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Base model spec: smollm2-135m-instruct (default), tiny, a folder, a hub id."),
    ] = None,
    system_prompt: Annotated[
        str | None, typer.Option("--system-prompt", help="System message put in front of every prompt.")
    ] = None,
    remote: Annotated[
        Path | None, typer.Option("--remote", help="Folder of the project's DVC remote (default: the shared one).")
    ] = None,
) -> None:
    """Start a project for your own model and feedback: params.yaml, dvc.yaml, data/, git + DVC with a remote."""
    from components.project.scaffold import ProjectError, create_project

    try:
        paths = create_project(directory, model=model, system_prompt=system_prompt, remote=remote)
    except ProjectError as exc:
        raise _fail("init refused", exc) from exc
    except Exception as exc:
        raise _fail("init failed", exc) from exc
    console.print(f"[green]project ready[/] at {paths.root}")
    console.print(f"next:\n  cd {paths.root}\n  rlhf import FEEDBACK_FILE\n  rlhf retrain\n  rlhf serve")


@app.command(name="import")
def import_(
    path: Annotated[Path, typer.Argument(help="Feedback file (JSONL / JSON / CSV / Parquet, optionally .gz).")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="pairs, ratings, hh-rlhf, trl-implicit, trl-chat, ultrafeedback, label-studio, argilla "
            "(default: detected from the rows).",
        ),
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option("--map", help="Rename the file's columns to ours: prompt=COL,chosen=COL,rejected=COL,..."),
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="Also add this prompts file (JSONL or text) to the prompt pool.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Any quarantined row is an error: nothing is stored, exit 1.")
    ] = False,
    params: ParamsOpt = None,
) -> None:
    """Import feedback into the project: detect the format, validate (Great Expectations), quarantine bad rows
    with reasons, store the rest as a new DVC version and rebuild the prompt pool.

    Exit code 0 when rows were stored (quarantined rows are counted, not an error; with --strict any quarantined
    row stores nothing and exits 1), 1 when nothing was accepted, 2 when the file or project is unusable.
    """
    from components import stages
    from components.data.feedback.formats import parse_mapping
    from components.data.feedback.schema import FeedbackFileError
    from components.data.feedback.store import StoreError
    from components.project.paths import ProjectPaths

    p = _load_params(params)
    paths = ProjectPaths.discover()
    try:
        cols = parse_mapping(mapping)
        with console.status(f"importing {path}: Great Expectations validation, then a DVC version"):
            result = stages.validate_and_store(
                p.validation, paths, source=path, store=True, fmt=fmt, mapping=cols, prompts_file=prompts, strict=strict
            )
    except ValueError as exc:
        if isinstance(exc, FeedbackFileError):
            raise _fail("cannot read feedback file", exc) from exc
        raise _fail("bad option", exc) from exc
    except StoreError as exc:
        raise _fail("import failed, nothing was stored", exc) from exc
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(_counts_table(f"rlhf import: {path.name} ({result.kind})", result))
    console.print(f"quarantined rows: {result.quarantine_path}")
    console.print(f"report:           {result.report}")
    s = result.stored
    if s is not None:
        console.print(f"data version {s.version} (was {s.previous_version}); totals {s.totals}")
    pool = paths.prompts / "pool.json"
    if pool.is_file():
        counts = json.loads(pool.read_text(encoding="utf-8"))
        console.print(
            f"prompt pool: {counts['train']} train, {counts['heldout']} held-out ({counts['multi_turn']} multi-turn), "
            f"{counts['quarantined']} quarantined {counts['by_reason'] or ''}"
        )
    if result.accepted == 0:
        console.print("[red]no row was accepted[/]: see the quarantine file for the reasons")
        raise typer.Exit(code=1)
    if strict and result.quarantined:
        console.print(f"[red]--strict[/]: {result.quarantined} rows were quarantined, so nothing was stored")
        raise typer.Exit(code=1)


def _load_params(params: Path | None, *, required: bool = True):
    """Every section of the params file, validated before any work (exit 2 with the reason otherwise).

    An explicit ``--params`` that does not exist is an error; without ``--params`` the project's
    ``params.yaml`` is used, and (only when ``required`` is false) the defaults if the project has none."""
    from components.config import ConfigError
    from components.project.params import Params, load_params
    from components.project.paths import ProjectPaths

    path = params if params is not None else ProjectPaths.discover().params
    if params is None and not path.is_file() and not required:
        return Params(*_default_sections(), path=None)
    try:
        return load_params(path)
    except ConfigError as exc:
        raise _fail("config error", exc) from exc


def _default_sections():
    from components.project.params import SECTIONS

    return [cls() for cls in SECTIONS.values()]


@contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar driven by a stage's ``progress(done, total, note)`` callback."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with RichProgress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=None, note="")

        def update(done: int, total: int, note: str) -> None:
            bar.update(task, completed=done, total=total, note=note)

        yield update


def _counts_table(title: str, result) -> Table:
    """Rows in / accepted / quarantined, then quarantined rows per failed check."""
    table = Table(title=title)
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("in", str(result.rows_in))
    table.add_row("[green]accepted[/]", str(result.accepted))
    table.add_row("[red]quarantined[/]" if result.quarantined else "quarantined", str(result.quarantined))
    for reason, count in result.by_reason.items():
        table.add_row(f"  failed [bold]{reason}[/]", str(count))
    return table


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="Feedback file: JSONL, CSV or Parquet (optionally .gz); HH-RLHF too.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: reports/validation/<file name>).")
    ] = None,
    store: Annotated[
        bool, typer.Option("--store", help="Also append the accepted rows to data/ as a new DVC version.")
    ] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="The file's format (default: detected).")] = None,
    mapping: Annotated[str | None, typer.Option("--map", help="prompt=COL,chosen=COL,... renames.")] = None,
    params: ParamsOpt = None,
) -> None:
    """Validate a feedback file: accepted rows, quarantined rows with reasons, an HTML report.

    Exit code 0 when every row was accepted, 1 when some were quarantined, 2 when the file is unusable.
    """
    from components import stages
    from components.data.feedback.formats import parse_mapping
    from components.data.feedback.schema import FeedbackFileError
    from components.data.feedback.store import StoreError
    from components.project.paths import ProjectPaths

    p = _load_params(params, required=False)
    paths = ProjectPaths(p.path.parent) if p.path else ProjectPaths.discover()
    try:
        with console.status(f"validating {path} with Great Expectations" + (" and storing it" if store else "")):
            result = stages.validate_and_store(
                p.validation, paths, source=path, out=out, store=store, fmt=fmt, mapping=parse_mapping(mapping)
            )
    except FeedbackFileError as exc:
        raise _fail("cannot read feedback file", exc) from exc
    except StoreError as exc:
        raise _fail("store error", exc) from exc
    except ValueError as exc:  # a malformed --map
        raise _fail("bad option", exc) from exc
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(_counts_table(f"rlhf validate: {path.name} ({result.kind})", result))
    console.print(f"accepted rows:    {result.accepted_path}")
    console.print(f"quarantined rows: {result.quarantine_path}")
    console.print(f"HTML report:      {result.report}")
    if result.stored is not None:
        s = result.stored
        console.print(f"data version {s.version} (was {s.previous_version}); totals {s.totals}")
    raise typer.Exit(code=0 if result.success else 1)


@app.command()
def serve(
    params: ParamsOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: serve.host in params.yaml).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: serve.port in params.yaml).")] = None,
) -> None:
    """Serve the champion over HTTP (BentoML): generate, OpenAI-compatible chat, feedback, the rater page.

    Set RLHF_API_TOKEN to protect /feedback (required on any address but loopback).
    """
    import os
    import sys

    from components.config import ConfigError
    from components.config.serve import load_serve_config
    from components.project.paths import ProjectPaths
    from serving.middleware import check_host_allowed

    params = (params or ProjectPaths.discover().params).resolve()
    try:
        cfg = load_serve_config(ProjectPaths(params.parent), params)
    except ConfigError as exc:
        console.print(f"[red]config error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    host = host or cfg.host
    port = port or cfg.port
    try:
        check_host_allowed(host, os.environ.get("RLHF_API_TOKEN"))
    except SystemExit as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(code=2) from exc
    env = {**os.environ, "RLHF_PROJECT": str(params.parent), "RLHF_PARAMS": str(params), "RLHF_SERVE_HOST": host}
    console.print(f"serving project {params.parent} on http://{host}:{port} (rater page: /rate, API docs: /)")
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:RLHFService", "--host", host, "--port", str(port)]
    cmd += ["--timeout-graceful-shutdown", str(cfg.shutdown_grace_s)]
    sys.stdout.flush()
    sys.stderr.flush()
    # Become `bentoml serve` (same process id): SIGTERM/SIGINT to `rlhf serve` then reach BentoML itself, which
    # stops its worker; a child started with subprocess would be left running when this process is killed.
    # The worker (uvicorn) stops accepting at once and gives requests in flight serve.shutdown_grace_s.
    os.execve(sys.executable, cmd, env)


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _print_json(data) -> None:

    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """Every model version: status, key metrics, gate decision."""
    from components.project.paths import ProjectPaths
    from components.records import registry

    paths = ProjectPaths.discover()
    try:
        records = registry.list_models(paths)
    except registry.RegistryError as exc:
        raise _fail("registry error", exc) from exc
    if as_json:
        _print_json([r.to_dict() for r in records])
        return
    if not records:
        console.print(
            f"no models registered in {paths.registry} yet; `rlhf demo` registers the base and a first policy"
        )
        return
    table = Table(title=f"models ({paths.registry})")
    table.add_column("version", no_wrap=True)
    for col in ("kind", "status", "parent", "judge", "win rate [95 % CI]", "KL", "RM accuracy", "gate"):
        table.add_column(col, overflow="fold")
    colours = {"champion": "bold green", "rejected": "red", "retired": "dim", "candidate": "yellow"}
    for r in records:
        ev = (r.facts.get("metrics") or {}).get("eval") or {}
        win, judge = "-", "-"
        if ev.get("judge"):
            from components.decide.judges.base import judge_label

            judge = judge_label(ev["judge"])
        elif "win_rate" in ev:
            judge = "unrecorded (before judges)"
        if "win_rate" in ev:
            lo, hi = ev["win_rate_interval"]
            win = f"{ev['win_rate']:.1%} [{lo:.1%}, {hi:.1%}] vs {ev['against']}"
        kl = ((ev.get("candidate") or {}).get("kl")) if ev else None
        rm_acc = (
            r.facts.get("reward_accuracy")
            if r.kind == "policy"
            else ((r.facts.get("metrics") or {}).get("eval") or {}).get("accuracy")
        )
        gate = "-" if r.gate is None else ("passed" if r.gate.get("passed") else "failed: " + "; ".join(
            c["reason"] for c in r.gate.get("checks", []) if not c["passed"]))  # fmt: skip
        status = r.status if r.kind == "policy" else "registered"
        status += " (files pruned)" if r.pruned else ""
        table.add_row(
            r.version,
            r.kind,
            f"[{colours.get(status, '')}]{status}[/]" if status in colours else status,
            r.parent or "-",
            judge,
            win,
            "-" if kl is None else f"{kl:.2f}",
            "-" if rm_acc is None else f"{rm_acc:.1%}",
            gate,
        )
    console.print(table)


@app.command()
def audit(
    version: Annotated[str | None, typer.Argument(help="Model version (default: the champion).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Lineage of a policy: parent, reward model, data version(s), feedback rows by source, served-output ids,
    code revision, params, gate reasons."""
    from components.project.paths import ProjectPaths
    from components.records import registry
    from components.records.lineage import audit_trail

    paths = ProjectPaths.discover()
    try:
        trail = audit_trail(paths, version)
    except registry.RegistryError as exc:
        raise _fail("registry error", exc) from exc
    if as_json:
        _print_json(trail)
        return
    console.print(_audit_text(trail))


def _audit_text(t: dict) -> str:
    m = t["model"]
    files = f"removed by `rlhf prune` at {m['pruned']}" if m.get("pruned") else m["path"]
    lines = [f"[bold]{m['version']}[/] ({m['status']}), {m['tag']}", f"  files: {files}"]
    chain = " -> ".join(f"{p['version']} ({p['status']})" for p in t["ancestry"])
    lines.append(f"  ancestry: {chain}")
    rm = t.get("reward_model")
    if rm:
        accuracy = rm.get("accuracy")
        lines.append(
            f"  reward model: {rm['version']} trained on data version {rm.get('data_version')}, held-out accuracy "
            + ("n/a" if accuracy is None else f"{accuracy:.1%}")
            + (f", trained on from {rm['parent']}" if rm.get("parent") else "")
        )
    lines.append(f"  data version: {t['data_version']}")
    for ingest in t["data_history"]:
        if ingest.get("kind") == "forget":
            removed = ", ".join(f"{k} {n}" for k, n in (ingest.get("removed") or {}).items() if n)
            lines.append(f"    {ingest['version']}: {ingest['origin']} ({removed or 'nothing'}) at {ingest['time']}")
            continue
        lines.append(
            f"    {ingest['version']}: +{ingest['accepted']} {ingest['kind']} rows from {ingest['origin']} "
            f"({ingest['quarantined']} quarantined) at {ingest['time']}"
        )
    fb = t["feedback"]
    if fb.get("note"):
        lines.append(f"  feedback rows: {fb['note']}")
    for kind, by_source in fb.get("by_source", {}).items():
        lines.append(f"  feedback {kind} by source: " + ", ".join(f"{s}: {n}" for s, n in by_source.items()))
    served = fb.get("served_ids") or {}
    if served.get("count"):
        lines.append(f"  served-output ids: {served['count']} (e.g. {', '.join(served['examples'])})")
    else:
        lines.append("  served-output ids: none (no served feedback in this data version)")
    lines += _raters_text(fb.get("raters") or {}, t.get("forgotten_raters") or [])
    pool = t.get("prompt_pool") or {}
    if "train" in pool:
        sources = ", ".join(f"{s}: {n}" for s, n in (pool.get("by_source") or {}).items())
        lines.append(
            f"  prompt pool: {pool['train']} train, {pool['heldout']} held-out "
            f"({pool.get('multi_turn', 0)} multi-turn), {pool['quarantined']} quarantined; "
            f"by source: {sources or 'none'}"
        )
    lines.append(f"  code revision: {t['code_revision']}")
    for section, values in (t.get("params") or {}).items():
        shown = ", ".join(f"{k}={v}" for k, v in list(values.items())[:12])
        lines.append(f"  params.{section}: {shown}{' ...' if len(values) > 12 else ''}")
    judge = t.get("judge")
    if judge:
        from components.decide.judges.base import judge_label

        lines.append(f"  judge: {judge_label(judge)}")
    gate = t.get("gate")
    if gate:
        how = f", win rate on its {gate['decide_on'].replace('_', ' ')}" if gate.get("decide_on") else ""
        lines.append(f"  gate: {'passed' if gate['passed'] else 'failed'} against {gate['champion']}{how}")
        for c in gate["checks"]:
            lines.append(f"    {'pass' if c['passed'] else 'FAIL'}: {c['reason']}")
    else:
        lines.append("  gate: none (the base model, or not decided yet)")
    return "\n".join(lines)


def _raters_text(raters: dict, forgotten: list[dict]) -> list[str]:
    lines = []
    by_rater = raters.get("by_rater") or {}
    if by_rater:
        counts = ", ".join(f"{n}: {c['ratings']} ratings / {c['pairs']} pairs" for n, c in by_rater.items())
        lines.append(f"  raters: {counts}")
        alpha, agree = raters.get("ratings_alpha"), raters.get("choice_agreement")
        lines.append(
            "  rater agreement: Krippendorff's alpha "
            + ("n/a" if alpha is None else f"{alpha:.3f}")
            + f" on {raters.get('replies_rated_more_than_once', 0)} replies rated more than once; choices agree "
            + ("n/a" if agree is None else f"{agree:.1%}")
            + f" on {raters.get('pairs_judged_more_than_once', 0)} pairs judged more than once"
        )
    for f in forgotten:
        where = (
            "this model's data version still holds their rows (retrain to drop them)"
            if f["in_this_data_version"]
            else "this model's data version is without them"
        )
        lines.append(f"  forgotten rater {f['rater']} at data version {f['version']}: {where}; {f['note']}")
    return lines


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="Model A: champion, base, a registered policy version or a model folder.")],
    b: Annotated[str, typer.Argument(help="Model B, what A is judged against (the same choices).")] = "base",
    params: ParamsOpt = None,
    judge: Annotated[
        str | None, typer.Option("--judge", help="Judge for this comparison (default: eval.judge in params.yaml).")
    ] = None,
    kl: Annotated[bool, typer.Option(help="Also A's KL to B (a forward pass of both models over A's replies).")] = True,
    reward: Annotated[bool, typer.Option(help="Also each model's mean score under the training reward model.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Judge model A against model B on the held-out prompts, as the evaluate stage judges a candidate: the same
    judge, prompts, seeds, samples per prompt and bootstrap interval. Prints A's win rate with its interval, both
    judge scores and A's KL to B; writes reports/compare/A-vs-B.json and .md. Registers and promotes nothing."""
    import time
    from contextlib import nullcontext
    from dataclasses import asdict, replace

    from components.decide.compare import CompareError, compare
    from components.decide.judges import JudgeError
    from components.project.paths import ProjectPaths
    from components.records import registry
    from rlhf_cli.flow_cmds import compare_table

    cfg = _load_params(params)
    paths = ProjectPaths(cfg.path.parent) if params is not None and cfg.path else ProjectPaths.discover()
    eval_cfg = cfg.eval if judge is None else replace(cfg.eval, judge=judge)
    t0 = time.perf_counter()
    try:
        with nullcontext() if as_json else _progress_bar(f"compare {a} vs {b}") as bar:
            result = compare(eval_cfg, paths, model=cfg.model, a=a, b=b, demo_task=cfg.seeding.demo_task,
                             kl=kl, reward_scores=reward, progress=bar)  # fmt: skip
    except (CompareError, JudgeError, registry.RegistryError) as exc:
        raise _fail("compare refused", exc) from exc
    if as_json:
        _print_json(asdict(result))
        return
    console.print(compare_table(asdict(result)))
    console.print(f"report: {result.report_path}; every verdict: {result.verdicts_path} "
                  f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip


@app.command()
def rollback(
    version: Annotated[str, typer.Argument(help="The version to make champion again.")],
    force: Annotated[bool, typer.Option(help="Also allow a version that was rejected or never decided.")] = False,
) -> None:
    """Make an earlier version the champion again (a running service reloads it)."""
    from components.project.paths import ProjectPaths
    from components.records import registry

    paths = ProjectPaths.discover()
    before = registry.champion(paths)
    try:
        record = registry.rollback(paths, version, force=force)
    except registry.RegistryError as exc:
        raise _fail("rollback refused", exc) from exc
    was = before.version if before else "none"
    console.print(f"champion: [bold]{record.version}[/] (was {was}); files {record.path}")


@app.command()
def prune(
    keep_last: Annotated[
        int, typer.Option(help="Also keep this many of the newest policies, whatever their status.")
    ] = 3,
    keep_retired: Annotated[
        bool,
        typer.Option(help="Keep retired champions (what `rlhf rollback` returns to); --no-keep-retired drops them."),
    ] = True,
    dry_run: Annotated[bool, typer.Option(help="List what would be removed and kept; remove nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Free disk: remove from BentoML's model store the files of versions nothing needs any more (rejected
    candidates, reward models no kept policy was trained with). Kept: the base, the champion and its ancestry,
    undecided candidates, the canary (serve.canary_version), retired champions, the newest policies and their
    reward models. Every record stays, so `rlhf models` and `rlhf audit` still show the lineage."""
    from components.config import ConfigError
    from components.project.params import load_params
    from components.project.paths import ProjectPaths
    from components.records import registry

    paths = ProjectPaths.discover()
    try:
        canary = load_params(paths.params).serve.canary_version if paths.params.is_file() else None
    except ConfigError as exc:
        raise _fail("config error", exc) from exc
    try:
        result = registry.prune(paths, keep_last=keep_last, keep_retired=keep_retired,
                                also=(canary,) if canary else (), dry_run=dry_run)  # fmt: skip
    except registry.RegistryError as exc:
        raise _fail("registry error", exc) from exc
    if as_json:
        _print_json({"removed": result.removed, "kept": result.kept, "freed_bytes": result.freed_bytes,
                     "dry_run": result.dry_run})  # fmt: skip
        return
    verb = "would remove" if dry_run else "removed"
    for version, why in result.kept.items():
        console.print(f"  keep {version}: {why}")
    for version in result.removed:
        console.print(f"  {verb} {version}")
    console.print(
        f"{verb} {len(result.removed)} version(s)' files, {result.freed_bytes / 1e6:.0f} MB; kept {len(result.kept)}"
    )


from rlhf_cli import flow_cmds  # noqa: E402  (retrain, deploy: the Prefect commands)

flow_cmds.register(app)

from rlhf_cli import raters_cmds  # noqa: E402  (rlhf raters add|revoke|list)

raters_cmds.register(app)

if __name__ == "__main__":
    app()
