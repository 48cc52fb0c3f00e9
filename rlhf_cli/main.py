"""``rlhf``: the command-line face of rlhf-loop (typer + rich).

Heavy imports (torch, transformers, Prefect, BentoML, Great Expectations) happen inside each command so
``rlhf --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

for _key, _value in {
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

app = typer.Typer(
    name="rlhf",
    help="rlhf-loop: feedback -> validation -> reward model -> PPO -> gate -> serving, closed in one loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml holding every stage's config.")]


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


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def demo(
    params: ParamsOpt = Path("params.yaml"),
    prompt: Annotated[str, typer.Option(help="Sample prompt for the base model.")] = (
        "My package arrived damaged. What should I do?"
    ),
    reseed: Annotated[
        bool, typer.Option(help="Sample new seed feedback even when the versioned data already holds some.")
    ] = False,
) -> None:
    """The whole loop on the embedded default, on CPU (stages join as they are built)."""
    import time

    from components.base_model import describe, load_base
    from components.config import ConfigError, ModelConfig, load_section
    from components.generation import generate
    from components.paths import ProjectPaths

    t0 = time.perf_counter()
    params = params.resolve()
    paths = ProjectPaths(params.parent)
    try:
        cfg = load_section(ModelConfig, "model", params)
    except ConfigError as exc:
        console.print(f"[red]config error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    with console.status(f"preparing base model {cfg.base} (first run downloads and converts it)"):
        model, tok = load_base(cfg.base, dtype=cfg.dtype)
    console.print(f"[green]base model[/] {cfg.base}: {describe(model)}")
    with console.status("sampling a reply"):
        out = generate(model, tok, [prompt], system=cfg.system_prompt, max_new_tokens=64, generator_seed=cfg.seed)
    console.print(f"[bold]user:[/] {prompt}\n[bold]assistant:[/] {out.texts[0]}")

    table = Table(title="rlhf demo: stages")
    table.add_column("stage")
    table.add_column("result")
    table.add_row("base model", f"[green]done[/]: {describe(model)}")

    # 1. seed feedback -> validate -> version
    existing = _stored_pairs(paths)
    if existing and not reseed:
        console.print(f"seed feedback already versioned ({existing} pairs in {paths.feedback}); --reseed samples more")
        table.add_row("seed + validate + version", f"[green]reused[/]: {existing} stored pairs")
    else:
        seeded = _seed_demo(params, cfg, model, tok)
        v = seeded.ingest.validation
        table.add_row("seed feedback (gold annotator)", f"[green]done[/]: {seeded.stats['pairs']} pairs")
        table.add_row(
            "validate (Great Expectations)",
            f"[green]done[/]: {len(v.accepted)} accepted, {len(v.quarantined)} quarantined",
        )
        table.add_row("version (DVC)", f"[green]done[/]: {seeded.ingest.version}")

    # 2. reward model
    reward = _train_reward_demo(params, paths)
    acc = reward.eval_accuracy
    table.add_row(
        "reward model (Bradley-Terry)",
        f"[green]done[/]: held-out accuracy vs gold labels {acc:.1%}" if acc is not None else "[green]done[/]",
    )

    # 3. before: the base policy on held-out prompts
    before = _evaluate_demo(params, paths, cfg, model, model, tok, "base policy")

    # 4. PPO
    policy_dir = _ppo_demo(params, paths)
    policy, _ = load_base(str(policy_dir), dtype=cfg.dtype)
    after = _evaluate_demo(params, paths, cfg, policy, model, tok, "PPO policy")
    table.add_row("PPO (LoRA, CPU)", f"[green]done[/]: policy in {policy_dir}")
    for stage in ("evaluate + gate", "serve + traffic", "second round"):
        table.add_row(stage, "[yellow]not built yet[/]")
    console.print(_before_after_table(before, after, _kl_target(params)))
    console.print(table)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")


def _stored_pairs(paths) -> int:
    import pandas as pd

    pairs = paths.feedback / "pairs.parquet"
    return len(pd.read_parquet(pairs, columns=["prompt"])) if pairs.is_file() else 0


def _train_reward_demo(params: Path, paths):
    from components.config import load_section
    from components.reward.config import RewardConfig
    from components.reward.trainer import train_reward

    rcfg = load_section(RewardConfig, "reward", params)
    console.print(f"training the reward model ({rcfg.backbone}, {rcfg.trainable} layers, {rcfg.epochs} epochs)")
    result = train_reward(
        paths.feedback / "pairs.parquet", rcfg, paths.models / "reward", paths.metrics, project_root=paths.root
    )
    ev = result.metrics["eval"]
    first = (
        f" ({ev['first_pair_accuracy']:.1%} on the {ev['first_pairs']} best-vs-worst pairs)"
        if "first_pair_accuracy" in ev
        else ""
    )
    console.print(
        f"reward model: held-out preference accuracy {ev.get('accuracy', float('nan')):.1%} on {ev.get('pairs', '?')} "
        f"pairs labelled by the gold annotator{first}; metrics in {paths.metrics / 'reward.json'}"
    )
    return result


def _ppo_demo(params: Path, paths) -> Path:
    from components.config import load_section
    from components.ppo.config import PPOConfig
    from components.ppo.train import run

    pcfg = load_section(PPOConfig, "ppo", params)
    console.print(f"PPO: {pcfg.steps} steps x {pcfg.batch_size} prompts against the reward model (LoRA={pcfg.lora})")
    run(params, paths.root)
    return paths.root / pcfg.output_dir


def _evaluate_demo(params: Path, paths, model_cfg, policy, reference, tok, label: str):
    import json

    from components.config import load_section
    from components.demo_task import gold, load_prompts
    from components.evaluation import evaluate_policy
    from components.ppo.config import PPOConfig
    from components.reward.model import RewardModel

    pcfg = load_section(PPOConfig, "ppo", params)
    rm = RewardModel.load(paths.models / "reward")
    prompts = [p["prompt"] for p in load_prompts("heldout")]
    with console.status(f"evaluating the {label} on {len(prompts)} held-out prompts"):
        result = evaluate_policy(
            policy,
            reference,
            tok,
            prompts,
            rm.score,
            gold.score,
            system=model_cfg.system_prompt,
            max_new_tokens=pcfg.max_new_tokens,
            temperature=pcfg.temperature,
            seed=model_cfg.seed,
        )
    paths.metrics.mkdir(parents=True, exist_ok=True)
    name = "eval_base.json" if reference is policy else "eval_policy.json"
    record = {k: v for k, v in result.__dict__.items() if k != "examples"}
    (paths.metrics / name).write_text(json.dumps(record, indent=2))
    for p, r in result.examples[:2]:
        console.print(f"[dim]{label}[/] [bold]user:[/] {p}\n    [bold]assistant:[/] {r}")
    return result


def _kl_target(params: Path) -> float | None:
    """The adaptive KL controller's target, shown beside the measured KL (None with a fixed coefficient)."""
    from components.config import load_section
    from components.ppo.config import PPOConfig

    pcfg = load_section(PPOConfig, "ppo", params)
    return pcfg.kl_target if pcfg.adaptive_kl else None


def _before_after_table(before, after, kl_target: float | None = None) -> Table:
    table = Table(title=f"held-out prompts ({before.n}), one sampled reply each")
    table.add_column("metric")
    table.add_column("base policy", justify="right")
    table.add_column("after PPO", justify="right")
    table.add_column("change", justify="right")
    for name, key in (
        ("reward-model score (normalised)", "reward_score"),
        ("gold annotator score", "gold_score"),
        ("KL, nats/reply" + (f" (target {kl_target:g})" if kl_target else ""), "kl"),
        ("replies that end (EOS)", "eos_fraction"),
        ("reply length (tokens)", "mean_tokens"),
    ):
        a, b = getattr(before, key), getattr(after, key)
        table.add_row(name, f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}")
    return table


def _seed_demo(params: Path, model_cfg, model, tok):
    """Seed the demo task's feedback with the base model, validate it and version it with DVC."""
    from components.demo_task import load_prompts
    from components.demo_task.seed import seed_demo_feedback
    from components.feedback.store import StoreError
    from components.paths import ProjectPaths

    data_cfg = _data_config(params)
    paths = ProjectPaths(params.parent)
    n = min(data_cfg.seed_prompts, len(load_prompts("train"))) * data_cfg.replies_per_prompt
    console.print(f"seeding demo feedback: {n} replies from the base model, labelled by the gold annotator")
    try:
        seeded = seed_demo_feedback(
            paths, data_cfg, model, tok, system=model_cfg.system_prompt, report_dir=paths.reports / "seed-validation"
        )
    except StoreError as exc:
        console.print(f"[red]store error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    s = seeded.stats
    console.print(
        f"gold annotator: {s['pairs']} pairs from {s['replies']} replies ({s['skipped_prompts']} prompts skipped as "
        f"near-ties); mean gold score chosen {s['mean_gold_chosen']} vs rejected {s['mean_gold_rejected']}"
    )
    console.print(_counts_table("seed feedback validation", seeded.ingest.validation))
    console.print(
        f"data version [bold]{seeded.ingest.version}[/] (was {seeded.ingest.previous_version}); "
        f"stored rows {seeded.ingest.totals}; report {seeded.ingest.validation.report}; {seeded.seconds:.0f} s"
    )
    return seeded


@app.command()
def retrain(params: ParamsOpt = Path("params.yaml")) -> None:
    """One run of the retraining flow on the current data (what the schedule runs)."""
    _not_built("retrain", "the retraining flow comes with the orchestration issue")


def _data_config(params: Path):
    from components.config import ConfigError, load_section
    from components.feedback.config import DataConfig

    try:
        return load_section(DataConfig, "data", params) if params.is_file() else DataConfig()
    except ConfigError as exc:
        console.print(f"[red]config error:[/] {exc}")
        raise typer.Exit(code=2) from exc


def _counts_table(title: str, result) -> Table:
    """Rows in / accepted / quarantined, then quarantined rows per failed check."""
    table = Table(title=title)
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("in", str(result.rows_in))
    table.add_row("[green]accepted[/]", str(len(result.accepted)))
    table.add_row("[red]quarantined[/]" if len(result.quarantined) else "quarantined", str(len(result.quarantined)))
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
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Validate a feedback file: accepted rows, quarantined rows with reasons, an HTML report.

    Exit code 0 when every row was accepted, 1 when some were quarantined, 2 when the file is unusable.
    """
    from components.feedback.schema import FeedbackFileError
    from components.feedback.store import StoreError, append, ensure_checked_out, existing_keys
    from components.feedback.validation import validate_file, write_outputs
    from components.paths import ProjectPaths

    cfg = _data_config(params)
    paths = ProjectPaths.discover()
    out = out or paths.reports / "validation" / path.name.split(".")[0]
    try:
        if store:
            ensure_checked_out(paths)
        keys = existing_keys(paths) if paths.feedback.is_dir() else None
        with console.status(f"validating {path} with Great Expectations"):
            result = validate_file(path, cfg, existing_keys=keys, report_dir=out / "report")
        written = write_outputs(result, out)
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}")
        console.print(_counts_table(f"rlhf validate: {path.name} ({result.kind})", result))
        console.print(f"accepted rows:    {written['accepted']}")
        console.print(f"quarantined rows: {written['quarantine']}")
        console.print(f"HTML report:      {result.report}")
        if store:
            with console.status("appending to the versioned store (dvc add + push)"):
                ingest = append(paths, result, origin=str(path))
            console.print(f"data version {ingest.version} (was {ingest.previous_version}); totals {ingest.totals}")
    except FeedbackFileError as exc:
        console.print(f"[red]cannot read feedback file:[/] {exc}")
        raise typer.Exit(code=2) from exc
    except StoreError as exc:
        console.print(f"[red]store error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    raise typer.Exit(code=0 if result.success else 1)


@app.command()
def serve(port: Annotated[int, typer.Option(help="HTTP port.")] = 3000) -> None:
    """Serve the champion over HTTP (BentoML)."""
    _not_built("serve", "serving comes with the serving issue")


@app.command()
def deploy(cron: Annotated[str, typer.Option(help="Cron schedule for retraining.")] = "0 3 * * *") -> None:
    """Register the scheduled retraining deployment on a Prefect work pool."""
    _not_built("deploy", "deployments come with the orchestration issue")


@app.command()
def models() -> None:
    """Every model version: status, metrics, gate decision."""
    _not_built("models", "the model registry comes with the evaluation-gate issue")


@app.command()
def audit(version: Annotated[str | None, typer.Argument(help="Model version (default: champion).")] = None) -> None:
    """Lineage of a model: parent, data version, feedback rows and sources, code revision, params."""
    _not_built("audit", "lineage comes with the registry issue")


if __name__ == "__main__":
    app()
