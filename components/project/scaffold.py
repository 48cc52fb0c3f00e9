"""Projects: a folder made by ``rlhf init`` (params.yaml, dvc.yaml, data/, git + DVC with a remote).

The code is the installed rlhf-loop package: the project's ``dvc.yaml`` runs ``python -m components...`` and no
code is copied into the project. ``init_project`` is the low-level part (git + DVC + a params file) that tests
and the demo also use; ``create_project`` is ``rlhf init``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from components.project.paths import ProjectPaths, dvc_remote_dir

SOURCE_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"

GITIGNORE = "/models/\n/reports/\n/staging/\n/registry/\n/live/\n/.prefect/\n/data/\n/.rlhf/\n"
"""What a project never commits: outputs DVC or the registry keep, live service state, ``data/`` (tracked by
``data.dvc``) and the stages' code fingerprints (``.rlhf/``, written before every DVC command)."""

MARKERS = ("params.yaml", "dvc.yaml", ".dvc", "data.dvc")
"""Files whose presence means a folder is a project already (``init`` refuses it)."""


class ProjectError(RuntimeError):
    """A project that cannot be made or found, with what to do about it."""


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed in {cwd}: {done.stderr.strip() or done.stdout.strip()}")


def init_project(root: Path, *, params: Path | None = None, remote: Path | None = None) -> ProjectPaths:
    """Make ``root`` a project: ``git init``, ``dvc init`` (analytics off), ``params.yaml``, a first commit.

    ``params`` defaults to this checkout's ``params.yaml``; ``remote``, if given, becomes the default DVC
    remote in ``.dvc/config.local`` (otherwise the store sets up ``$RLHF_DVC_REMOTE`` on first push).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _git_dvc_init(root)
    if remote is not None:
        remote_dir = str(Path(remote).resolve())
        _run([sys.executable, "-m", "dvc", "remote", "add", "--local", "-d", "local", remote_dir], root)
    source = params or SOURCE_PARAMS
    if source.is_file():
        shutil.copyfile(source, root / "params.yaml")
    else:
        (root / "params.yaml").write_text("{}\n", encoding="utf-8")
    (root / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    _commit(root, "init project")
    return ProjectPaths(root)


def _git_dvc_init(root: Path) -> None:
    _run(["git", "init", "-q"], root)
    _run(["git", "config", "user.email", "rlhf-loop@localhost"], root)
    _run(["git", "config", "user.name", "rlhf-loop"], root)
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "init", "-q"], root)
    _run([*dvc, "config", "core.analytics", "false"], root)


def _commit(root: Path, message: str) -> None:
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-q", "-m", message], root)


def pipeline_template() -> str:
    """The pipeline shipped in the package, whose stages run the installed package's modules: written as a
    project's ``dvc.yaml``, kept as ``components/project/templates/pipeline.yaml`` (a file named dvc.yaml would be
    read by DVC as a pipeline of any repository holding the code)."""
    return resources.files("components.project.templates").joinpath("pipeline.yaml").read_text(encoding="utf-8")


def default_params(model: str | None = None, system_prompt: str | None = None) -> dict[str, dict[str, Any]]:
    """Every params section at its defaults, for ``model`` (and its system prompt): the demo task off (``seeding``
    holds only ``demo_task: false``), judged by a judge reward model trained on its own slice of the human pairs
    (:data:`PROJECT_DEFAULTS`)."""
    from components.config import to_dict
    from components.project.params import SECTIONS

    raw = {name: to_dict(cls()) for name, cls in SECTIONS.items() if name != "seeding"}
    raw["seeding"] = {"demo_task": False}  # the only seeding key a project has: the demo task is off
    for section, values in PROJECT_DEFAULTS.items():
        raw[section].update(values)
    if model is not None:
        raw["model"]["base"] = model
        raw["reward"]["backbone"] = model
    if system_prompt is not None:
        raw["model"]["system_prompt"] = system_prompt
    return raw


PROJECT_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"system_prompt": "You are a helpful assistant."},
    "reward": {"judge_fraction": 0.25},
    "eval": {"judge": "reward_model"},
}
"""What a new project changes from the dataclass defaults (which suit the demo): a neutral system prompt, and the
gate's judge is a judge reward model trained on a quarter of the prompts' pairs, which the training reward model
never sees (the demo's annotator judges the demo task only)."""

PARAMS_HEADER = """\
# Every stage's config, one section per stage; DVC tracks these values (see dvc.yaml). Unknown keys and wrong
# types are errors naming the key. Written by `rlhf init`; edit freely (it is committed with the project).
"""

README = """\
# {name}

An rlhf-loop project for `{model}` (made by `rlhf init`). The code is the installed `rlhf-loop` package;
this folder holds the params, the pipeline, the versioned data and what the loop produces.

Next:

    cd {root}
    rlhf import FEEDBACK_FILE        # preference pairs / ratings / HH-RLHF / TRL / Label Studio / Argilla
    rlhf retrain                     # reward model -> policy -> evaluation -> gate -> promote
    rlhf serve                       # serve the champion; user feedback feeds the next round
    rlhf models; rlhf audit          # versions, gate decisions, lineage

- `params.yaml`: every stage's settings; `dvc.yaml`: the pipeline (stages run `python -m components...`).
- `data/feedback/`: accepted feedback (Parquet), `data/quarantine/`: rejected rows with reasons,
  `data/prompts/`: the prompt pool (`train.jsonl` trains the policy, `heldout.jsonl` is only evaluated on).
- `data/` is versioned by DVC (`data.dvc`), pushed to the remote `{remote}`.
"""


def is_project(root: Path) -> bool:
    return any((Path(root) / m).exists() for m in MARKERS)


def create_project(
    root: Path,
    *,
    model: str | None = None,
    system_prompt: str | None = None,
    remote: Path | None = None,
) -> ProjectPaths:
    """``rlhf init``: a new project at ``root`` (refused when ``root`` already holds one).

    Writes params.yaml for ``model`` (the demo task off), the pipeline ``dvc.yaml`` from the package's template,
    the ``data/`` layout, ``.gitignore`` and a short README; initialises git and DVC with ``remote`` (default:
    the shared local remote, :func:`components.project.paths.dvc_remote_dir`) as the default DVC remote; commits.
    """
    root = Path(root).resolve()
    if root.exists() and not root.is_dir():
        raise ProjectError(f"{root} is a file, not a folder: choose another path for the project")
    if is_project(root):
        found = ", ".join(m for m in MARKERS if (root / m).exists())
        raise ProjectError(
            f"{root} is already a project (it has {found}); nothing was changed. Use it as it is "
            "(`rlhf --project DIR ...`), or pick an empty folder for a new one"
        )
    raw = default_params(model, system_prompt)
    from components.project.params import params_from_dict

    params_from_dict(raw)  # a bad model spec or prompt fails before anything is written
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _git_dvc_init(root)
        remote = Path(remote).expanduser().resolve() if remote is not None else dvc_remote_dir()
        remote.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], root)
        (root / "params.yaml").write_text(PARAMS_HEADER + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        (root / "dvc.yaml").write_text(pipeline_template(), encoding="utf-8")
        (root / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
        paths = ProjectPaths(root)
        for folder in (paths.feedback, paths.quarantine, paths.prompts):
            folder.mkdir(parents=True, exist_ok=True)
        from components.records.registry import write_ppo_parent  # the reading side: no BentoML

        write_ppo_parent(paths)  # no champion yet: a dep of the training stages that `dvc repro` finds
        (root / "README.md").write_text(
            README.format(name=root.name, model=raw["model"]["base"], root=root, remote=remote), encoding="utf-8"
        )
        _commit(root, f"rlhf init: a project for {raw['model']['base']}")
    except Exception:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return paths


def set_params(paths: ProjectPaths, raw: dict[str, Any], why: str) -> None:
    """Replace the project's params.yaml with ``raw`` (validated first) and commit it."""
    from components.project.params import params_from_dict

    params_from_dict(raw, paths.params)
    paths.params.write_text(PARAMS_HEADER + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    _commit(paths.root, f"params: {why}")


def require_project(paths: ProjectPaths, command: str) -> None:
    """Refuse to work outside a project (a folder with git + DVC), saying how to make one."""
    if not (paths.root / ".dvc").is_dir():
        raise ProjectError(
            f"{paths.root} is not an rlhf-loop project (no .dvc/ there), so `{command}` cannot version data in it. "
            f"Make one with `rlhf init DIR`, then run from inside it or pass `rlhf --project DIR {command} ...`"
        )


def use_params(paths: ProjectPaths, source: Path) -> Path:
    """Make ``source`` the project's params file (every DVC stage reads ``PROJECT/params.yaml``).

    ``source`` is validated first; when it is another file it is copied over the project's ``params.yaml`` (the
    earlier one stays in git). Returns the project's params path."""
    from components.project.params import load_params

    source = Path(source).resolve()
    load_params(source)
    target = paths.params.resolve()
    if source != target:
        shutil.copyfile(source, target)
    return target
