"""The one atomic-folder function: versions are never replaced, a failed write leaves no trace, a swap is whole."""

import pytest

from components.common.fsutil import atomic_dir, atomic_write_text


def test_new_folder_appears_complete(tmp_path):
    target = tmp_path / "v1"
    with atomic_dir(target) as staging:
        assert not target.exists() and staging.parent == tmp_path
        (staging / "weights").write_text("w")
    assert (target / "weights").read_text() == "w"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_versions_are_never_replaced_in_place(tmp_path):
    target = tmp_path / "v1"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(FileExistsError, match="never replaced"), atomic_dir(target):
        pass
    assert (target / "weights").read_text() == "old"


def test_a_failure_leaves_the_old_folder_and_no_staging(tmp_path):
    target = tmp_path / "reward"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target, replace=True) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("killed mid-save")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["reward"]


def test_replace_swaps_the_whole_folder_and_clears_stale_staging(tmp_path):
    target = tmp_path / "reward"
    target.mkdir()
    (target / "old_only").write_text("x")
    (tmp_path / ".reward.staging-left-by-a-kill").mkdir()
    with atomic_dir(target, replace=True) as staging:
        (staging / "weights").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]
    assert [p.name for p in tmp_path.iterdir()] == ["reward"]


def test_atomic_write_text(tmp_path):
    f = tmp_path / "sub" / "status.json"
    atomic_write_text(f, "{}")
    atomic_write_text(f, '{"a": 1}')
    assert f.read_text() == '{"a": 1}' and [p.name for p in f.parent.iterdir()] == ["status.json"]
