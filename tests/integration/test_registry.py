"""The registry: BentoML's model store + the status record. Base as first champion, promote, reject, rollback,
the gate deciding (each failing check leaves the champion), a crash mid-promotion, two processes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from components.config.gate import GateConfig
from components.decide.evaluation import EvalResult, ModelEval
from components.decide.gate import gate
from components.project.paths import ProjectPaths
from components.records import registry


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A transformers folder of the tiny model (what a policy version folder holds), built once."""
    from components.models.base_model import prepare_tiny

    return prepare_tiny(tmp_path_factory.mktemp("tiny") / "tiny")


def policy_folder(tiny_folder: Path, where: Path, version: str, parent: str = "base-tiny") -> Path:
    """A policy version folder: the tiny weights plus a manifest with lineage (no training needed here)."""
    import shutil

    folder = where / "models" / "policy" / version
    shutil.copytree(tiny_folder, folder)
    manifest = {
        "kind": "policy",
        "version": version,
        "parent": parent,
        "base": "tiny",
        "data_version": "d" * 32,
        "reward_model": {"spec": "builtin:count:e", "version": None},
        "params": {"ppo": {"steps": 2}},
        "code_revision": "abc123",
        "metrics": {"steps": 2},
        "created_at": "2026-11-27T00:00:00Z",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def project(tmp_path, tiny_folder) -> ProjectPaths:
    """A project whose registry holds the base (tiny) as its first champion."""
    paths = ProjectPaths(tmp_path)
    registry.ensure_base_champion(paths, "tiny", tiny_folder)
    return paths


def champions(paths: ProjectPaths) -> list[str]:
    return [m.version for m in registry.list_models(paths) if m.status == "champion"]


def evaluation(**changes) -> EvalResult:
    """An evaluation that passes the default gate; ``changes`` override fields (``candidate__kl=...`` etc.)."""
    cand = ModelEval("cand", judge_score=0.9, reward_score=0.8, mean_tokens=20, eos_rate=0.6, degenerate_rate=0.0,
                     kl=3.0)  # fmt: skip
    champ = ModelEval("base-tiny", judge_score=0.7, reward_score=0.0, mean_tokens=30, eos_rate=0.1,
                      degenerate_rate=0.0)  # fmt: skip
    cand = replace(
        cand, **{k.removeprefix("candidate__"): v for k, v in changes.items() if k.startswith("candidate__")}
    )
    champ = replace(
        champ, **{k.removeprefix("champion__"): v for k, v in changes.items() if k.startswith("champion__")}
    )
    fields = {k: v for k, v in changes.items() if "__" not in k}
    base = dict(
        candidate=cand, champion=champ, candidate_path="x", prompts=40, samples_per_prompt=2, win_rate=0.8,
        win_rate_low=0.7, win_rate_high=0.9, interval="95 % percentile bootstrap", wins=60, ties=8, losses=12,
        overoptimised=False, reward_version="rm-1", reward_accuracy=0.75, kl_target=4.0, metrics_path="m",
        report_path="r", judge={"name": "demo"}, reward_win_rate=0.7,
    )  # fmt: skip
    return EvalResult(**(base | fields))


def test_base_is_the_first_champion_with_its_files_in_the_bentoml_store(project, tiny_folder):
    import bentoml

    champ = registry.champion(project)
    assert champ.version == "base-tiny" and champ.status == "champion" and champ.kind == "policy"
    assert (champ.path / "config.json").is_file()
    assert Path(os.environ["BENTOML_HOME"]) in champ.path.parents  # the store, not the project
    info = bentoml.models.get(champ.tag).info
    assert info.labels["kind"] == "policy" and json.loads(info.metadata["facts"])["base"] == "tiny"
    # ensure_base_champion is a no-op once there is a champion
    assert registry.ensure_base_champion(project, "tiny", tiny_folder).version == "base-tiny"
    assert len(registry.list_models(project)) == 1


def test_promote_switches_the_champion_and_retires_the_old_one(project, tiny_folder):
    import bentoml

    folder = policy_folder(tiny_folder, project.root, "v1")
    rec = registry.register(project, "v1", folder, facts={"data_version": "d1"}, parent="base-tiny")
    assert rec.status == "candidate" and champions(project) == ["base-tiny"]
    assert bentoml.models.get(rec.tag).info.labels["parent"] == "base-tiny"
    registry.promote(project, "v1", reason="gate passed")
    assert registry.champion(project).version == "v1"
    assert registry.get(project, "base-tiny").status == "retired"
    assert champions(project) == ["v1"]
    assert [h["status"] for h in registry.get(project, "base-tiny").history] == ["champion", "retired"]
    # registering the same version again (a retried stage) changes nothing
    assert registry.register(project, "v1", folder).status == "champion"


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        ({"win_rate": 0.4, "win_rate_low": 0.3, "win_rate_high": 0.5}, "win rate by demo"),
        ({"candidate__kl": 9.5}, "KL"),
        ({"candidate__degenerate_rate": 0.5}, "degenerate replies"),
        ({"overoptimised": True}, "over-optimisation"),
        ({"judge_disagrees": True}, "over-optimisation check (reverse)"),
        (
            {"judge": {"name": "reward_model"}, "judge_accuracy": 0.55, "judge_min_accuracy": 0.6},
            "judge reward_model held-out",
        ),
        ({"reward_accuracy": 0.5}, "reward model accuracy"),
    ],
)
def test_each_failing_gate_rejects_with_its_reason_and_leaves_the_champion(project, tiny_folder, changes, failing):
    folder = policy_folder(tiny_folder, project.root, "cand")
    decision = gate(GateConfig(), project, evaluation=evaluation(**changes))
    assert not decision.passed
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith(failing), decision.reasons
    out = registry.register_and_decide(project, policy=folder, evaluation=evaluation(**changes), gate=decision)
    assert out.status == "rejected" and out.champion == "base-tiny" and out.previous_champion == "base-tiny"
    assert champions(project) == ["base-tiny"]
    rec = registry.get(project, "cand")
    assert rec.status == "rejected" and failing in rec.history[-1]["reason"]
    assert rec.gate["passed"] is False
    written = json.loads(project.gate_report.read_text())
    assert [c["passed"] for c in written["checks"]].count(False) == 1


def test_a_passing_gate_promotes_with_lineage_in_the_store(project, tiny_folder):
    import bentoml

    folder = policy_folder(tiny_folder, project.root, "good")
    decision = gate(GateConfig(), project, evaluation=evaluation())
    assert decision.passed and decision.reasons == []
    out = registry.register_and_decide(project, policy=folder, evaluation=evaluation(), gate=decision)
    assert out.status == "champion" and out.champion == "good" and out.previous_champion == "base-tiny"
    assert champions(project) == ["good"]
    facts = json.loads(bentoml.models.get(out.tag).info.metadata["facts"])
    assert facts["data_version"] == "d" * 32 and facts["code_revision"] == "abc123" and facts["parent"] == "base-tiny"
    assert facts["gate"]["passed"] is True and facts["metrics"]["eval"]["win_rate"] == 0.8


def test_rollback_to_a_retired_version_and_refusals(project, tiny_folder):
    for v in ("v1", "v2"):
        registry.register(project, v, policy_folder(tiny_folder, project.root, v), parent="base-tiny")
    registry.promote(project, "v1")
    registry.reject(project, "v2", reason="gate failed")
    with pytest.raises(registry.RegistryError, match="never champion"):
        registry.rollback(project, "v2")
    with pytest.raises(registry.RegistryError, match="no model version"):
        registry.rollback(project, "v9")
    registry.rollback(project, "base-tiny")
    assert champions(project) == ["base-tiny"] and registry.get(project, "v1").status == "retired"
    registry.rollback(project, "v2", force=True)
    assert champions(project) == ["v2"]
    with pytest.raises(registry.RegistryError, match="is the champion"):
        registry.reject(project, "v2", reason="x")


CRASH = textwrap.dedent(
    """
    import os, sys
    from components.records import registry
    from components.project.paths import ProjectPaths
    def die(step):
        if step == "champion-marked":
            os._exit(9)  # killed between "new champion marked" and "old one retired"
    registry._crash_point = die
    registry.promote(ProjectPaths(sys.argv[1]), sys.argv[2])
    """
)


def test_a_crash_between_marking_and_retiring_recovers_to_one_champion(project, tiny_folder):
    registry.register(project, "v1", policy_folder(tiny_folder, project.root, "v1"), parent="base-tiny")
    proc = subprocess.run([sys.executable, "-c", CRASH, str(project.root), "v1"], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    on_disk = json.loads((project.registry / "status.json").read_text())
    # the half-done promotion is on disk: both entries say champion, the journal says what is left to do
    assert on_disk["champion"] == "v1" and on_disk["journal"]["old"] == "base-tiny"
    assert [v for v, m in on_disk["models"].items() if m["status"] == "champion"] == ["base-tiny", "v1"]
    # every reader sees exactly one champion; the next write persists the recovery
    assert registry.champion(project).version == "v1" and champions(project) == ["v1"]
    registry.register(project, "v2", policy_folder(tiny_folder, project.root, "v2"), parent="v1")
    on_disk = json.loads((project.registry / "status.json").read_text())
    assert on_disk["journal"] is None and on_disk["models"]["base-tiny"]["status"] == "retired"


RACE = textwrap.dedent(
    """
    import sys
    from components.records import registry
    from components.project.paths import ProjectPaths
    paths = ProjectPaths(sys.argv[1])
    for i in range(16):
        registry.promote(paths, sys.argv[2 + i % 2])
    """
)


def test_two_processes_promoting_at_once_leave_one_champion(project, tiny_folder):
    for v in ("a1", "a2", "b1", "b2"):
        registry.register(project, v, policy_folder(tiny_folder, project.root, v), parent="base-tiny")
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, str(project.root), x, y], stderr=subprocess.PIPE, text=True)
        for x, y in (("a1", "a2"), ("b1", "b2"))
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    on_disk = json.loads((project.registry / "status.json").read_text())
    stored = [v for v, m in on_disk["models"].items() if m["status"] == "champion"]
    assert stored == [on_disk["champion"]] and on_disk["journal"] is None
    assert on_disk["champion"] in {"a2", "b2"}  # each process ended on its second version
    promotions = sum(1 for m in on_disk["models"].values() for h in m["history"] if h["status"] == "champion")
    assert promotions == 1 + 32  # the base, then every promotion of both processes: none lost


def test_audit_across_two_versions(project, tiny_folder):
    """v2 (rejected, trained from v1) -> v1 (champion) -> base: ancestry, data history, rows by source, served ids,
    gate reasons, all from the registry and the project without opening a model file."""
    import pandas as pd
    import yaml

    from components.records.lineage import audit_trail

    d1, d2 = "1" * 32, "d" * 32  # policy_folder's manifests record d2
    (project.root / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": d2, "path": "data"}]}))
    project.metrics.mkdir(parents=True)
    project.data_versions.write_text(
        json.dumps({"version": d1, "previous_version": None, "origin": "seed", "kind": "pairs", "accepted": 3,
                    "quarantined": 1, "time": "t1"}) + "\n"
        + json.dumps({"version": d2, "previous_version": d1, "origin": "served", "kind": "pairs", "accepted": 2,
                      "quarantined": 0, "time": "t2"}) + "\n"
    )  # fmt: skip
    project.feedback.mkdir(parents=True)
    pd.DataFrame(
        {"prompt": list("abcde"), "source": ["demo-seed"] * 3 + ["served"] * 2,
         "chosen_id": [None, None, None, "s-1", "s-3"], "rejected_id": [None, None, None, "s-2", "s-4"]}
    ).to_parquet(project.pairs)  # fmt: skip

    v1 = policy_folder(tiny_folder, project.root, "v1")
    registry.register_and_decide(project, policy=v1, evaluation=evaluation(), gate=gate(GateConfig(), project,
                                 evaluation=evaluation()))  # fmt: skip
    v2 = policy_folder(tiny_folder, project.root, "v2", parent="v1")
    bad = evaluation(candidate__kl=9.0, champion__version="v1")
    registry.register_and_decide(project, policy=v2, evaluation=bad, gate=gate(GateConfig(), project, evaluation=bad))

    trail = audit_trail(project, "v2")
    assert [(a["version"], a["status"]) for a in trail["ancestry"]] == [
        ("v2", "rejected"), ("v1", "champion"), ("base-tiny", "retired")
    ]  # fmt: skip
    assert trail["data_version"] == d2 and [e["origin"] for e in trail["data_history"]] == ["seed", "served"]
    assert trail["feedback"]["by_source"]["pairs"] == {"demo-seed": 3, "served": 2}
    assert trail["feedback"]["served_ids"]["count"] == 4 and "s-1" in trail["feedback"]["served_ids"]["examples"]
    assert trail["code_revision"] == "abc123" and trail["params"]["ppo"] == {"steps": 2}
    assert trail["gate"]["passed"] is False and trail["gate"]["champion"] == "v1"
    assert any("KL 9.000 > maximum 6" in c["reason"] for c in trail["gate"]["checks"])
    champ_trail = audit_trail(project)  # default: the champion
    assert champ_trail["model"]["version"] == "v1" and champ_trail["gate"]["passed"] is True


def unique_names():
    """Version names no other test uses: the BentoML store is shared by every test of a pytest run."""
    import secrets

    tag = secrets.token_hex(3)
    return lambda name: f"{name}-{tag}"


def test_a_version_that_prefixes_another_gets_its_own_files(project, tiny_folder):
    """BentoML finds a version by its prefix too: registering v1 beside a stored v10 must store v1, not return
    v10's files; several versions starting with rm-2 must not stop rm-2 from being registered."""
    n = unique_names()
    v1, v10 = n("v1"), n("v1") + "0"
    ten = registry.register(project, v10, policy_folder(tiny_folder, project.root, v10))
    one = registry.register(project, v1, policy_folder(tiny_folder, project.root, v1))
    assert one.path != ten.path and one.path.name == v1 and (one.path / "config.json").is_file()
    for version in (n("rm-2") + "0", n("rm-2") + "1"):
        registry.register(project, version, tiny_folder, kind="reward_model")
    assert registry.register(project, n("rm-2"), tiny_folder, kind="reward_model").path.name == n("rm-2")


def test_prune_removes_unneeded_files_and_keeps_lineage(project, tiny_folder):
    """Rounds leave rejected candidates and reward models nobody needs in the store. `prune` removes their files
    and keeps the base, the champion with its ancestry and reward models (with theirs), retired champions and
    the newest policies; the records stay (marked), so lineage and gate decisions survive; a pruned version
    cannot be rolled back to."""
    from typer.testing import CliRunner

    from components.records.lineage import audit_trail
    from rlhf_cli.main import app

    n = unique_names()
    v1, v2, v3, v4, v5 = (n(f"v{i}") for i in range(1, 6))
    rm1, rm2, rm3, rm4, rm5 = (n(f"rm-{i}") for i in range(1, 6))

    def round_(version: str, parent: str, rm: str, rm_parent: str | None, passed: bool) -> None:
        registry.register(project, rm, tiny_folder, kind="reward_model", parent=rm_parent)
        folder = policy_folder(tiny_folder, project.root, version, parent=parent)
        registry.register(project, version, folder, facts={"reward_version": rm}, parent=parent)
        (registry.promote if passed else lambda p, v: registry.reject(p, v, reason="gate failed"))(project, version)

    round_(v1, "base-tiny", rm1, None, True)
    round_(v2, v1, rm2, rm1, False)
    round_(v3, v1, rm3, rm2, True)  # the champion's reward model trained on from a rejected round's
    round_(v4, v3, rm4, rm3, False)
    round_(v5, v3, rm5, None, False)
    before = {r.version: r.path for r in registry.list_models(project)}

    dry = registry.prune(project, keep_last=1, dry_run=True)
    assert dry.removed == [rm4, v2, v4] and dry.freed_bytes > 0 and all(p.is_dir() for p in before.values())
    kept = registry.prune(project, keep_last=1)
    assert kept.removed == dry.removed and kept.freed_bytes == dry.freed_bytes
    assert kept.kept[v3] == "champion" and kept.kept[v1] == f"ancestor of {v3}"
    assert kept.kept["base-tiny"] == "base model" and kept.kept[v5] == "one of the 1 newest policies"
    assert kept.kept[rm5] == f"reward model of {v5}"
    assert kept.kept[rm2] == f"ancestor of {rm3}"  # rm3 trained on from it: the audit follows that chain
    for version, path in before.items():
        assert path.is_dir() == (version not in kept.removed), version
        assert (registry.get(project, version).pruned is not None) == (version in kept.removed)
    assert registry.get(project, v2).status == "rejected"  # the decision stays on record
    assert [a["version"] for a in audit_trail(project, v4)["ancestry"]] == [v4, v3, v1, "base-tiny"]
    with pytest.raises(registry.RegistryError, match="removed from the store"):
        registry.rollback(project, v2, force=True)
    assert registry.prune(project, keep_last=1).removed == []  # nothing left to remove
    # keeping no retired champion and no newest policy leaves the champion's line and its reward models
    assert registry.prune(project, keep_last=0, keep_retired=False, dry_run=True).removed == [rm5, v5]
    # the command: the canary named in params.yaml is kept too
    (project.root / "params.yaml").write_text(f"seeding:\n  demo_task: true\nserve:\n  canary_version: {v5}\n")
    cmd = ["--project", str(project.root), "prune", "--keep-last", "0", "--no-keep-retired", "--dry-run", "--json"]
    out = CliRunner().invoke(app, cmd)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["removed"] == [] and json.loads(out.output)["kept"][v5] == "asked to keep"
    listed = CliRunner().invoke(app, ["--project", str(project.root), "models", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {m["version"]: m["pruned"] is not None for m in json.loads(listed.output)}[v2] is True


def test_human_judge_registers_the_candidate_decides_nothing_without_enough_people_then_on_their_choices(
    project, tiny_folder
):
    from components.config.evaluation import EvalConfig
    from components.config.judges import HumanJudgeConfig
    from components.config.serve import ServeConfig
    from components.data.served_store import ServedOutput, open_store
    from components.decide.judges.human import judge_by_humans
    from flows.retrain import _decided

    folder = policy_folder(tiny_folder, project.root, "cand")
    human = HumanJudgeConfig(comparisons=2, deadline_s=0.3, poll_s=0.1)
    cfg, serve = EvalConfig(judge="human", human_judge=human, bootstrap_resamples=200), ServeConfig()

    # 1. nobody compared by the deadline: registered (so the service could serve it), undecided, champion stays
    got = judge_by_humans(cfg, serve, project, policy=str(folder), evaluation=evaluation())
    assert not got.decided and got.evaluation is None and "0 of 2" in got.reason
    assert registry.get(project, "cand").status == "candidate" and champions(project) == ["base-tiny"]
    assert not _decided(project, "cand")  # a rerun of the flow judges it again rather than skip it

    # 2. two people prefer the candidate: the same gate promotes it on their win rate
    store = open_store(project.served_store)
    for i in range(2):
        msgs = [{"role": "user", "content": f"q{i}"}]
        store.log_outputs([ServedOutput(id=f"c{i}", prompt=f"q{i}", reply="c", model_version="cand", messages=msgs),
                           ServedOutput(id=f"h{i}", prompt=f"q{i}", reply="h", model_version="base-tiny",
                                        messages=msgs)])  # fmt: skip
        store.record_pair(f"c{i}", f"h{i}", annotator=f"rater{i}")
    store.close()
    got = judge_by_humans(cfg, serve, project, policy=str(folder), evaluation=evaluation(win_rate=0.1))
    assert got.decided and got.evaluation.win_rate == 1.0 and got.evaluation.judge["name"] == "human"
    decided = gate(GateConfig(), project, evaluation=got.evaluation)
    outcome = registry.register_and_decide(project, policy=folder, evaluation=got.evaluation, gate=decided)
    assert outcome.status == "champion" and champions(project) == ["cand"]
    facts = registry.get(project, "cand").facts
    assert facts["metrics"]["eval"]["win_rate"] == 1.0 and facts["metrics"]["eval"]["judge"]["name"] == "human"
