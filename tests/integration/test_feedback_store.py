"""The versioned store with real git + DVC in a temporary project: appends make new data versions."""

import json
import shutil

import pandas as pd
import pytest

from components.config.validation import ValidationConfig
from components.data.feedback.store import data_version, ingest_file, ingest_frame, load
from components.project.scaffold import init_project


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    return init_project(tmp_path / "proj")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pairs(start, n):
    return [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(start, start + n)]


def test_each_append_is_a_new_pushed_dvc_version(project, tmp_path):
    cfg = ValidationConfig()
    assert data_version(project) is None
    blank = {"prompt": "x", "chosen": "", "rejected": "y"}
    first = ingest_file(_write(tmp_path / "a.jsonl", [*_pairs(0, 3), blank]), project, cfg)
    assert first.version and first.version.endswith(".dir") and first.previous_version is None
    assert first.totals == {"pairs": 3, "ratings": 0} and len(first.validation.quarantined) == 1
    assert (project.quarantine / "pairs.jsonl").is_file()
    assert any((tmp_path / "remote").rglob("*")), "dvc push wrote nothing to the default remote"
    assert "remote = local" in (project.root / ".dvc" / "config.local").read_text()

    # overlapping file: the 3 stored rows are refused as already stored, 2 new rows appended
    second = ingest_file(_write(tmp_path / "b.jsonl", _pairs(1, 4)), project, cfg)
    assert second.version != first.version and second.previous_version == first.version
    assert second.validation.by_reason == {"not_already_stored": 2}
    assert second.totals["pairs"] == 5 and len(load(project, "pairs")) == 5
    assert data_version(project) == second.version

    log = [json.loads(x) for x in project.data_versions.read_text().splitlines()]
    assert [e["version"] for e in log] == [first.version, second.version]
    assert log[1]["accepted"] == 2 and log[1]["quarantined"] == 2

    # a fresh checkout without data/: the store restores the tracked version before appending
    shutil.rmtree(project.data)
    third = ingest_frame(pd.DataFrame(_pairs(100, 1)), "pairs", project, cfg, origin="test")
    assert third.totals["pairs"] == 6 and third.previous_version == second.version


def test_a_store_whose_dvc_push_fails_leaves_no_files(project, tmp_path, monkeypatch):
    from components.data.feedback.store import StoreError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote's folder should be\n")
    monkeypatch.setenv("RLHF_DVC_REMOTE", str(blocker / "remote"))  # the push cannot write there
    tracked = ("data", "data.dvc", "metrics")
    before = {p: p.read_bytes() for name in tracked for p in (project.root / name).rglob("*") if p.is_file()}
    with pytest.raises(StoreError):
        ingest_file(_write(tmp_path / "a.jsonl", _pairs(0, 3)), project, ValidationConfig())
    after = {p: p.read_bytes() for name in tracked for p in (project.root / name).rglob("*") if p.is_file()}
    assert after == before and not (project.root / "data.dvc").exists()  # no feedback, pool, quarantine, version
    assert data_version(project) is None
