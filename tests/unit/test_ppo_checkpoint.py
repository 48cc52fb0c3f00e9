"""What a killed PPO run leaves on disk: half-written checkpoints are ignored, the step log is truncated."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from components.models.policy.checkpoint import (
    incomplete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from components.models.policy.metrics import LOG_CSV, LOG_JSONL, PLOT_SCORE, MetricsWriter


@pytest.fixture(scope="module")
def acc():
    return Accelerator(cpu=True)


def save(root: Path, acc: Accelerator, step: int, **overrides) -> Path:
    kwargs = {
        "step": step,
        "accelerator": acc,
        "trainable": {"w": torch.full((3,), float(step))},
        "optimizer": {},
        "scheduler": {},
        "kl_ctl": {"value": 0.1},
        "metrics": [{"step": s} for s in range(1, step + 1)],
        "fingerprint": "fp",
        "params": {"ppo": {}},
        "prompt_rng": {},
    }
    return save_checkpoint(root, **{**kwargs, **overrides})


def test_saves_keep_the_last_two_and_leave_no_temporary_folders(tmp_path, acc):
    for step in (1, 2, 3):
        save(tmp_path, acc, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002", "step_000003"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000003"
    state = load_checkpoint(tmp_path / "step_000003", 0, expected_fingerprint="fp")
    assert state["step"] == 3 and state["trainable"]["w"].tolist() == [3.0, 3.0, 3.0]


def test_a_save_that_dies_mid_write_leaves_the_previous_checkpoint_latest(tmp_path, acc):
    save(tmp_path, acc, 2)
    # Something unpicklable in the state: torch.save fails halfway through writing state.pt, as a kill would.
    with pytest.raises(TypeError, match="pickle"):
        save(tmp_path, acc, 3, metrics=[{"step": 1}, threading.Lock()])
    assert (tmp_path / ".tmp_step_000003" / "state.pt").is_file(), "the failed save should die inside its tmp folder"
    assert not (tmp_path / "step_000003").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000002"
    assert load_checkpoint(latest_checkpoint(tmp_path), 0, expected_fingerprint="fp")["step"] == 2


def test_leftovers_of_a_killed_run_are_ignored_then_cleaned(tmp_path, acc):
    save(tmp_path, acc, 2)
    # a checkpoint killed mid-write: the tmp folder with a truncated state file
    (tmp_path / ".tmp_step_000004").mkdir()
    (tmp_path / ".tmp_step_000004" / "state.pt").write_bytes(b"PK\x03\x04trunc")
    # an old checkpoint killed mid-delete, and a step folder missing its RNG file (made by hand or older code)
    (tmp_path / ".old_step_000001").mkdir()
    (tmp_path / "step_000005").mkdir()
    (tmp_path / "step_000005" / "state.pt").write_bytes(b"")
    (tmp_path / "step_000005" / "params.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000002"
    assert [p.name for p in incomplete_checkpoints(tmp_path)] == [
        ".old_step_000001",
        ".tmp_step_000004",
        "step_000005",
    ]
    save(tmp_path, acc, 3)  # the resumed run's next save removes them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002", "step_000003"]


def test_latest_checkpoint_orders_by_step_number(tmp_path, acc):
    save(tmp_path, acc, 999_999, metrics=[])
    save(tmp_path, acc, 1_000_000, metrics=[])  # seven digits: a name sort would put it first
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1000000"
    assert latest_checkpoint(tmp_path / "missing") is None


def rows(n: int) -> list[dict]:
    return [{"step": s, "objective/score": s / 10} for s in range(1, n + 1)]


def test_resume_truncates_the_step_log_to_the_checkpoint(tmp_path):
    # A killed run logged steps 1-5 (the last line cut short) but its last checkpoint holds steps 1-3.
    killed = MetricsWriter(tmp_path)
    killed.start([])
    for row in rows(5):
        killed.append(row)
    (tmp_path / PLOT_SCORE).write_bytes(b"\x89PNG")  # a plot of the killed run's steps
    with open(tmp_path / LOG_JSONL, "a", encoding="utf-8") as fh:
        fh.write('{"step": 6, "objecti')

    resumed = MetricsWriter(tmp_path)
    resumed.start(rows(3))
    steps = [json.loads(line)["step"] for line in (tmp_path / LOG_JSONL).read_text().splitlines()]
    assert steps == [1, 2, 3]
    with open(tmp_path / LOG_CSV, newline="", encoding="utf-8") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3]
    assert not (tmp_path / PLOT_SCORE).exists(), "a plot of steps the log no longer has"
    for row in rows(6)[3:]:
        resumed.append(row)
    steps = [json.loads(line)["step"] for line in (tmp_path / LOG_JSONL).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert not list(tmp_path.glob("*.tmp"))


def test_fresh_start_empties_the_step_log(tmp_path):
    old = MetricsWriter(tmp_path)
    old.start(rows(2))
    MetricsWriter(tmp_path).start([])
    assert (tmp_path / LOG_JSONL).read_text() == ""
    assert not (tmp_path / LOG_CSV).exists()
