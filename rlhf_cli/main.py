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
    for noisy in ("httpx", "urllib3", "filelock", "prefect", "bentoml"):
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
) -> None:
    """The whole loop on the embedded default, on CPU (stages join as they are built)."""
    from components.base_model import describe, load_base
    from components.config import ConfigError, ModelConfig, load_section
    from components.generation import generate

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
    table.add_column("status")
    table.add_row("base model", "[green]done[/]")
    for stage in ("seed feedback", "validate", "reward model", "PPO", "evaluate + gate", "serve + traffic"):
        table.add_row(stage, "[yellow]not built yet[/]")
    console.print(table)


@app.command()
def retrain(params: ParamsOpt = Path("params.yaml")) -> None:
    """One run of the retraining flow on the current data (what the schedule runs)."""
    _not_built("retrain", "the retraining flow comes with the orchestration issue")


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="Feedback file (JSONL, Parquet or CSV).")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Validate a feedback file: accepted rows, quarantined rows with reasons, an HTML report."""
    _not_built("validate", "validation comes with the feedback-data issue")


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
