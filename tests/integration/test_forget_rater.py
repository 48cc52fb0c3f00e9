"""`rlhf forget --rater`: a real store, a real git + DVC project; the rater's rows leave the next data version,
the store and the raters file, the earlier version keeps them, and the audit says both."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.data.feedback.io import write_parquet
from components.data.feedback.schema import conform
from components.data.feedback.store import data_version, dvc, load
from components.data.raters import RaterBook, add_rater, raters_file
from components.data.served_store import ServedOutput, open_store
from components.project.scaffold import init_project
from components.records.lineage import feedback_summary, forgotten_raters

PROMPT = "my order is late"


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    monkeypatch.delenv("RLHF_STORE_URL", raising=False)
    return init_project(tmp_path / "proj")


def _version_with_feedback(project) -> str:
    """A data version of served feedback as the served ingest stores it (written directly: validation is tested
    elsewhere), and the served store holding the same judgements."""
    replies = {"a": "Please share your order number.", "b": "No.", "c": "Sorry, let me check the order."}
    store = open_store(project.served_store)
    store.log_outputs([ServedOutput(id=i, prompt=PROMPT, reply=r, model_version="v1") for i, r in replies.items()])
    rated = [("alice", "a", 5), ("alice", "b", 1), ("alice", "c", 4), ("bob", "a", 4), ("bob", "b", 2)]
    for who, i, rating in rated:
        store.record_rating(i, rating, annotator=who)
    chosen = [("alice", "c", "b", None), ("bob", "a", "b", None), ("alice", "a", "c", 1.0), ("ratings", "a", "b", 3.0)]
    for who, c, r, _ in chosen[:2]:
        store.record_pair(c, r, annotator=who)
    store.close()
    served = {"source": "served", "model_version": "v1", "created_at": pd.Timestamp("2026-01-01", tz="UTC")}
    ratings = pd.DataFrame(
        [{"prompt": PROMPT, "response": replies[i], "rating": n, "served_id": i, "annotator": w} for w, i, n in rated]
    ).assign(**served)
    pairs = pd.DataFrame(
        [
            {
                "prompt": PROMPT,
                "chosen": replies[c],
                "rejected": replies[r],
                "chosen_id": c,
                "rejected_id": r,
                "annotator": w,
                "margin": m,
            }
            for w, c, r, m in chosen
        ]
    ).assign(source="served", created_at=served["created_at"])
    write_parquet(conform(ratings, "ratings"), project.feedback / "ratings.parquet", "ratings")
    write_parquet(conform(pairs, "pairs"), project.feedback / "pairs.parquet", "pairs")
    dvc(project, "add", "data")
    return data_version(project)


def test_forget_removes_a_rater_from_the_next_version_only(project):
    before = _version_with_feedback(project)
    raters = feedback_summary(project.root, before)["raters"]
    assert raters["by_rater"] == {"alice": {"ratings": 3, "pairs": 1}, "bob": {"ratings": 2, "pairs": 1}}
    assert raters["replies_rated_more_than_once"] == 2 and raters["ratings_alpha"] is not None
    token = add_rater(raters_file(project.live), "alice")
    export = project.live / "exports" / "20260101T000000Z" / "ratings.jsonl"
    export.parent.mkdir(parents=True)
    export.write_text('{"annotator": "alice", "rating": 5}\n{"annotator": "bob", "rating": 4}\n', encoding="ascii")

    from rlhf_cli.main import app

    result = CliRunner().invoke(app, ["--project", str(project.root), "forget", "--rater", "alice", "--no-push"])
    assert result.exit_code == 0, result.output
    after = data_version(project)
    assert after != before and "dvc gc" in result.output
    ratings, pairs = load(project, "ratings"), load(project, "pairs")
    assert set(ratings["annotator"]) == {"bob"} and "alice" not in set(pairs["annotator"])
    assert len(pairs) == 1 and pairs["annotator"][0] == "bob"  # the two pairs made from her ratings went too
    assert feedback_summary(project.root, after)["raters"]["by_rater"] == {"bob": {"ratings": 2, "pairs": 1}}
    store = open_store(project.served_store)
    assert {r["annotator"] for i in "abc" for r in store.ratings_of(i)} == {"bob"}
    assert {p["annotator"] for p in store.all_pairs()} == {"bob"}
    store.close()
    assert RaterBook(raters_file(project.live)).name_of(token) is None  # revoked: the service answers 401
    assert [json.loads(line)["annotator"] for line in export.read_text().splitlines()] == ["bob"]
    entry = json.loads(project.data_versions.read_text().splitlines()[-1])
    assert entry["kind"] == "forget" and entry["removed"]["ratings"] == 3 and entry["previous_version"] == before

    # the audit: a model trained on the earlier version still holds her rows, one on the new version does not
    (old,) = forgotten_raters(project.root, before)
    (new,) = forgotten_raters(project.root, after)
    assert old["rater"] == "alice" and old["in_this_data_version"] and not new["in_this_data_version"]
    # earlier versions stay in DVC's cache: checking the old data.dvc out brings her rows back
    dvc_file = project.data_dvc.read_text()
    project.data_dvc.write_text(dvc_file.replace(after.removesuffix(".dir"), before.removesuffix(".dir")))
    shutil.rmtree(project.data)
    dvc(project, "checkout", "data.dvc")
    assert "alice" in set(load(project, "ratings")["annotator"])
