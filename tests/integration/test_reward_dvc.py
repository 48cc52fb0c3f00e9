"""``dvc repro train_reward`` in a throwaway git + DVC project with the tiny backbone: runs, then skips
when nothing changed, re-runs when a reward param changes, and notices a data change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from components.models.reward.pairs import read_pairs, split_by_prompt
from components.project.paths import ProjectPaths
from components.project.scaffold import pipeline_template
from components.records.code_fingerprint import write_code_fingerprint
from components.records.registry import write_ppo_parent
from tests.tiny_params import TINY_REWARD

ROOT = Path(__file__).resolve().parents[2]

TINY_PARAMS = {**TINY_REWARD, "seed": 0}


def _rows(n: int, tag: str = "") -> list[dict]:
    return [
        {
            "prompt": f"question {i}{tag}",
            "chosen": f"answer {i} thanks",
            "rejected": f"answer {i}",
            "margin": None,
        }
        for i in range(n)
    ]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out[-3000:]}"
    return out


def test_dvc_repro_train_reward_runs_skips_and_reruns(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(ROOT / "components", project / "components", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "dvc.yaml").write_text(pipeline_template())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["reward"].update(TINY_PARAMS)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "data" / "feedback").mkdir(parents=True)
    pd.DataFrame(_rows(24)).to_parquet(project / "data" / "feedback" / "pairs.parquet")
    (project / "data" / "prompts").mkdir()
    (project / "data" / "prompts" / "heldout.jsonl").write_text("")  # a pool with no held-out prompt
    write_ppo_parent(ProjectPaths(project))  # no champion: the reward model trains from the backbone

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(project),
        "RLHF_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # tiny model: one thread is faster than two on a loaded machine
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], project, env)
    _run([*dvc, "init", "-q"], project, env)
    _run([*dvc, "config", "core.analytics", "false"], project, env)

    # 1. first run trains and writes the outs, metrics and plots (the tool writes the stages' code fingerprints
    # before every DVC command it runs; here by hand)
    write_code_fingerprint(project)
    out = _run([*dvc, "repro", "train_reward"], project, env)
    assert "Running stage 'train_reward'" in out
    assert (project / "models" / "reward" / "config.json").is_file()
    assert (project / "models" / "reward" / "manifest.json").is_file()
    metrics = json.loads((project / "metrics" / "reward.json").read_text())
    held = split_by_prompt(read_pairs(project / "data" / "feedback" / "pairs.parquet"), 0.25, 0)[1]
    assert metrics["eval"]["pairs"] == len(held) > 0  # the prompts whose hash falls in reward.eval_fraction
    assert (project / "metrics" / "reward_train.csv").is_file()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train_reward"]["params"]["params.yaml"]["reward"]["backbone"] == "tiny"
    assert set(lock["stages"]["train_reward"]["params"][".rlhf/code.yaml"]) == {"train_reward"}

    # 2. nothing changed: skipped
    out = _run([*dvc, "repro", "train_reward"], project, env)
    assert "Running stage" not in out and "didn't change" in out
    assert "up to date" in _run([*dvc, "status", "train_reward"], project, env)

    # 3. a reward param changed: re-runs
    params["reward"]["seed"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([*dvc, "repro", "train_reward"], project, env)
    assert "Running stage 'train_reward'" in out

    # 4. another section's param does not touch the stage; new data does
    params["model"]["seed"] = 7
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in _run([*dvc, "status", "train_reward"], project, env)
    pd.DataFrame(_rows(26, tag="b")).to_parquet(project / "data" / "feedback" / "pairs.parquet")
    status = _run([*dvc, "status", "train_reward"], project, env)
    assert "pairs.parquet" in status and "modified" in status
