"""``rlhf raters add|revoke|list``: one API token per person who rates replies."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from rlhf_cli.console import make_console

raters = typer.Typer(
    help="People who rate served replies: each has their own API token (stored hashed in live/raters.json).",
    no_args_is_help=True,
)
console = make_console()
NameArg = Annotated[str, typer.Argument(help="The rater's name, recorded with every judgement they send.")]


def _file():
    from components.paths import ProjectPaths
    from components.raters import raters_file

    return raters_file(ProjectPaths.discover().live)


@raters.command("add")
def add(name: NameArg) -> None:
    """Add a rater and print their token once (only its hash is kept: a lost token is revoked and re-added)."""
    from components.raters import add_rater

    path = _file()
    try:
        token = add_rater(path, name)
    except ValueError as exc:
        console.print(f"[red]rater not added:[/] {exc}")
        raise typer.Exit(code=2) from exc
    console.print(f"rater [bold]{name}[/] added to {path}; their token (shown once, give it to them privately):")
    print(token)


@raters.command("revoke")
def revoke(name: NameArg) -> None:
    """Remove a rater: their token stops working on the next request (their past feedback stays)."""
    from components.raters import revoke_rater

    path = _file()
    try:
        revoke_rater(path, name)
    except (KeyError, ValueError) as exc:
        console.print(f"[red]nothing revoked:[/] {exc.args[0]}")
        raise typer.Exit(code=2) from exc
    console.print(f"rater [bold]{name}[/] revoked")


@raters.command("list")
def list_() -> None:
    """The registered raters (names and when they were added; never tokens)."""
    from components.raters import load_raters

    path = _file()
    try:
        found = load_raters(path)
    except ValueError as exc:
        console.print(f"[red]cannot read raters:[/] {exc}")
        raise typer.Exit(code=2) from exc
    if not found:
        console.print(f"no raters in {path}: `rlhf raters add NAME` adds one")
        return
    table = Table("rater", "added")
    for r in sorted(found.values(), key=lambda r: r.name):
        table.add_row(r.name, r.created_at)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(raters, name="raters")
