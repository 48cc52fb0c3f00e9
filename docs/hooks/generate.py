"""MkDocs hook: pages generated at build time, so they cannot drift from what they describe.

- ``configuration.md``: the configuration reference; the page's ``<!-- config-reference -->`` marker becomes one
  table per ``params.yaml`` section, read from the config dataclasses (type, default, and the docstring written
  under each field) and the shipped ``params.yaml``.
- ``stage-api.md``: its ``<!-- stage-api -->`` marker becomes a table of the functions ``components/stages.py``
  exports, then their reference (signature, docstring, result dataclasses) through mkdocstrings.
- ``cli.md``: its ``<!-- cli-reference -->`` marker becomes every ``rlhf`` command with its usage, help and
  options, read from the typer app.
- ``scaling-out/*.md``: the ``infra/`` guides (kept beside the files they describe, published here).
- ``assets/*.png``: figures that benchmark scripts write under ``bench/results/``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
INFRA = {"README.md": "scaling-out/index.md", "orchestration.md": "scaling-out/orchestration.md"}
INFRA["serving.md"] = "scaling-out/serving.md"
FIGURES = ("alignment.png", "alignment_cpu_pairs2.png", "alignment_algorithms.png")
MARKER = "<!-- config-reference -->"
CLI_MARKER = "<!-- cli-reference -->"
STAGE_MARKER = "<!-- stage-api -->"
GROUP = re.compile(r"^\s*#\s*-+\s*(.+?)\s*-*\s*$")


def on_files(files: Files, config: Any) -> Files:
    for name, dest in INFRA.items():
        files.append(File.generated(config, dest, abs_src_path=str(ROOT / "infra" / name)))
    for name in FIGURES:
        files.append(File.generated(config, f"assets/{name}", abs_src_path=str(ROOT / "bench" / "results" / name)))
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "configuration.md":
        if MARKER not in markdown:
            raise ValueError(f"docs/configuration.md lost its {MARKER} marker: the reference has nowhere to go")
        return markdown.replace(MARKER, configuration_reference())
    if page.file.src_uri == "cli.md":
        if CLI_MARKER not in markdown:
            raise ValueError(f"docs/cli.md lost its {CLI_MARKER} marker: the reference has nowhere to go")
        return markdown.replace(CLI_MARKER, cli_reference())
    if page.file.src_uri == "stage-api.md":
        if STAGE_MARKER not in markdown:
            raise ValueError(f"docs/stage-api.md lost its {STAGE_MARKER} marker: the reference has nowhere to go")
        return markdown.replace(STAGE_MARKER, stage_reference())
    return markdown


def _first_paragraph(text: str | None) -> str:
    return inspect.cleandoc(text or "").split("\n\n")[0]


def _options_table(params: list) -> list[str]:
    rows = []
    for param in params:
        if param.param_type_name == "argument":
            names = (param.name or "").upper()
        else:
            names = ", ".join([*param.opts, *param.secondary_opts])
        default = param.default
        shown = "" if default is None or param.param_type_name == "argument" or default is False else f"`{default}`"
        rows.append(f"| `{names}` | {_cell(getattr(param, 'help', None) or '')} | {shown} |")
    return ["| argument / option | what it does | default |", "| --- | --- | --- |", *rows] if rows else []


def cli_reference() -> str:
    """A summary table of the ``rlhf`` commands, then one section per command: usage, help, options."""
    import click
    import typer

    sections()  # puts the project root on sys.path
    app = importlib.import_module("rlhf_cli.main").app
    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="rlhf")
    commands = [(n, group.get_command(ctx, n)) for n in group.list_commands(ctx)]
    commands = [(n, c) for n, c in commands if c is not None and not c.hidden]
    out = ["| command | what it does |", "| --- | --- |"]
    out += [f"| [`rlhf {n}`](#rlhf-{n}) | {_cell(_first_paragraph(c.help))} |" for n, c in commands]
    out += ["", "Options for every command, given before it (`rlhf [OPTIONS] COMMAND ...`):", ""]
    out += _options_table(group.params)
    for name, command in commands:
        args = [(p.name or "").upper() for p in command.params if p.param_type_name == "argument"]
        usage = " ".join(["rlhf", name, "[OPTIONS]", *args])
        out += ["", f"## rlhf {name} {{#rlhf-{name}}}", "", f"```\n{usage}\n```", ""]
        out += [inspect.cleandoc(command.help or ""), ""]
        out += _options_table(command.params)
        if hasattr(command, "list_commands"):  # a command group (typer vendors its own click classes)
            sub_ctx = click.Context(command, info_name=name, parent=ctx)
            for sub_name in command.list_commands(sub_ctx):
                sub = command.get_command(sub_ctx, sub_name)
                if sub is None or sub.hidden:
                    continue
                args = [(p.name or "").upper() for p in sub.params if p.param_type_name == "argument"]
                usage = " ".join(["rlhf", name, sub_name, "[OPTIONS]", *args])
                out += ["", f"### rlhf {name} {sub_name}", "", f"```\n{usage}\n```", ""]
                out += [inspect.cleandoc(sub.help or ""), ""]
                out += _options_table(sub.params)
    return "\n".join(out)


def stage_reference() -> str:
    """A table of the stage functions, then ``:::`` blocks that mkdocstrings renders (functions, then results)."""
    sections()  # puts the project root on sys.path
    stages = importlib.import_module("components.stages")
    names = list(getattr(stages, "__all__", []))
    functions = [n for n in names if inspect.isfunction(getattr(stages, n))]
    returned = {str(inspect.signature(getattr(stages, n)).return_annotation) for n in functions}
    results = [n for n in names if inspect.isclass(getattr(stages, n)) and n in returned]
    out = ["| function | what it does | returns |", "| --- | --- | --- |"]
    for name in functions:
        fn = getattr(stages, name)
        summary = (inspect.getdoc(fn) or "").split("\n\n")[0]
        ret = str(inspect.signature(fn).return_annotation)
        ret_cell = f"[`{ret}`](#components.stages.{ret})" if ret in results else f"`{ret}`"
        out.append(f"| [`{name}`](#components.stages.{name}) | {_cell(summary)} | {ret_cell} |")
    out += ["", "### Stage functions", ""]
    out += [f"::: components.stages.{name}\n" for name in functions]
    out += ["", "### Results", ""]
    out += [f"::: components.stages.{name}\n" for name in results]
    return "\n".join(out)


def sections() -> dict[str, type]:
    """The ``params.yaml`` sections and their dataclasses, from wherever the params loader declares them."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for module in ("components.config", "components.project.params"):
        found = getattr(importlib.import_module(module), "SECTIONS", None)
        if found:
            return dict(found)
    raise RuntimeError("no SECTIONS mapping (params.yaml section -> config dataclass) in components.config/params")


def field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (group, docstring)}`` from the class source: the string under each field, the ``# --- group``
    comment above it."""
    lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source).body[0]
    assert isinstance(tree, ast.ClassDef)
    src_lines = source.splitlines()
    docs: dict[str, tuple[str, str]] = {}
    body = tree.body
    for node, after in zip(body, [*body[1:], None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        doc = ""
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            doc = inspect.cleandoc(after.value.value)
        group = ""
        for line in reversed(src_lines[: node.lineno - 1]):
            if m := GROUP.match(line):
                group = m.group(1)
                break
        docs[node.target.id] = (group, doc)
    return docs


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _cell(text: str) -> str:
    """One table cell: RST-style double backticks become code, pipes and newlines are escaped."""
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    text = re.sub(r":(?:class|func|meth|attr|data):`~?([^`]+)`", r"`\1`", text)
    parts = text.replace("|", "\\|").split("`")
    parts[::2] = [part.replace("<", "&lt;").replace(">", "&gt;") for part in parts[::2]]  # HTML only outside code
    return " ".join("`".join(parts).split())


def _annotation(cls: type, name: str) -> str:
    raw = cls.__annotations__.get(name, "")
    return raw if isinstance(raw, str) else getattr(raw, "__name__", str(raw))


def configuration_reference() -> str:
    params_file = ROOT / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    out = ["| section | dataclass | module |", "| --- | --- | --- |"]
    found = sections()
    for name, cls in found.items():
        out.append(f"| [{name}](#{name}) | `{cls.__name__}` | `{cls.__module__}` |")
    for name, cls in found.items():
        out += ["", f"## {name}", ""]
        out += _section(name, cls, params.get(name) or {}, level=2)
    return "\n".join(out) + "\n"


def _anchor(key: str) -> str:
    return key.replace(".", "-").replace("_", "-")


def _section(key: str, cls: type, values: dict[str, Any], level: int) -> list[str]:
    """The table of one dataclass (grouped by its ``# --- group`` comments), then one sub-section per field that
    is itself a config dataclass."""
    out: list[str] = []
    intro = inspect.cleandoc(cls.__doc__ or "")
    if intro and not intro.startswith(f"{cls.__name__}("):
        out += [intro, ""]
    out += [f"`{cls.__module__}.{cls.__name__}`; values from `params.yaml` key `{key}`.", ""]
    docs = field_docs(cls)
    nested: list[tuple[str, type, dict[str, Any]]] = []
    group = None
    for field in dataclasses.fields(cls):
        field_group, doc = docs.get(field.name, ("", ""))
        if field_group != group or group is None:
            if field_group:
                out += ["", f"**{field_group[:1].upper()}{field_group[1:]}**", ""]
            elif group is not None:
                out.append("")
            out += ["| key | type | default | `params.yaml` | what it does |", "| --- | --- | --- | --- | --- |"]
            group = field_group
        value = _default(field)
        type_name = _annotation(cls, field.name)
        if dataclasses.is_dataclass(value):
            sub = f"{key}.{field.name}"
            nested.append((sub, type(value), values.get(field.name) or {}))
            link = f"[below](#{_anchor(sub)})"
            out.append(f"| `{field.name}` | `{type_name}` | {link} | {link} | {_cell(doc)} |")
            continue
        default = _yaml(value)
        if field.name not in values:
            in_file = "not set"
        elif _yaml(values[field.name]) == default:
            in_file = "same"
        else:
            in_file = f"`{_yaml(values[field.name])}`"
        out.append(f"| `{field.name}` | `{type_name}` | `{default}` | {in_file} | {_cell(doc)} |")
    for sub, sub_cls, sub_values in nested:
        out += ["", f"{'#' * (level + 1)} {sub} {{#{_anchor(sub)}}}", ""]
        out += _section(sub, sub_cls, sub_values, level + 1)
    return out
