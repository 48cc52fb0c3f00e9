"""A round of the retrain flow judged by the judge reward model: DVC runs the ``train_judge`` stage upstream of
``evaluate``, the two reward models train on prompt-disjoint slices of the seed pairs, and the gate, the registry
and ``rlhf models`` / ``rlhf audit`` name the judge."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from prefect.client.schemas.objects import StateType
from typer.testing import CliRunner

from components.project.paths import ProjectPaths
from flows.retrain import retrain
from rlhf_cli.main import app
from tests.integration.test_retrain_flow import make_project
from tests.tiny_params import TINY_REWARD


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RLHF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RLHF_GPU_POOL", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_a_round_judged_by_the_judge_reward_model(prefect_api, tmp_path, monkeypatch):
    overrides = {
        "seeding": {
            "seed_prompts": 16,
            "replies_per_prompt": 2,
            "max_new_tokens": 8,
            "batch_size": 16,
            "min_gold_gap": 0.0,
        },
        "reward": {**TINY_REWARD, "judge_fraction": 0.4},
        "eval": {
            "judge": "reward_model",
            "judge_min_accuracy": 0.0,
            "max_new_tokens": 6,
            "max_prompts": 8,
            "samples_per_prompt": 2,
            "bootstrap_resamples": 200,
        },
    }
    root = make_project(tmp_path, overrides)
    paths = ProjectPaths(root)
    state = retrain(project=str(root), seed_if_empty=True, label="judged", return_state=True)
    assert state.type == StateType.COMPLETED, state.message
    summary = state.result()
    assert summary["decision"] in {"promoted", "rejected"}
    assert summary["evaluation"]["judge"]["name"] == "reward_model"
    assert any(c["name"] == "judge held-out accuracy" for c in summary["gate"]["checks"])

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert {"train_reward", "train_judge", "ppo", "evaluate"} <= set(lock["stages"])
    rm = json.loads((paths.reward_model / "manifest.json").read_text())
    judge = json.loads((root / "models" / "judge_reward" / "manifest.json").read_text())
    assert rm["judge_slice"]["side"] == "train" and judge["judge_slice"]["side"] == "judge"
    assert rm["judge_slice"]["pairs_dropped"] == judge["judge_slice"]["pairs_kept"] > 0
    assert json.loads((paths.metrics / "judge_reward.json").read_text())["used"] is True

    monkeypatch.chdir(root)
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["models", "--json"]).output)
    policy = next(m for m in listed if m["version"] == summary["candidate"])
    assert policy["facts"]["metrics"]["eval"]["judge"]["name"] == "reward_model"
    trail = json.loads(runner.invoke(app, ["audit", summary["candidate"], "--json"]).output)
    assert trail["judge"]["name"] == "reward_model" and trail["gate"]["judge"].startswith("reward_model rm-")
    text = " ".join(runner.invoke(app, ["audit", summary["candidate"]]).output.split())
    assert "judge: reward_model rm-" in text and "demo" not in text.split("judge:")[1].split("gate:")[0]
