"""The ``retrain`` flow on the tiny model against a real local Prefect API and a real git + DVC project.

Seeds round one, trains through ``dvc repro`` (reward model, PPO), publishes artifacts; a rerun with nothing
changed skips both training stages; with the human judge and too few people's comparisons by the deadline there is
no decision; a failing stage fails the flow run and promotes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from prefect.artifacts import Artifact
from prefect.client.schemas.objects import StateType
from typer.testing import CliRunner

from components.data.served_store import ServedOutput, ServedStore, open_store
from components.decide import canary
from components.project.paths import ProjectPaths
from components.project.scaffold import init_project, pipeline_template
from flows.retrain import retrain
from rlhf_cli.main import app
from tests.tiny_params import TINY_REWARD

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "model": {"base": "tiny"},
    "seeding": {"seed_prompts": 8, "replies_per_prompt": 2, "max_new_tokens": 8, "batch_size": 16, "min_gold_gap": 0.0},
    "reward": TINY_REWARD,
    "policy": {
        "steps": 2,
        "batch_size": 4,
        "mini_batch_size": 4,
        "micro_batch_size": 4,
        "ppo_epochs": 1,
        "save_every": 2,
        "max_new_tokens": 8,
        "bf16": False,
    },
    # a short evaluation: the flow's tests check what is decided and recorded, not how well the tiny model does
    "eval": {"max_new_tokens": 8, "max_prompts": 12, "samples_per_prompt": 2, "bootstrap_resamples": 200},
    "flow": {"retries": 0},
}


def tiny_params(overrides: dict | None = None) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in {**TINY, **(overrides or {})}.items():
        params.setdefault(section, {}).update(values)
    return params


def make_project(tmp: Path, overrides: dict | None = None) -> Path:
    """A git + DVC project holding the package's pipeline (as `rlhf init` writes it) and the code its stages run."""
    src = tmp / "params-src.yaml"
    src.write_text(yaml.safe_dump(tiny_params(overrides), sort_keys=False))
    paths = init_project(tmp / "project", params=src, remote=tmp / "remote")
    (paths.root / "dvc.yaml").write_text(pipeline_template())
    shutil.copytree(REPO / "components", paths.root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    return paths.root


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the DVC stages' own processes
    monkeypatch.setenv("RLHF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RLHF_GPU_POOL", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_round_one_decides_then_a_rerun_skips_training_and_a_broken_stage_changes_nothing(
    prefect_api, tmp_path, caplog
):
    from components.records import registry

    caplog.set_level(logging.INFO, logger="prefect")  # the CLI's tests leave it at WARNING

    # A gate the tiny model cannot pass (it ties the base on most prompts): round one is rejected, the base stays,
    # so a rerun has nothing new to start from (after a promotion PPO reruns from the new champion, see
    # test_ppo_tiny's champion test). Round one is a tournament: the policy section (PPO) and an RLOO recipe.
    rloo = {"name": "rloo", "algorithm": "rloo", "overrides": {"policy.rloo.k": 2, "policy.learning_rate": 1e-3}}
    root = make_project(tmp_path, {"gate": {"min_win_rate": 1.0}, "flow": {"retries": 0, "candidates": [rloo]}})
    paths = ProjectPaths(root)

    # 1. round one: seed -> validate -> version -> reward -> PPO -> evaluate vs the base -> gate -> decision
    state = retrain(project=str(root), seed_if_empty=True, label="round 1", return_state=True)
    assert state.type == StateType.COMPLETED, state.message
    first = state.result()
    v = first["validation"]
    assert first["seeded"]["accepted"] > 0 and v["accepted"] + v["quarantined"] == v["rows_in"]
    assert first["data_version"] and first["previous_data_version"] is None
    assert first["training"]["where"] == "in-process" and first["training"]["ran"] == ["train_reward", "ppo"]
    candidate = first["candidate"]
    assert (paths.policies / candidate / "manifest.json").is_file()
    assert first["evaluation"]["candidate"] == candidate and first["evaluation"]["champion"].startswith("base")
    assert 0.0 <= first["evaluation"]["win_rate_low"] <= first["evaluation"]["win_rate"] <= 1.0
    assert first["decision"] == "rejected" and first["gate"]["checks"]
    assert registry.get(paths, candidate).status == "rejected"
    assert json.loads((paths.policies / candidate / "manifest.json").read_text())["parent"] == "base-tiny"
    assert first["champion_after"] == registry.champion(paths).version
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"train_reward", "train_judge", "ppo", "evaluate"}
    # the tournament: both candidates evaluated against the base and registered with a decision, at most one promoted
    rows = {r["name"]: r for r in first["tournament"]}
    assert set(rows) == {"policy", "rloo"} and rows["rloo"]["algorithm"] == "rloo"
    challenger = registry.get(paths, rows["rloo"]["version"])
    assert challenger.status == "rejected" and challenger.facts["algorithm"] == "rloo"
    assert challenger.gate["checks"][-2]["name"].startswith("win rate > minimum, Holm over 2")
    assert (paths.candidates / "rloo" / "reports" / "eval.md").is_file() and rows["rloo"]["win_rate"] is not None
    assert sum(r["decision"] == "promoted" for r in rows.values()) <= 1
    dvc = [sys.executable, "-m", "dvc", "status", "--json"]
    assert json.loads(subprocess.run(dvc, cwd=root, capture_output=True, text=True, check=True).stdout) == {}
    assert "| rloo |" in str(Artifact.get("retrain-tournament").data)
    assert "rows accepted" in str(Artifact.get("retrain-metrics").data)
    assert "round 1" in str(Artifact.get("retrain-summary").data)
    # the long tasks logged their progress through the run logger, each ending with its last step
    logged = [r.getMessage() for r in caplog.records]
    assert "seed-sample: sampling seed replies 1/1 (100 %)" in " | ".join(logged)
    assert any(m.startswith("seed-label: gold-labelling seed replies 8/8") for m in logged)
    assert any(m.startswith("seed-validate-and-version: ") and "accepted" in m for m in logged)

    # 2. nothing changed: no training, no new candidate, no new decision
    registered = [(m.version, m.status) for m in registry.list_models(paths)]
    again = retrain(project=str(root), label="rerun", return_state=True)
    assert again.type == StateType.COMPLETED, again.message
    second = again.result()
    assert second["training"]["ran"] == [] and second["training"]["skipped"] == ["train_reward", "ppo"]
    assert second["decision"] == "unchanged" and second["candidate"] == candidate
    assert second["data_version"] == first["data_version"]
    assert [(m.version, m.status) for m in registry.list_models(paths)] == registered
    assert [p.name for p in paths.policies.iterdir() if p.is_dir()] == [candidate]

    # 3. `rlhf retrain` runs the same flow and prints the same summary
    runner = CliRunner()
    cli = runner.invoke(app, ["retrain", "--params", str(paths.params)])
    assert cli.exit_code == 0, cli.output
    words = " ".join(cli.output.split())
    assert "decision: unchanged" in words and "none (up to date)" in words

    # 3b. `rlhf sweep` over a 2 x 2 grid: a row per recipe, the best recipe as a params file; nothing registered
    # (one step per recipe and a short evaluation keep it cheap; the sweep reads them from params.yaml)
    params = yaml.safe_load(paths.params.read_text())
    params["policy"]["steps"] = 1
    params["eval"].update({"max_prompts": 8, "max_new_tokens": 8})
    paths.params.write_text(yaml.safe_dump(params, sort_keys=False))
    grid = ["policy.learning_rate=1e-4,1e-3", "policy.algorithm=rloo,ppo"]
    swept = runner.invoke(app, ["sweep", *grid, "--params", str(paths.params)])
    assert swept.exit_code == 0, swept.output
    table = swept.output.split("sweep: each recipe against the champion")[1]
    assert table.count("rloo") >= 2 and table.count("ppo") >= 2 and "best recipe:" in table
    rows = json.loads((paths.reports / "sweep" / "sweep.json").read_text())
    assert len({r["name"] for r in rows}) == 4 and all(r["win_rate"] is not None and r["kl"] is not None for r in rows)
    best = yaml.safe_load((paths.reports / "sweep" / "best-params.yaml").read_text())
    assert best["policy"]["algorithm"] in ("rloo", "ppo") and best["policy"]["learning_rate"] in (1e-4, 1e-3)
    assert [(m.version, m.status) for m in registry.list_models(paths)] == registered

    # 3c. people judge (eval.judge: human): the new candidate goes on canary, one rater's choice arrives where two
    # are needed, the deadline passes: no decision, nothing promoted or rejected, the summary says why
    champion = registry.champion(paths).version
    params = yaml.safe_load(paths.params.read_text())
    params["flow"]["candidates"] = []  # people judge one candidate at a time
    params["eval"]["judge"] = "human"
    params["eval"]["human_judge"] = {"comparisons": 2, "deadline_s": 3.0, "poll_s": 0.1, "canary_share": 0.5}
    paths.params.write_text(yaml.safe_dump(params, sort_keys=False))
    store = open_store(paths.served_store)  # made before the flow's judge opens it too
    rater = threading.Thread(target=_one_choice_on_canary, args=(paths, store, champion), daemon=True)
    rater.start()
    waited = retrain(project=str(root), label="people", return_state=True)
    rater.join(timeout=5)
    store.close()
    assert waited.type == StateType.COMPLETED, waited.message
    people = waited.result()
    assert people["decision"] == "no decision" and people["champion_after"] == champion == first["champion_after"]
    assert people["training"]["ran"] == ["ppo"] and people["candidate"] not in dict(registered)  # a new one
    assert people["human"]["decided"] is False and people["human"]["tally"]["comparisons"] == 1
    assert "1 of 2 human comparisons had arrived by the deadline" in people["human"]["reason"]
    assert people["gate"] == {"passed": False, "reasons": [people["human"]["reason"]]}
    assert registry.champion(paths).version == champion
    assert registry.get(paths, people["candidate"]).status == "candidate"  # neither promoted nor rejected
    assert canary.read_assignment(paths) is None  # off canary again
    assert json.loads((paths.reports / "human_judge.json").read_text())["decided"] is False
    assert "no decision" in str(Artifact.get("retrain-summary").data)

    # 4. a stage that fails (a reward backbone that does not exist: `python -m components.models.reward.train`
    # exits non-zero inside `dvc repro`) fails the run; the champion stays, nothing is registered or written
    models_before = [(m.version, m.status) for m in registry.list_models(paths)]
    policies_before = sorted(p.name for p in paths.policies.iterdir())
    params = yaml.safe_load(paths.params.read_text())
    params["reward"]["backbone"] = str(tmp_path / "no-such-model")
    paths.params.write_text(yaml.safe_dump(params, sort_keys=False))
    broken = retrain(project=str(root), label="broken", return_state=True)
    assert broken.type == StateType.FAILED
    with pytest.raises(Exception, match="DVC stage 'train_reward' failed"):
        broken.result()
    assert registry.champion(paths).version == first["champion_after"]
    assert [(m.version, m.status) for m in registry.list_models(paths)] == models_before
    assert sorted(p.name for p in paths.policies.iterdir()) == policies_before
    failed = runner.invoke(app, ["retrain", "--params", str(paths.params)])
    assert failed.exit_code == 1 and "Nothing was promoted" in failed.output
    assert registry.champion(paths).version == first["champion_after"]


def test_served_feedback_enters_the_next_data_version_once(tmp_path):
    from components import stages
    from components.data.feedback.store import data_version, load
    from components.data.prompt_pool import is_heldout
    from components.project.params import load_params

    root = make_project(tmp_path)
    paths = ProjectPaths(root)
    p = load_params(paths.params)
    paths.live.mkdir(parents=True)
    store = open_store(paths.served_store)
    outs = [
        ServedOutput(f"out-{i}", "Where is my parcel?", reply, "policy-1")
        for i, reply in enumerate(["It ships today, sorry for the wait!", "No.", "Check the tracking page."])
    ]
    never_rated = ServedOutput("out-9", "Can I change the delivery address?", "Yes, in your account.", "policy-1")
    store.log_outputs([*outs, never_rated])
    store.record_rating("out-0", 5, annotator="gold")
    store.record_rating("out-1", 1, annotator="gold")
    store.record_pair("out-2", "out-1", annotator="gold")
    store.close()

    exported = stages.export_served_feedback(p.serve, paths)
    assert (exported.ratings, exported.pairs, exported.ties, exported.prompts) == (2, 1, 0, 2)
    ingested = stages.ingest_served_feedback(p.validation, paths, exported=exported)
    # 2 ratings + 1 pair from those ratings (5 over 1) + 1 user pair, all accepted
    assert (ingested.rows_in, ingested.accepted, ingested.quarantined, ingested.pairs_from_ratings) == (4, 4, 0, 1)
    assert ingested.served_ids == 3
    assert ingested.version and ingested.version != ingested.previous_version

    ratings, pairs = load(paths, "ratings"), load(paths, "pairs")
    assert sorted(ratings["served_id"]) == ["out-0", "out-1"] and set(ratings["model_version"]) == {"policy-1"}
    assert {(r.chosen_id, r.rejected_id) for r in pairs.itertuples()} == {("out-0", "out-1"), ("out-2", "out-1")}
    assert set(pairs["source"]) == {"served"}
    # every prompt users sent is in the pool, rated or not, on the side its hash puts it
    assert _pool_split(paths) == {
        "Where is my parcel?": is_heldout("Where is my parcel?", p.prompts.heldout_fraction),
        "Can I change the delivery address?": is_heldout(
            "Can I change the delivery address?", p.prompts.heldout_fraction
        ),
    }
    assert ingested.prompts_added == 2 and _pool(paths)["by_source"]["served"] == 2

    again = stages.export_served_feedback(p.serve, paths)  # the watermark moved past those rows
    assert (again.ratings, again.pairs, again.ties, again.prompts) == (0, 0, 0, 0)
    same = stages.ingest_served_feedback(p.validation, paths, exported=again)
    assert same.version == ingested.version

    # prompts served with no feedback on them at all still reach the next round's pool, as a new data version
    store = open_store(paths.served_store)
    store.log_outputs([ServedOutput("out-10", "Do you ship to Norway?", "We do.", "policy-1"),
                       ServedOutput("out-11", "Where is my parcel?", "On its way.", "policy-1")])  # fmt: skip
    store.close()
    unrated = stages.export_served_feedback(p.serve, paths)
    assert (unrated.ratings, unrated.pairs, unrated.prompts) == (0, 0, 2)
    grown = stages.ingest_served_feedback(p.validation, paths, exported=unrated)
    assert grown.prompts_added == 1 and grown.rows_in == 0  # "Where is my parcel?" was in the pool already
    assert grown.version not in (None, ingested.version) and grown.version == data_version(paths)
    assert "Do you ship to Norway?" in _pool_split(paths) and _pool(paths)["by_source"]["served"] == 3
    assert len(load(paths, "ratings")) == 2  # no feedback rows were made up
    assert stages.export_served_feedback(p.serve, paths).prompts == 0
    ingested = grown

    # the flow's tasks pass the same results on as dicts
    from flows.retrain import export_served_feedback, validate_and_version

    exported_dict = export_served_feedback.fn(str(root), str(paths.params))
    assert stages.result_from_dict(stages.ServedExport, exported_dict) == again.__class__(**exported_dict)
    assert validate_and_version.fn(str(root), str(paths.params), exported_dict)["version"] == ingested.version


def _one_choice_on_canary(paths: ProjectPaths, store: ServedStore, champion: str, timeout: float = 600.0) -> None:
    """A rater who, once a candidate is on canary, compares one of its replies with one of ``champion``'s."""
    t0 = time.monotonic()
    while (on := canary.read_assignment(paths)) is None:
        if time.monotonic() - t0 > timeout:
            return
        time.sleep(0.05)
    prompt = "Where is my parcel?"
    store.log_outputs([ServedOutput("out-canary", prompt, "On its way.", on.version),
                       ServedOutput("out-champion", prompt, "No idea.", champion)])  # fmt: skip
    store.record_pair("out-canary", "out-champion", annotator="rater-a")


def _pool(paths: ProjectPaths) -> dict:
    return json.loads((paths.prompts / "pool.json").read_text())


def _pool_split(paths: ProjectPaths) -> dict[str, bool]:
    """Each pooled prompt's text: True when it is held out."""
    split = {}
    for name, held in (("train.jsonl", False), ("heldout.jsonl", True)):
        for line in (paths.prompts / name).read_text().splitlines():
            split[json.loads(line)["prompt"]] = held
    return split
