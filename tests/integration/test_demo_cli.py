"""`rlhf demo` end to end on the tiny model in a throwaway git + DVC project: seed -> validate -> version ->
reward model -> before/after evaluation -> PPO -> exported policy, with its metrics on disk."""

from __future__ import annotations

import json

import torch
import yaml
from typer.testing import CliRunner

from components.project import init_project
from rlhf_cli.main import app

TINY = {
    "model": {"base": "tiny", "seed": 0},
    "data": {"seed_prompts": 24, "replies_per_prompt": 2, "max_new_tokens": 8, "batch_size": 24},
    "reward": {"backbone": "tiny", "trainable": "all", "lr": 3e-3, "epochs": 1, "batch_size": 8, "max_length": 96},
    "ppo": {
        "steps": 2,
        "batch_size": 8,
        "mini_batch_size": 4,
        "micro_batch_size": 2,
        "max_new_tokens": 8,
        "save_every": 1,
        "lora": False,
        "bf16": False,
    },
}


def test_demo_runs_the_loop_on_the_tiny_model(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    paths = init_project(tmp_path / "proj")
    params = yaml.safe_load(paths.params.read_text())
    for section, values in TINY.items():
        params[section].update(values)
    paths.params.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(paths.root)

    result = CliRunner().invoke(app, ["demo", "--params", str(paths.params)])
    assert result.exit_code == 0, result.output
    assert "held-out preference accuracy" in result.output
    assert (paths.feedback / "pairs.parquet").is_file()
    assert (paths.root / "models" / "reward" / "manifest.json").is_file()
    manifest = json.loads((paths.root / "models" / "policy" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2
    before = json.loads((paths.metrics / "eval_base.json").read_text())
    after = json.loads((paths.metrics / "eval_policy.json").read_text())
    assert before["n"] == after["n"] == 40
    assert before["kl"] == 0.0  # the base policy against itself
    assert after["kl"] != 0.0  # full fine-tuning moved the policy away from the reference

    # a second run reuses the versioned seed feedback instead of sampling it again
    again = CliRunner().invoke(app, ["demo", "--params", str(paths.params)])
    assert again.exit_code == 0, again.output
    assert "seed feedback already versioned" in again.output
