"""The ``ppo`` stage continues a killed run from its last complete checkpoint when its params still match.

The DVC stage's command (``python -m components.models.policy.train --params params.yaml``, no flag) is SIGKILLed
mid-PPO on the tiny model; the next run of the stage (what a flow's task calls) starts from the checkpoint's step, not
from 0. With other params it starts fresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from components import stages
from components.config import load_section
from components.config.model import ModelConfig
from components.config.policy import PolicyConfig
from components.models.policy.checkpoint import latest_checkpoint
from components.models.policy.train import run
from components.project.paths import ProjectPaths

PROMPTS = ["My order is late.", "How do I reset my password?", "Can I get a refund?", "Where is my package?"]
PPO = {
    "prompts": "prompts.jsonl",
    "reward_model": "builtin:count:e",
    "steps": 6,
    "save_every": 1,
    "batch_size": 4,
    "mini_batch_size": 4,
    "micro_batch_size": 4,
    "ppo_epochs": 1,
    "max_new_tokens": 8,
    "lora": True,
    "lora_r": 4,
    "lora_alpha": 8,
    "bf16": False,
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def project(root: Path, **ppo) -> ProjectPaths:
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "params.yaml").write_text(yaml.safe_dump({"model": {"base": "tiny"}, "policy": {**PPO, **ppo}}))
    return ProjectPaths(root)


def configs(paths: ProjectPaths):
    return load_section(PolicyConfig, "policy", paths.params), load_section(ModelConfig, "model", paths.params)


def log_steps(path: Path) -> list[int]:
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            steps.append(json.loads(line)["step"])
    return steps


@pytest.mark.slow  # a second Python process importing torch + transformers, then PPO: ~30 s on 2 shared cores
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_ppo_stage_continues_from_its_checkpoint(tmp_path):
    paths = project(tmp_path / "project")
    cmd = [sys.executable, "-m", "components.models.policy.train", "--params", "params.yaml"]  # the dvc.yaml command
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ckpts, steps_log = paths.root / "models" / "ppo-checkpoints", paths.metrics / "ppo_log.jsonl"
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=paths.root, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while proc.poll() is None and max(log_steps(steps_log), default=0) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    killed = (tmp_path / "killed.log").read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{killed}"
    k = int(latest_checkpoint(ckpts).name.removeprefix("step_"))
    assert 2 <= k < 6, killed

    # the next run of the stage (the flow's task calls this) continues from step k and exports
    cfg, model = configs(paths)
    result = stages.train_policy(cfg, paths, model=model)
    assert result.resumed_from == k
    assert result.metrics["steps"] == 6 and log_steps(steps_log) == [1, 2, 3, 4, 5, 6]
    assert json.loads(Path(result.manifest_path).read_text())["resumed_from_step"] == k
    assert latest_checkpoint(ckpts) is None  # finished and exported: nothing left to continue
    assert stages.policy_result(paths) == result


def test_a_checkpoint_made_with_other_params_is_not_continued(tmp_path, caplog):
    paths = project(tmp_path / "project", steps=3)
    run(yaml.safe_load(paths.params.read_text()), paths.root, stop_after=2, export=False)  # a run that stopped
    ckpts = paths.root / "models" / "ppo-checkpoints"
    assert latest_checkpoint(ckpts).name == "step_000002"

    project(paths.root, steps=3, learning_rate=5e-3)  # changed params: the checkpoint no longer applies
    cfg, model = configs(paths)
    with caplog.at_level("INFO", logger="components.models.policy.train"):
        result = stages.train_policy(cfg, paths, model=model)
    assert result.resumed_from == 0 and log_steps(paths.metrics / "ppo_log.jsonl") == [1, 2, 3]
    assert "was made with other params" in caplog.text

    # an unfinished run with the same params is continued (the step log keeps each step once)
    project(paths.root, steps=3)
    raw = yaml.safe_load(paths.params.read_text())
    run(raw, paths.root, resume="auto", stop_after=1, export=False)
    cfg, model = configs(paths)
    assert stages.train_policy(cfg, paths, model=model).resumed_from == 1
