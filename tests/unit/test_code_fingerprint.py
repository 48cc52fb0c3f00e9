"""Every DVC stage's code is fingerprinted from what its entry module imports; a stage cannot go stale."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.records.code_fingerprint import (
    FINGERPRINT_FILE,
    PACKAGES,
    FingerprintError,
    code_files,
    imported_modules,
    stage_entries,
    write_code_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]
PIPELINES = [
    REPO / "components" / "project" / "templates" / "pipeline.yaml"
]  # the pipeline rlhf init writes as dvc.yaml
STAGES = yaml.safe_load(PIPELINES[0].read_text())["stages"]
DECLARED = [
    (path.relative_to(REPO), stage, spec)
    for path in PIPELINES
    if path.is_file()
    for stage, spec in yaml.safe_load(path.read_text())["stages"].items()
]


@pytest.mark.parametrize(("pipeline", "stage", "spec"), DECLARED, ids=[f"{p}:{s}" for p, s, _ in DECLARED])
def test_every_stage_lists_its_code_fingerprint_and_no_hand_written_code_deps(pipeline, stage, spec):
    assert {str(FINGERPRINT_FILE): [stage]} in spec["params"], f"{stage}: add `- .rlhf/code.yaml: [{stage}]`"
    hand_written = [d for d in spec.get("deps", []) if isinstance(d, str) and d.split("/")[0] in PACKAGES]
    assert not hand_written, f"{stage}: code deps come from the fingerprint, not by hand: {hand_written}"


LOADED = """
import importlib, json, sys
importlib.import_module({entry!r})
tops = {packages!r}
print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())
                        if n.split(".")[0] in tops and getattr(m, "__file__", None))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_fingerprint_covers_every_project_module_a_stage_loads(stage, tmp_path):
    """Import the stage's entry module in a fresh interpreter: every project module it loaded is fingerprinted."""
    shutil.copy(PIPELINES[0], tmp_path / "dvc.yaml")  # a project's dvc.yaml, as rlhf init writes it
    entry = stage_entries(tmp_path)[stage]
    code = LOADED.format(entry=entry, packages=PACKAGES)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = {Path(f).resolve() for f in json.loads(proc.stdout.splitlines()[-1])}
    covered = set(code_files(entry))
    assert loaded, f"{entry} loaded no project module?"
    assert loaded <= covered, f"{stage}: loaded but not fingerprinted: {sorted(map(str, loaded - covered))}"


def test_lazy_imports_and_package_data_are_covered():
    """Imports inside functions and ``if TYPE_CHECKING:`` count, and so do the data files packages ship; the
    modules the issue found missing from the hand-written deps are all there."""
    evaluate = {str(p.relative_to(REPO)) for p in code_files("components.decide.evaluation")}
    for must in (
        "components/demo_task/gold.py",
        "components/models/generation.py",
        "components/models/precision.py",
        "components/models/reward/model.py",
        "components/models/policy/ppo_math.py",
        "components/decide/judges/templates/pairwise-v1.txt",
        "components/demo_task/prompts.jsonl",
    ):
        assert must in evaluate, must
    reward = {str(p.relative_to(REPO)) for p in code_files("components.models.reward.train")}
    assert {
        "components/models/precision.py",
        "components/models/generation.py",
        "components/config/reward.py",
    } <= reward
    assert "components/data/served_store.py" not in reward  # only what the stage imports
    # the stage API imports each stage lazily; its TYPE_CHECKING block still names them
    assert "components.decide.evaluation" in imported_modules("components.stages")


def test_a_stage_command_without_a_module_is_refused(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  odd:\n    cmd: ./train.sh\n")
    with pytest.raises(FingerprintError, match="names no module"):
        stage_entries(tmp_path)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  ppo:\n"
        "    cmd: accelerate launch --multi_gpu -m components.models.policy.train --params params.yaml\n"
    )
    assert stage_entries(tmp_path) == {"ppo": "components.models.policy.train"}


def test_the_file_is_rewritten_only_when_a_fingerprint_changes(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: python -m components.decide.evaluation\n")
    path = write_code_fingerprint(tmp_path)
    written = yaml.safe_load(path.read_text())
    assert set(written) == {"evaluate"} and len(written["evaluate"]) == 64
    before = path.stat().st_mtime_ns
    write_code_fingerprint(tmp_path)
    assert path.stat().st_mtime_ns == before


def test_a_remembered_file_is_read_again_after_any_write(tmp_path, monkeypatch):
    """The parsed imports and digests are remembered by stat stamp: a write the same size with the old mtime put
    back is still seen (ctime moves), and a file that changed in the last SETTLED_S seconds is never remembered."""
    import hashlib
    import os

    from components.records import code_fingerprint

    module = tmp_path / "m.py"
    module.write_text("A = 1\n")
    old = module.stat().st_mtime_ns - 10**10
    os.utime(module, ns=(old, old))  # an old mtime, but its ctime is now: not settled, so not remembered
    assert code_fingerprint._digest(module) == hashlib.sha256(b"A = 1\n").digest()
    module.write_text("A = 2\n")
    os.utime(module, ns=(old, old))  # same size, same mtime
    assert code_fingerprint._digest(module) == hashlib.sha256(b"A = 2\n").digest()
    assert ("sha256", str(module)) not in code_fingerprint._memo

    monkeypatch.setattr(code_fingerprint, "SETTLED_S", -1.0)  # remember at once
    assert code_fingerprint._digest(module) == hashlib.sha256(b"A = 2\n").digest()
    assert ("sha256", str(module)) in code_fingerprint._memo
    module.write_text("A = 33\n")
    assert code_fingerprint._digest(module) == hashlib.sha256(b"A = 33\n").digest()
