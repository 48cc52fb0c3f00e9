"""`rlhf init` -> `rlhf import` -> the prompt pool (split by hash), on the tiny model; held-out prompts never train."""

import gzip
import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from components.data.prompt_pool import HeldoutLeak, heldout_score, is_heldout, prompt_key, read_prompts
from components.project.paths import ProjectPaths
from rlhf_cli.main import app

runner = CliRunner()
FIXTURE = Path(__file__).parents[1] / "fixtures" / "hh-rlhf-harmless-base-excerpt.jsonl.gz"


def _hh(i: int, turns: int = 1) -> dict:
    talk = "".join(f"\n\nHuman: question {i} part {t}\n\nAssistant: answer {t}" for t in range(turns - 1))
    talk += f"\n\nHuman: question {i}, please?"
    return {"chosen": talk + f"\n\nAssistant: a kind reply {i}", "rejected": talk + f"\n\nAssistant: a rude reply {i}"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project made by `rlhf init` for the tiny model, with an HH-RLHF file imported (40 pairs, half multi-turn,
    one broken row) and a prompts file."""
    tmp = tmp_path_factory.mktemp("proj")
    root = tmp / "my-project"
    env = {"RLHF_DVC_REMOTE": str(tmp / "remote")}
    result = runner.invoke(app, ["init", str(root), "--model", "tiny", "--system-prompt", "Be brief."], env=env)
    assert result.exit_code == 0, result.output
    rows = [_hh(i, turns=1 + i % 2) for i in range(40)]
    rows.append({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: c"})
    f = tmp / "hh.jsonl.gz"
    f.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    prompts = tmp / "extra-prompts.txt"
    prompts.write_text("What is DVC?\n  What   is DVC? \n\x07\nHow do I return shoes?\n", encoding="utf-8")
    imported = runner.invoke(app, ["--project", str(root), "import", str(f), "--prompts", str(prompts)], env=env)
    assert "RLHF_PROJECT" not in os.environ  # --project holds for that one command
    return ProjectPaths(root), imported


def test_init_writes_a_project_without_code_or_demo_settings(project):
    paths, _ = project
    raw = yaml.safe_load(paths.params.read_text(encoding="utf-8"))
    assert raw["model"]["base"] == "tiny" and raw["model"]["system_prompt"] == "Be brief."
    assert raw["seeding"] == {"demo_task": False} and "prompts" in raw and raw["eval"]["judge"] == "reward_model"
    pipeline = yaml.safe_load((paths.root / "dvc.yaml").read_text(encoding="utf-8"))
    assert set(pipeline["stages"]) == {"train_reward", "train_judge", "ppo", "evaluate"}
    assert all(s["cmd"].startswith("python -m components.") for s in pipeline["stages"].values())
    assert not (paths.root / "components").exists()  # the code is the installed package
    for f in (".gitignore", "README.md", ".dvc/config"):
        assert (paths.root / f).is_file(), f
    assert "rlhf import" in (paths.root / "README.md").read_text(encoding="utf-8")
    assert "remote" in (paths.root / ".dvc" / "config").read_text(encoding="utf-8")


def test_init_refuses_an_existing_project(project):
    paths, _ = project
    before = paths.params.read_text(encoding="utf-8")
    result = runner.invoke(app, ["init", str(paths.root)])
    assert result.exit_code == 2 and "already a project" in " ".join(result.output.split())
    assert paths.params.read_text(encoding="utf-8") == before


def test_import_stores_rows_counts_reconcile_and_exit_zero_with_quarantine(project):
    paths, result = project
    assert result.exit_code == 0, result.output  # rows were stored; the quarantined one is counted, not an error
    text = " ".join(result.output.split())
    assert "in │ 41" in text and "accepted │ 40" in text and "quarantined │ 1" in text and "unparseable" in text
    log = [json.loads(x) for x in paths.data_versions.read_text(encoding="utf-8").splitlines()]
    assert log[-1]["rows_in"] == log[-1]["accepted"] + log[-1]["quarantined"] == 41
    assert (paths.root / "data.dvc").is_file()
    import pandas as pd

    pairs = pd.read_parquet(paths.pairs)
    multi = pairs[pairs.prompt_messages.notna()]
    assert len(multi) == 20  # multi-turn prompts are kept as messages with their roles
    assert [m["role"] for m in json.loads(multi.iloc[0].prompt_messages)] == ["user", "assistant", "user"]


def test_pool_is_normalised_deduplicated_checked_and_split_by_hash(project):
    paths, _ = project
    train = read_prompts(paths.prompts / "train.jsonl")
    held = read_prompts(paths.prompts / "heldout.jsonl")
    pool = json.loads((paths.prompts / "pool.json").read_text(encoding="utf-8"))
    assert pool["train"] + pool["heldout"] == 40 + 2  # 40 imported + 2 distinct prompts from the file
    assert pool["duplicates"] == 1 and pool["by_reason"] == {"control_chars": 1}
    assert pool["multi_turn"] == 20 and any(not isinstance(p, str) for p in train + held)
    fraction = yaml.safe_load(paths.params.read_text(encoding="utf-8"))["prompts"]["heldout_fraction"]
    assert all(heldout_score(prompt_key(p)) < fraction for p in held)
    assert all(heldout_score(prompt_key(p)) >= fraction for p in train)
    assert is_heldout(" What   is DVC?", fraction) == is_heldout("What is DVC?", fraction)


def test_strict_makes_a_quarantined_row_an_error(project, tmp_path):
    paths, _ = project
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        json.dumps({"prompt": "new q", "chosen": "yes", "rejected": "no"})
        + "\n"
        + json.dumps({"prompt": "q2", "chosen": "same", "rejected": "same"})
        + "\n"
    )
    result = runner.invoke(
        app, ["--project", str(paths.root), "import", str(f), "--strict"], env={"RLHF_DVC_REMOTE": "/nonexistent"}
    )
    assert result.exit_code == 1 and "nothing was stored" in " ".join(result.output.split())
    assert "new q" not in set(__import__("pandas").read_parquet(paths.pairs).prompt)


def test_heldout_prompt_sneaked_into_training_is_refused(project, tmp_path):
    from components.models.policy.batch import read_pairs as policy_pairs
    from components.models.policy.batch import read_prompts as ppo_prompts
    from components.models.reward.pairs import pool_heldout_rows, read_pairs

    paths, _ = project
    held = read_prompts(paths.prompts / "heldout.jsonl")
    assert held, "the pool holds held-out prompts"
    sneaky = tmp_path / "train.jsonl"
    sneaky.write_text(
        "".join(
            json.dumps({"prompt": p} if isinstance(p, str) else {"messages": [dict(role=r, content=c) for r, c in p]})
            + "\n"
            for p in [*read_prompts(paths.prompts / "train.jsonl")[:3], held[0]]
        )
    )
    with pytest.raises(HeldoutLeak, match="held-out"):
        ppo_prompts(sneaky, paths.root)
    # the policy's offline pairs (DPO) leave the held-out prompts' pairs out
    held_keys = {prompt_key(p) for p in held}
    assert not {prompt_key(p) for p, _, _ in policy_pairs(paths.pairs, paths.root)} & held_keys
    assert {prompt_key(p) for p, _, _ in policy_pairs(paths.pairs)} & held_keys
    # the reward model: pairs on held-out prompts are found (and never trained on)
    from components.data.prompt_pool import heldout_keys

    rows = pool_heldout_rows(read_pairs(paths.pairs), heldout_keys(paths.root))
    assert len(rows) == sum(1 for p in held if prompt_key(p).startswith("question") or "Human:" in prompt_key(p))


def test_a_malformed_map_or_ambiguous_file_is_a_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "both.jsonl"
    f.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "response": "r", "rating": 3}) + "\n")
    bad_map = runner.invoke(app, ["validate", str(f), "--map", "prompt"])
    assert bad_map.exit_code == 2 and "NAME=COLUMN" in bad_map.output and "Traceback" not in bad_map.output
    ambiguous = runner.invoke(app, ["validate", str(f)])
    words = " ".join(ambiguous.output.split())
    assert ambiguous.exit_code == 2 and "several formats" in words and "--format" in words


def test_a_failed_store_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLHF_PROJECT", raising=False)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "chosen": "yes", "rejected": "no"}) + "\n")
    before = set(tmp_path.rglob("*"))
    result = runner.invoke(app, ["validate", str(f), "--store"])
    assert result.exit_code == 2 and "rlhf init" in " ".join(result.output.split())
    assert set(tmp_path.rglob("*")) == before  # no data/, no reports/


def test_formats_are_detected_and_ambiguity_is_explained(tmp_path):
    from components.data.feedback.io import read_feedback
    from components.data.feedback.schema import FeedbackFileError

    def write(name, rows):
        f = tmp_path / name
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return f

    chat = write(
        "chat.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "assistant", "content": "go away"}],
            }
        ],
    )
    assert read_feedback(chat).format == "trl-chat"
    implicit = write(
        "implicit.jsonl",
        [
            {
                "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}],
            }
        ],
    )
    row = read_feedback(implicit).frame.iloc[0]
    assert (row.prompt, row.chosen, row.rejected) == ("hi", "hello", "no")
    uf = write(
        "uf.jsonl",
        [
            {
                "prompt": "hi",
                "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "meh"}],
                "score_chosen": 8.0,
                "score_rejected": 5.5,
            }
        ],
    )
    loaded = read_feedback(uf)
    assert loaded.format == "ultrafeedback" and loaded.frame.iloc[0].margin == 2.5
    ls = tmp_path / "ls.json"
    ls.write_text(
        json.dumps(
            [
                {
                    "data": {"prompt": "hi", "answer1": "hello", "answer2": "go away"},
                    "annotations": [
                        {"completed_by": 3, "result": [{"type": "pairwise", "value": {"selected": "right"}}]}
                    ],
                }
            ]
        )
    )
    row = read_feedback(ls).frame.iloc[0]
    assert (row.chosen, row.rejected, row.annotator) == ("go away", "hello", "3")
    argilla = write(
        "argilla.jsonl",
        [
            {
                "fields": {"prompt": "hi", "response-1": "hello", "response-2": "go away"},
                "responses": {
                    "ranking": [
                        {
                            "value": [{"value": "response-2", "rank": 1}, {"value": "response-1", "rank": 2}],
                            "status": "submitted",
                        }
                    ]
                },
            }
        ],
    )
    row = read_feedback(argilla).frame.iloc[0]
    assert (row.chosen, row.rejected) == ("go away", "hello")
    rated = write("rated.jsonl", [{"fields": {"prompt": "hi", "reply": "hello"}, "responses": {"q": [{"value": 4}]}}])
    loaded = read_feedback(rated)
    assert loaded.kind == "ratings" and loaded.frame.iloc[0].rating == 4
    both = write("both.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "response": "r", "rating": 3}])
    with pytest.raises(FeedbackFileError, match="several formats"):
        read_feedback(both)
    mapped = write("mapped.jsonl", [{"question": "p", "good": "a", "bad": "b"}])
    row = read_feedback(mapped, mapping={"question": "prompt", "good": "chosen", "bad": "rejected"}).frame.iloc[0]
    assert (row.prompt, row.chosen, row.rejected) == ("p", "a", "b")
    csv_ratings = tmp_path / "r.csv"
    csv_ratings.write_text("prompt,response,rating\nhi,hello,5\n")
    assert read_feedback(csv_ratings).kind == "ratings"


def test_real_hh_excerpt_imports(tmp_path):
    from components.data.feedback.io import read_feedback

    assert read_feedback(FIXTURE).format == "hh-rlhf"


TINY_ROUND = {
    "reward": {"trainable": "all", "lr": 3e-3, "epochs": 1, "batch_size": 8, "max_length": 96, "eval_fraction": 0.25},
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
    "eval": {"max_new_tokens": 8, "samples_per_prompt": 2, "bootstrap_resamples": 200, "judge_min_accuracy": 0.0},
    "flow": {"retries": 0},
}


@pytest.mark.slow
def test_init_import_retrain_audit_a_round_on_human_data(prefect_api, tmp_path, monkeypatch):
    """The acceptance path at test size: `rlhf init` (tiny model) -> `rlhf import` 120 HH-RLHF lines ->
    `rlhf retrain` reaches a gate decision by the judge reward model -> `rlhf audit` names no demo data."""
    for k, v in {
        "OMP_NUM_THREADS": "1",
        "RLHF_HOME": str(tmp_path / "home"),
        "RLHF_DVC_REMOTE": str(tmp_path / "r"),
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RLHF_GPU_POOL", raising=False)
    root = tmp_path / "proj"
    assert runner.invoke(app, ["init", str(root), "--model", "tiny"]).exit_code == 0
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY_ROUND.items():
        params[section].update(values)
    tiny = tmp_path / "tiny-params.yaml"
    tiny.write_text(yaml.safe_dump(params, sort_keys=False))
    hh = tmp_path / "hh.jsonl"
    if os.environ.get("RLHF_HH_RLHF_FILE"):  # the real HH-RLHF file, when given
        with gzip.open(os.environ["RLHF_HH_RLHF_FILE"], "rt", encoding="utf-8") as f:
            hh.write_text("".join(line for _, line in zip(range(120), f)))
    else:  # HH-RLHF-shaped transcripts, half multi-turn
        hh.write_text("".join(json.dumps(_hh(i, turns=1 + i % 2)) + "\n" for i in range(120)))
    monkeypatch.chdir(root)
    imported = runner.invoke(app, ["import", str(hh)])
    assert imported.exit_code == 0, imported.output
    done = runner.invoke(app, ["retrain", "--params", str(tiny)])  # --params becomes the project's params.yaml
    assert done.exit_code == 0, done.output
    assert yaml.safe_load((root / "params.yaml").read_text())["policy"]["steps"] == 2
    words = " ".join(done.output.split())
    assert "decision: promoted" in words or "decision: rejected" in words
    # counts reconcile: lines in = accepted + quarantined (by reason); the pool and the two slices add up
    counts = json.loads((root / "reports" / "validation" / "hh" / "summary.json").read_text())
    assert counts["rows_in"] == 120 == counts["accepted"] + sum(counts["by_reason"].values())
    pool = json.loads((root / "data" / "prompts" / "pool.json").read_text())
    assert pool["seen"] == pool["train"] + pool["heldout"] + pool["duplicates"] + pool["quarantined"] > 0
    reward = json.loads((root / "metrics" / "reward.json").read_text())
    judge = json.loads((root / "metrics" / "judge_reward.json").read_text())
    rm_slice = json.loads((root / "models" / "reward" / "manifest.json").read_text())["judge_slice"]
    assert rm_slice["pairs_dropped"] == judge["judge_slice"]["pairs_kept"] > 0
    assert rm_slice["pairs_kept"] + rm_slice["pairs_dropped"] == counts["accepted"]
    assert reward["truncation"]["texts"] > 0 and "replies_cut" in reward["truncation"]
    # the decision is the judge reward model's, with its own held-out accuracy on human pairs
    ev, gate = (json.loads((root / "metrics" / f"{n}.json").read_text()) for n in ("eval", "gate"))
    assert ev["judge"]["name"] == "reward_model" and ev["judge"]["heldout_pairs"] > 0
    assert gate["decided"] and gate["judge"] == f"reward_model {judge['version']}"
    assert ev["wins"] + ev["ties"] + ev["losses"] == ev["prompts"] * ev["samples_per_prompt"]
    listed = runner.invoke(app, ["models", "--json"])
    models = json.loads(listed.output[listed.output.index("[") :])
    candidate = next(m["version"] for m in models if m["kind"] == "policy" and not m["version"].startswith("base"))
    audit = runner.invoke(app, ["audit", candidate, "--json"])
    assert audit.exit_code == 0, audit.output
    trail = json.loads(audit.output[audit.output.index("{") :])
    text = json.dumps(trail)
    assert "demo" not in text.lower() and "gold" not in text.lower()
    assert trail["gate"] and "reward_model" in text
    assert trail["prompt_pool"]["train"] > 0 and trail["prompt_pool"]["by_source"]  # the pool the round trained on
    # --params reached every stage the round ran: the DVC stages' recorded params are the file's values
    policy = json.loads((root / "models" / "policy" / candidate / "manifest.json").read_text())
    assert policy["params"]["policy"]["steps"] == 2 and policy["params"]["policy"]["max_new_tokens"] == 8
    rm = json.loads((root / "models" / "reward" / "manifest.json").read_text())
    assert rm["params"]["max_length"] == 96 and rm["params"]["epochs"] == 1
    assert ev["judge_min_accuracy"] == 0.0 and ev["candidate"]["mean_tokens"] <= 8


def test_the_demo_project_is_an_init_project_with_the_demo_task_on(tmp_path, monkeypatch):
    from rlhf_cli.demo_loop import QUICK, demo_params, prepare_project

    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    repo_params = Path(__file__).parents[2] / "params.yaml"
    root = prepare_project(tmp_path / "demo", demo_params(repo_params, quick=True))
    raw = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    assert raw["seeding"]["demo_task"] is True and raw["eval"]["judge"] == "demo"
    assert raw["seeding"]["seed_prompts"] == QUICK["seeding"]["seed_prompts"]
    assert not (root / "components").exists()  # no code copied
    assert "python -m components.models.reward.train" in (root / "dvc.yaml").read_text(encoding="utf-8")
    assert prepare_project(root, demo_params(repo_params), sync=False) == root  # reused as it is
    assert yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")) == raw
