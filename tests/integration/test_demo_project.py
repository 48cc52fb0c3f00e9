"""`rlhf demo` runs in a project of its own, never in the code checkout: where that project is, what it holds,
how its params follow the demo's, and that models record the code's revision rather than the project's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from components.project.paths import ProjectPaths
from components.project.scaffold import pipeline_template
from components.records.lineage import code_revision
from rlhf_cli import demo_loop

REPO = Path(__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_demo_folder_is_beside_the_code_and_ignored_by_its_git():
    for quick in (False, True):
        folder = demo_loop.demo_folder(quick)
        assert folder != REPO and folder.parent == REPO  # this test runs from a source checkout
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(folder / "params.yaml")])
        assert ignored.returncode == 0, f"{folder} is not ignored by the checkout's .gitignore"
    # the checkout is code, not a project: no pipeline or data version of its own for a command to change
    assert not (REPO / "dvc.yaml").exists() and not (REPO / "data.dvc").exists() and not (REPO / ".dvc").exists()


def test_an_installed_demo_without_a_checkout_uses_the_checkouts_params(tmp_path, monkeypatch):
    checkout = demo_loop.demo_params(None)
    assert checkout["policy"]["algorithm"] == "dpo"
    monkeypatch.setattr(demo_loop, "DEMO_PARAMS", tmp_path / "absent.yaml")  # what a wheel install sees
    assert demo_loop.demo_params(None) == checkout


def test_demo_project_is_an_init_project_with_the_demo_task_and_models_record_the_codes_revision(tmp_path, monkeypatch):
    raw = demo_loop.demo_params(None)
    assert raw["seeding"]["demo_task"] is True
    root = demo_loop.prepare_project(tmp_path / "demo", raw)
    paths = ProjectPaths(root)
    assert (root / ".git").is_dir() and (root / ".dvc").is_dir() and not (root / "components").exists()
    assert (root / "dvc.yaml").read_text(encoding="utf-8") == pipeline_template()
    assert yaml.safe_load(paths.params.read_text(encoding="utf-8")) == raw

    # reused: the demo's current params are committed into it; an unchanged rerun commits nothing
    head = _git(root, "rev-parse", "HEAD")
    assert demo_loop.prepare_project(root, raw) == root and _git(root, "rev-parse", "HEAD") == head
    changed = demo_loop.demo_params(None, quick=True)
    demo_loop.prepare_project(root, changed)
    assert yaml.safe_load(paths.params.read_text(encoding="utf-8"))["eval"]["max_prompts"] == 20
    assert _git(root, "status", "--porcelain") == "" and _git(root, "rev-parse", "HEAD") != head
    # a project named with --project and no --params is used as it is
    demo_loop.prepare_project(root, raw, sync=False)
    assert yaml.safe_load(paths.params.read_text(encoding="utf-8"))["eval"]["max_prompts"] == 20

    # what a model records as its code revision is the code's (this checkout's HEAD), not the project's
    (root / "data.dvc").write_text("outs: []\n")  # an uncommitted change in the project
    monkeypatch.chdir(root)
    head = _git(REPO, "rev-parse", "HEAD")
    dirty = _git(REPO, "status", "--porcelain", "--untracked-files=no") != ""
    assert code_revision() == head + ("-dirty" if dirty else "")
    assert not code_revision().startswith(_git(root, "rev-parse", "HEAD"))
