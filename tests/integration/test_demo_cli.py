"""`rlhf demo --rounds 3` end to end on the tiny model in a throwaway git + DVC project: round 1 through the
retrain flow (seed -> validate -> version -> reward -> policy -> evaluate -> gate -> promote), a real `bentoml serve`
with simulated users rating its replies over HTTP, rounds 2 and 3 on seed + served feedback, each gated against
the champion before it, with other prompts asked before each; then
`dvc status`, `rlhf models`, `rlhf audit` and `rlhf rollback` on what it left."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort
from typer.testing import CliRunner

from components.project.paths import ProjectPaths
from components.records import registry
from components.records.lineage import code_revision
from rlhf_cli.main import app
from tests.tiny_params import TINY_REWARD

TINY = {
    "model": {"base": "tiny", "seed": 0},
    "seeding": {"seed_prompts": 24, "replies_per_prompt": 2, "max_new_tokens": 8, "batch_size": 24},
    "reward": {**TINY_REWARD, "eval_fraction": 0.2},
    "policy": {
        "steps": 2,
        "batch_size": 8,
        "mini_batch_size": 4,
        "micro_batch_size": 2,
        "max_new_tokens": 8,
        "save_every": 1,
        "lora": False,
        "bf16": False,
    },
    "eval": {"max_new_tokens": 8, "max_prompts": 12, "samples_per_prompt": 2, "bootstrap_resamples": 200},
    # the tiny random model babbles: a gate it can pass, so the promotion path runs in both rounds (the failing
    # gates are tested one by one in the registry tests)
    "gate": {
        "min_win_rate": 0.0,
        "max_kl": 1e6,
        "max_degenerate_rate": 1.0,
        "min_reward_accuracy": 0.0,
        "block_overoptimisation": False,
    },
    "serve": {"reload_poll_seconds": 1.0},
    "flow": {"retries": 0},
}


@pytest.mark.slow
def test_demo_runs_three_rounds_through_the_flow_and_the_service(prefect_api, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    src = tmp_path / "params.yaml"
    params = _repo_params()
    for section, values in TINY.items():
        params[section].update(values)
    src.write_text(yaml.safe_dump(params, sort_keys=False))
    root = tmp_path / "proj"
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    checkout_before = _checkout_status()

    # short replies: the random tiny model emits control characters that validation rightly quarantines
    sizes = ["--users", "10", "--clients", "3", "--max-tokens", "3", "--rounds", "3"]
    result = runner.invoke(app, ["demo", "--params", str(src), "--project", str(root), *sizes])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "the demo flow, 3 rounds" in text and "round 3" in text and "win rate by the judge" in text and "A/A" in text
    for n in (2, 3):
        assert f"simulated users before round {n}: 10 prompts, 20 replies, 20 ratings" in text
    paths = ProjectPaths(root)
    monkeypatch.chdir(root)

    # one `demo` flow run in Prefect, its three rounds `retrain` sub-flow runs of it
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC)
        names = {f.id: f.name for f in client.read_flows()}
        demo_run = next(r for r in runs if names[r.flow_id] == "demo" and r.parameters["project"] == str(root))
        rounds = [
            r
            for r in runs
            if names[r.flow_id] == "retrain"
            and r.parent_task_run_id
            and client.read_task_run(r.parent_task_run_id).flow_run_id == demo_run.id
        ]
    labels = sorted(r.parameters["label"] for r in rounds)
    assert demo_run.state.is_completed() and labels == ["round 1", "round 2", "round 3"]

    # every round promoted (the permissive gate): the champion is round 3's policy, child of round 2's
    policies = registry.list_models(paths, "policy")
    assert [m.status for m in policies] == ["retired", "retired", "retired", "champion"], result.output[-6000:]
    base, first, second, third = policies
    assert first.parent == base.version and third.version == registry.champion(paths).version
    assert third.parent == second.version
    assert f"serves {third.version}" in text  # the running service switched to round 3's champion

    # the demo's last task: the final champion (round 3's) against the base, read-only, in reports/compare/
    said = f"the final champion {third.version} (round 3's candidate, promoted) against the base {base.version}"
    assert said in text
    final = json.loads((paths.compare_reports / f"{third.version}-vs-{base.version}.json").read_text())
    assert final["comparisons"] == final["prompts"] * 2 == final["wins"] + final["ties"] + final["losses"]
    assert final["win_rate_low"] <= final["win_rate"] <= final["win_rate_high"] and final["a"]["kl"] is None
    assert final["replayed"] == ["a", "b"]  # both models' replies as the rounds' evaluations drew them: no sampling
    assert final["reward_version"] is None and final["a"]["reward_score"] is None  # nor any reward-model scoring

    # rounds 2 and 3 trained on seed + served feedback: the champion's data holds the served ids
    audit = runner.invoke(app, ["audit", "--json"])
    assert audit.exit_code == 0, audit.output
    trail = json.loads(audit.output)
    assert trail["feedback"]["served_ids"]["count"] >= 2
    assert set(trail["feedback"]["by_source"]["ratings"]) == {"served"}
    # each of the 3 concurrent simulated users rated with a token of their own, so the store names 3 raters;
    # the second phase of users asked other prompts than the first, each twice (two replies to choose from)
    import sqlalchemy as sa

    from components.data.served_store import open_store, ratings, served

    store = open_store(paths.served_store)
    with store.engine.connect() as conn:
        query = sa.select(ratings.c.annotator, sa.func.count()).group_by(ratings.c.annotator)
        raters = dict(conn.execute(query).all())
        asked = [row[0] for row in conn.execute(sa.select(served.c.prompt).order_by(served.c.seq))]
    store.close()
    assert sorted(raters) == ["simulated-user-1", "simulated-user-2", "simulated-user-3"], raters
    assert sum(raters.values()) == 40  # 2 phases x 10 prompts x 2 replies, every reply rated once
    assert len(asked) == 40 and len(set(asked)) == 20 and not set(asked[:20]) & set(asked[20:])
    assert (
        "demo-seed" in trail["feedback"]["by_source"]["pairs"] and "served" in trail["feedback"]["by_source"]["pairs"]
    )

    # round 2 fine-tuned round 1's champion (policy.init_from: champion), its KL measured against it
    second_manifest = json.loads((paths.policies / second.version / "manifest.json").read_text())
    assert second.parent == first.version and second_manifest["base_dir"] == str(first.path)

    # the pipeline is reproducible the DVC way: dvc.lock has every stage and nothing is left to do (the next
    # round's flow, not the promotion, points the ppo stage at the new champion)
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"train_reward", "train_judge", "ppo", "evaluate"}
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    )
    assert status == {}, status

    # the demo ran in its own project: the code checkout's tracked files are as they were, and every model records
    # the code's revision (the checkout's HEAD), not the project's
    assert _checkout_status() == checkout_before
    revisions = {
        json.loads((paths.policies / m.version / "manifest.json").read_text())["code_revision"]
        for m in (first, second, third)
    }
    assert revisions == {code_revision()}
    assert json.loads((paths.reward_model / "manifest.json").read_text())["code_revision"] == code_revision()

    listed = json.loads(runner.invoke(app, ["models", "--json"]).output)
    assert {m["version"]: m["status"] for m in listed if m["kind"] == "policy"}[third.version] == "champion"

    # a strict gate rejects through the flow's own tasks: a copy of the champion ties it, 50 % < 100 %
    from flows.retrain import gate_candidate, promote_or_reject

    strict = yaml.safe_load(paths.params.read_text())
    strict["gate"]["min_win_rate"] = 1.0
    (root / "strict.yaml").write_text(yaml.safe_dump(strict, sort_keys=False))
    copy = paths.policies / "20990101-000000-beef"
    shutil.copytree(third.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": copy.name, "parent": third.version}))
    ev = json.loads(paths.eval_metrics.read_text())
    ev = {**ev, "candidate": {**ev["champion"], "version": copy.name, "kl": 0.0}, "win_rate": 0.5}
    ev |= {"win_rate_low": 0.5, "win_rate_high": 0.5, "champion": {**ev["champion"], "version": third.version}}
    decision = gate_candidate.fn(str(root), str(root / "strict.yaml"), ev)
    reasons = [c["reason"] for c in decision["checks"] if not c["passed"]]
    assert decision["passed"] is False and "win rate by demo" in reasons[0]
    outcome = promote_or_reject.fn(str(root), str(copy), ev, decision)
    assert outcome["status"] == "rejected" and outcome["champion"] == third.version
    assert registry.champion(paths).version == third.version
    refused = runner.invoke(app, ["rollback", copy.name])
    assert refused.exit_code == 2 and "never champion" in refused.output

    back = runner.invoke(app, ["rollback", first.version])
    assert back.exit_code == 0, back.output
    assert registry.champion(paths).version == first.version


def _checkout_status() -> str:
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cmd = ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _repo_params() -> dict:
    from pathlib import Path

    return yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
