"""``rlhf raters add|revoke|list``: one API token per person who rates replies."""

from __future__ import annotations

from pathlib import Path
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
    from components.data.raters import raters_file
    from components.project.paths import ProjectPaths

    return raters_file(ProjectPaths.discover().live)


@raters.command("add")
def add(name: NameArg) -> None:
    """Add a rater and print their token once (only its hash is kept: a lost token is revoked and re-added)."""
    from components.data.raters import add_rater

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
    from components.data.raters import revoke_rater

    path = _file()
    try:
        revoke_rater(path, name)
    except (KeyError, ValueError) as exc:
        console.print(f"[red]nothing revoked:[/] {exc.args[0]}")
        raise typer.Exit(code=2) from exc
    console.print(f"rater [bold]{name}[/] revoked")


@raters.command("admin")
def admin() -> None:
    """Make the admin token, or a new one (the old one stops working): it opens the review queue and /admin."""
    from components.data.raters import load_admin, rotate_admin

    path = _file()
    try:
        had = load_admin(path) is not None
        token = rotate_admin(path)
    except ValueError as exc:
        console.print(f"[red]no admin token made:[/] {exc}")
        raise typer.Exit(code=2) from exc
    what = "rotated (the old one no longer works)" if had else "made"
    console.print(f"admin token {what} in {path}; shown once, keep it private:")
    print(token)


@raters.command("list")
def list_() -> None:
    """The registered raters (names and when they were added; never tokens) and whether an admin token exists."""
    from components.data.raters import load_admin, load_raters

    path = _file()
    try:
        found, admin_token = load_raters(path), load_admin(path)
    except ValueError as exc:
        console.print(f"[red]cannot read raters:[/] {exc}")
        raise typer.Exit(code=2) from exc
    console.print(
        f"admin token: made {admin_token.created_at}"
        if admin_token
        else "admin token: none (`rlhf raters admin` makes one)"
    )
    if not found:
        console.print(f"no raters in {path}: `rlhf raters add NAME` adds one")
        return
    table = Table("rater", "added")
    for r in sorted(found.values(), key=lambda r: r.name):
        table.add_row(r.name, r.created_at)
    console.print(table)


def forget(
    rater: Annotated[str, typer.Option("--rater", help="Whose feedback to remove (their rater name).")],
    no_push: Annotated[bool, typer.Option("--no-push", help="Do not push the new data version.")] = False,
) -> None:
    """Remove one rater's feedback from the next data version and the served store, and revoke their token.
    Earlier data versions keep it in DVC's history (the audit says so)."""
    from components import stages
    from components.data.feedback.store import StoreError
    from components.project.paths import ProjectPaths

    paths = ProjectPaths.discover()
    try:
        done = stages.forget_rater(paths, rater, store_url=_served_store(paths), push=not no_push)
    except (StoreError, ValueError) as exc:
        console.print(f"[red]nothing forgotten:[/] {exc}")
        raise typer.Exit(code=2) from exc
    removed = ", ".join(f"{k} {n}" for k, n in done.removed.items() if n) or "no rows found"
    console.print(f"forgot rater [bold]{rater}[/]: {removed}; token {'revoked' if done.revoked else 'already gone'}")
    console.print(f"data version {done.version} (was {done.previous_version}): {done.note}")


def _served_store(paths) -> str | None:
    """The served-output store's URL, or None when no service has made one in this project."""
    from components.config.serve import load_serve_config
    from components.data.served_store import store_url

    url = store_url(load_serve_config(paths), paths)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    return url


def register(app: typer.Typer) -> None:
    app.add_typer(raters, name="raters")
    app.command("forget")(forget)
