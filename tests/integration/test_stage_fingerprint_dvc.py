"""In a git + DVC project: change code a stage imports and ``dvc status`` reports that stage changed; change
nothing and it stays up to date; change code it does not import and it stays up to date too.

The project holds no code (like a project made by ``rlhf init``): the stages' code is the installed package,
here a copy of ``components/`` the fingerprint is pointed at, so the test can edit it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.records import code_fingerprint

REPO = Path(__file__).resolve().parents[2]

DVC_YAML = """stages:
  train_reward:
    cmd: python -m components.models.reward.train --params params.yaml
    params:
      - .rlhf/code.yaml: [train_reward]
  evaluate:
    cmd: python -m components.decide.evaluation --params params.yaml
    params:
      - .rlhf/code.yaml: [evaluate]
"""


def _dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _changed(project: Path) -> set[str]:
    code_fingerprint.write_code_fingerprint(project)  # what the tool does before every DVC command
    return set(json.loads(_dvc(project, "status", "--json") or "{}"))


@pytest.fixture()
def project(tmp_path, monkeypatch):
    installed = tmp_path / "site" / "components"
    shutil.copytree(REPO / "components", installed, ignore=shutil.ignore_patterns("__pycache__"))
    real = code_fingerprint._package_dir
    monkeypatch.setattr(
        code_fingerprint, "_package_dir", lambda name: installed.resolve() if name == "components" else real(name)
    )
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("{}\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    code_fingerprint.write_code_fingerprint(root)
    _dvc(root, "commit", "--force", "train_reward", "evaluate")  # dvc.lock as after a run
    return root, installed


def test_changing_the_judges_code_makes_evaluate_stale(project):
    root, installed = project
    assert _changed(root) == set()  # nothing changed: up to date
    gold = installed / "demo_task" / "gold.py"
    gold.write_text(gold.read_text() + "\nEMPTY_SCORE_NOTE = 'changed'\n")
    # the evaluation imports the judges (and so the demo annotator); the reward stage only the judge slice
    assert _changed(root) == {"evaluate"}


def test_only_the_stages_that_import_the_changed_code_go_stale(project):
    root, installed = project
    stats = installed / "decide" / "eval_stats.py"
    stats.write_text(stats.read_text() + "\n# changed\n")
    assert _changed(root) == {"evaluate"}
    gate = installed / "decide" / "gate.py"  # neither stage imports the gate
    gate.write_text(gate.read_text() + "\n# changed\n")
    assert _changed(root) == {"evaluate"}
    lock = (root / "dvc.lock").read_text()
    assert ".rlhf/code.yaml" in lock
