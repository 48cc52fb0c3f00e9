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
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from components.env import telemetry_off

telemetry_off()

app = typer.Typer(
    name="rlhf",
    help="rlhf-loop: feedback -> validation -> reward model -> PPO -> gate -> serving, closed in one loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()


ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", help="params.yaml holding every stage's config (default: the project's params.yaml)."),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
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
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    _setup_logging(verbose)


def _load_params(params: Path | None, *, required: bool = True):
    """Every section of the params file, validated before any work (exit 2 with the reason otherwise).

    An explicit ``--params`` that does not exist is an error; without ``--params`` the project's
    ``params.yaml`` is used, and (only when ``required`` is false) the defaults if the project has none."""
    from components.config import ConfigError
    from components.params import Params, load_params
    from components.paths import ProjectPaths

    path = params if params is not None else ProjectPaths.discover().params
    if params is None and not path.is_file() and not required:
        return Params(*_default_sections(), path=None)
    try:
        return load_params(path)
    except ConfigError as exc:
        raise _fail("config error", exc) from exc


def _default_sections():
    from components.params import SECTIONS

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


@app.command()
def demo(
    params: ParamsOpt = None,
    prompt: Annotated[str, typer.Option(help="Sample prompt for the base model.")] = (
        "My package arrived damaged. What should I do?"
    ),
    reseed: Annotated[
        bool, typer.Option(help="Sample new seed feedback even when the versioned data already holds some.")
    ] = False,
) -> None:
    """The whole loop on the embedded default, on CPU: seed -> validate -> reward model -> PPO -> evaluate ->
    gate -> promote."""
    import time

    from components import stages
    from components.base_model import describe, load_base
    from components.feedback.store import StoreError
    from components.generation import generate
    from components.paths import ProjectPaths

    t0 = time.perf_counter()
    p = _load_params(params)
    paths = ProjectPaths(p.path.parent)
    cfg = p.model
    with console.status(f"preparing base model {cfg.base} (first run downloads and converts it)"):
        model, tok = load_base(cfg.base, dtype=cfg.dtype)
    console.print(f"[green]base model[/] {cfg.base}: {describe(model)}")
    with console.status("sampling a reply"):
        out = generate(model, tok, [prompt], system=cfg.system_prompt, max_new_tokens=64, generator_seed=cfg.seed)
    console.print(f"[bold]user:[/] {prompt}\n[bold]assistant:[/] {out.texts[0]}")
    del model

    table = Table(title="rlhf demo: stages")
    table.add_column("stage")
    table.add_column("result")
    table.add_row("base model", f"[green]done[/]: {cfg.base}")

    # 1. seed feedback: sample -> label -> validate + version
    existing = _stored_pairs(paths)
    if existing and not reseed:
        console.print(f"seed feedback already versioned ({existing} pairs in {paths.feedback}); --reseed samples more")
        table.add_row("seed + validate + version", f"[green]reused[/]: {existing} stored pairs")
    else:
        try:
            ingest = _seed_demo(p, paths)
        except StoreError as exc:
            raise _fail("store error", exc) from exc
        table.add_row("validate (Great Expectations)", f"[green]done[/]: {ingest.accepted} accepted, "
                      f"{ingest.quarantined} quarantined")  # fmt: skip
        table.add_row("version (DVC)", f"[green]done[/]: {ingest.version}")

    # 2. reward model
    console.print(f"training the reward model ({p.reward.backbone}, {p.reward.trainable} layers, {p.reward.epochs} "
                  "epochs)")  # fmt: skip
    with _progress_bar("reward model") as progress:
        reward = stages.train_reward_model(p.reward, paths, progress=progress)
    acc = "n/a" if reward.accuracy is None else f"{reward.accuracy:.1%}"
    console.print(
        f"reward model {reward.version}: held-out preference accuracy {acc} on {reward.heldout_pairs} pairs "
        f"labelled by the gold annotator{_first_pair_note(reward.metrics_path)}; metrics in {reward.metrics_path}"
    )
    table.add_row("reward model (Bradley-Terry)", f"[green]done[/]: {reward.version}, held-out accuracy {acc}")

    # 3. PPO: a new policy version
    console.print(f"PPO: {p.ppo.steps} steps x {p.ppo.batch_size} prompts against the reward model "
                  f"(LoRA={p.ppo.lora})")  # fmt: skip
    with _progress_bar("PPO") as progress:
        policy = stages.train_policy(p.ppo, paths, model=p.model, reward=reward.path, progress=progress)
    table.add_row("PPO", f"[green]done[/]: policy {policy.version}")

    # 4. evaluate -> gate -> promote
    outcome = _evaluate_gate_promote(p, paths, policy.path)
    table.add_row("evaluate + gate", ("[green]passed[/]" if outcome.status == "champion" else "[red]failed[/]")
                  + f": gold win rate vs {outcome.previous_champion}")  # fmt: skip
    table.add_row("registry", f"champion [bold]{outcome.champion}[/] ({outcome.version} {outcome.status})")
    for stage in ("serve + traffic", "second round"):
        table.add_row(stage, "[yellow]not built yet[/]")
    console.print(table)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")


def _evaluate_gate_promote(p, paths, policy_dir: str):
    """evaluate -> gate -> register/promote, printing the comparison, the gate table and the decision."""
    from components import stages

    kl_target = p.ppo.kl_target if p.ppo.adaptive_kl else None
    with _progress_bar("evaluate") as progress:
        ev = stages.evaluate(p.eval, paths, model=p.model, candidate=policy_dir, kl_target=kl_target,
                             progress=progress)  # fmt: skip
    console.print(_comparison_table(ev))
    console.print(
        f"[bold]gold win rate of {ev.candidate.version} vs {ev.champion.version}: {ev.win_rate:.1%}[/] "
        f"(95 % interval {ev.win_rate_low:.1%} - {ev.win_rate_high:.1%}; {ev.wins} wins, {ev.ties} ties, "
        f"{ev.losses} losses over {ev.prompts} prompts x {ev.samples_per_prompt} samples; {ev.interval})"
    )
    decision = stages.gate(p.gate, paths, evaluation=ev)
    console.print(_gate_table(decision))
    outcome = stages.register_and_decide(paths, policy=policy_dir, evaluation=ev, gate=decision)
    if outcome.status == "champion":
        console.print(f"[green]promoted[/] {outcome.version}: champion (was {outcome.previous_champion})")
    else:
        console.print(f"[red]rejected[/] {outcome.version}; champion stays {outcome.champion}")
    console.print(f"report: {ev.report_path}")
    return outcome


def _comparison_table(ev) -> Table:
    c, h = ev.candidate, ev.champion
    table = Table(title=f"held-out prompts ({ev.prompts}) x {ev.samples_per_prompt} samples")
    table.add_column("metric")
    table.add_column(f"champion {h.version}", justify="right")
    table.add_column(f"candidate {c.version}", justify="right")
    table.add_column("change", justify="right")
    for name, key in (
        ("reward-model score (normalised)", "reward_score"),
        ("gold annotator score", "gold_score"),
        ("replies that end (EOS)", "eos_rate"),
        ("reply length (tokens)", "mean_tokens"),
        ("degenerate replies", "degenerate_rate"),
    ):
        a, b = getattr(h, key), getattr(c, key)
        table.add_row(name, f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}")
    kl = "n/a" if c.kl is None else f"{c.kl:.3f}"
    table.add_row("KL to reference, nats/reply" + (f" (target {ev.kl_target:g})" if ev.kl_target else ""), "-", kl, "")
    return table


def _gate_table(decision) -> Table:
    verdict = "[green]PASSED[/]" if decision.passed else "[red]FAILED[/]"
    table = Table(title=f"gate: {decision.candidate} vs champion {decision.champion}: {verdict}")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("result")
    table.add_column("reason")
    for c in decision.checks:
        value = "-" if c.value is None else (str(c.value) if isinstance(c.value, bool) else f"{c.value:.3f}")
        threshold = str(c.threshold) if isinstance(c.threshold, bool) else f"{c.threshold:g}"
        table.add_row(c.name, value, threshold, "[green]pass[/]" if c.passed else "[red]fail[/]", c.reason)
    return table


def _first_pair_note(metrics_path: Path) -> str:
    """With several pairs per prompt: the accuracy on each held-out prompt's best-vs-worst pair, for the note."""
    try:
        ev = json.loads(Path(metrics_path).read_text(encoding="utf-8"))["eval"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if "first_pair_accuracy" not in ev:
        return ""
    return f" ({ev['first_pair_accuracy']:.1%} on the {ev['first_pairs']} best-vs-worst pairs)"


def _stored_pairs(paths) -> int:
    import pandas as pd

    pairs = paths.feedback / "pairs.parquet"
    return len(pd.read_parquet(pairs, columns=["prompt"])) if pairs.is_file() else 0


def _seed_demo(p, paths):
    """Seed the demo task's feedback: sample with the base model, label with the gold annotator, ingest."""
    from components import stages
    from components.demo_task import load_prompts

    data = p.data
    n = min(data.seed_prompts, len(load_prompts("train"))) * data.replies_per_prompt
    console.print(f"seeding demo feedback: {n} replies from the base model, labelled by the gold annotator")
    with _progress_bar("seed replies") as progress:
        sample = stages.sample_seed(data, paths, model=p.model, progress=progress)
    if sample.reused:
        console.print(f"reused the replies sampled earlier ({sample.path})")
    labels = stages.label_seed(data, paths, sample=sample)
    s = labels.stats
    console.print(
        f"gold annotator: {s['pairs']} pairs from {s['replies']} replies ({s['skipped_prompts']} prompts skipped as "
        f"near-ties); mean gold score chosen {s['mean_gold_chosen']} vs rejected {s['mean_gold_rejected']}"
    )
    with console.status("validating (Great Expectations) and versioning (DVC)"):
        ingest = stages.ingest_seed(data, paths, labels=labels, report_dir=paths.reports / "seed-validation")
    console.print(_counts_table("seed feedback validation", ingest))
    console.print(
        f"data version [bold]{ingest.version}[/] (was {ingest.previous_version}); stored rows {ingest.totals}; "
        f"report {ingest.report}; {sample.seconds:.0f} s sampling"
    )
    return ingest


@app.command()
def retrain(params: ParamsOpt = None) -> None:
    """One run of the retraining flow on the current data (what the schedule runs)."""
    _not_built("retrain", "the retraining flow comes with the orchestration issue")


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
    params: ParamsOpt = None,
) -> None:
    """Validate a feedback file: accepted rows, quarantined rows with reasons, an HTML report.

    Exit code 0 when every row was accepted, 1 when some were quarantined, 2 when the file is unusable.
    """
    from components import stages
    from components.feedback.schema import FeedbackFileError
    from components.feedback.store import StoreError
    from components.paths import ProjectPaths

    p = _load_params(params, required=False)
    paths = ProjectPaths(p.path.parent) if p.path else ProjectPaths.discover()
    try:
        with console.status(f"validating {path} with Great Expectations" + (" and storing it" if store else "")):
            result = stages.validate_and_store(p.data, paths, source=path, out=out, store=store)
    except FeedbackFileError as exc:
        raise _fail("cannot read feedback file", exc) from exc
    except StoreError as exc:
        raise _fail("store error", exc) from exc
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
def serve(port: Annotated[int, typer.Option(help="HTTP port.")] = 3000) -> None:
    """Serve the champion over HTTP (BentoML)."""
    _not_built("serve", "serving comes with the serving issue")


@app.command()
def deploy(cron: Annotated[str, typer.Option(help="Cron schedule for retraining.")] = "0 3 * * *") -> None:
    """Register the scheduled retraining deployment on a Prefect work pool."""
    _not_built("deploy", "deployments come with the orchestration issue")


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _print_json(data) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """Every model version: status, key metrics, gate decision."""
    from components import registry
    from components.paths import ProjectPaths

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
    for col in ("kind", "status", "parent", "gold win rate [95 % CI]", "KL", "RM accuracy", "gate"):
        table.add_column(col, overflow="fold")
    colours = {"champion": "bold green", "rejected": "red", "retired": "dim", "candidate": "yellow"}
    for r in records:
        ev = (r.facts.get("metrics") or {}).get("eval") or {}
        win = "-"
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
        table.add_row(
            r.version,
            r.kind,
            f"[{colours.get(status, '')}]{status}[/]" if status in colours else status,
            r.parent or "-",
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
    from components import registry
    from components.lineage import audit_trail
    from components.paths import ProjectPaths

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
    lines = [f"[bold]{m['version']}[/] ({m['status']}), {m['tag']}", f"  files: {m['path']}"]
    chain = " -> ".join(f"{p['version']} ({p['status']})" for p in t["ancestry"])
    lines.append(f"  ancestry: {chain}")
    rm = t.get("reward_model")
    if rm:
        acc = rm.get("accuracy")
        lines.append(
            f"  reward model: {rm['version']} trained on data version {rm.get('data_version')}, held-out accuracy "
            + ("n/a" if acc is None else f"{acc:.1%}")
        )
    lines.append(f"  data version: {t['data_version']}")
    for ingest in t["data_history"]:
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
    lines.append(f"  code revision: {t['code_revision']}")
    for section, values in (t.get("params") or {}).items():
        shown = ", ".join(f"{k}={v}" for k, v in list(values.items())[:12])
        lines.append(f"  params.{section}: {shown}{' ...' if len(values) > 12 else ''}")
    gate = t.get("gate")
    if gate:
        lines.append(f"  gate: {'passed' if gate['passed'] else 'failed'} against {gate['champion']}")
        for c in gate["checks"]:
            lines.append(f"    {'pass' if c['passed'] else 'FAIL'}: {c['reason']}")
    else:
        lines.append("  gate: none (the base model, or not decided yet)")
    return "\n".join(lines)


@app.command()
def rollback(
    version: Annotated[str, typer.Argument(help="The version to make champion again.")],
    force: Annotated[bool, typer.Option(help="Also allow a version that was rejected or never decided.")] = False,
) -> None:
    """Make an earlier version the champion again (a running service reloads it)."""
    from components import registry
    from components.paths import ProjectPaths

    paths = ProjectPaths.discover()
    before = registry.champion(paths)
    try:
        record = registry.rollback(paths, version, force=force)
    except registry.RegistryError as exc:
        raise _fail("rollback refused", exc) from exc
    was = before.version if before else "none"
    console.print(f"champion: [bold]{record.version}[/] (was {was}); files {record.path}")


if __name__ == "__main__":
    app()
