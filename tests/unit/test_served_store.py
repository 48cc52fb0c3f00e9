"""The served-output store: durable logging, idempotent feedback, the review queue, export + watermark."""

from __future__ import annotations

import pandas as pd
import pytest

from components.data.feedback.io import read_feedback
from components.data.feedback.schema import PAIRS, RATINGS, SCHEMAS
from components.data.served_store import (
    AlreadyRated,
    FeedbackConflict,
    ServedOutput,
    UnknownServedId,
    export_feedback,
    open_store,
)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """The store on SQLite, and on a real PostgreSQL server (a fresh database per test)."""
    if request.param == "sqlite":
        s = open_store(tmp_path / "live" / "served.sqlite")
    else:
        s = open_store(request.getfixturevalue("postgres").new_database())
    yield s
    s.close()


def out(i: str, prompt: str = "my order is late", reply: str = "Sorry to hear that.", group: str | None = None):
    return ServedOutput(id=i, prompt=prompt, reply=reply, model_version="v1", group_id=group)


def test_sqlite_runs_in_wal_mode_with_full_sync(store):
    if not store.is_sqlite:
        pytest.skip("SQLite's own settings")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert store.integrity_ok()


def test_concurrent_writers_keep_one_judgement_per_rater(store):
    import concurrent.futures

    store.log_outputs([out("a")])

    def rate(i: int) -> str:
        try:
            return "new" if store.record_rating("a", 1 + i % 2, annotator="r").created else "duplicate"
        except AlreadyRated:
            return "conflict"
        except Exception as exc:  # a unique-key race must not surface as a server error
            return type(exc).__name__

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(rate, range(16)))
    assert outcomes.count("new") == 1 and set(outcomes) <= {"new", "duplicate", "conflict"}, outcomes
    assert len(store.ratings_of("a")) == 1


def test_logged_output_reads_back(store):
    store.log_outputs([out("a", reply="Hello")])
    got = store.get("a")
    assert got.reply == "Hello" and got.model_version == "v1"
    assert got.messages == [{"role": "user", "content": "my order is late"}]
    assert store.get("missing") is None


def test_rating_is_idempotent_and_unknown_ids_are_refused(store):
    store.log_outputs([out("a")])
    assert store.record_rating("a", 4, comment=" nice ").created
    assert not store.record_rating("a", 4, comment="nice").created
    with pytest.raises(AlreadyRated, match="rates an output once"):  # one judgement per output and rater
        store.record_rating("a", 2)
    assert store.record_rating("a", 2, annotator="other rater").created
    assert [(r["rating"], r["comment"]) for r in store.ratings_of("a")] == [(4, "nice"), (2, None)]
    with pytest.raises(UnknownServedId, match="nope"):
        store.record_rating("nope", 3)
    with pytest.raises(ValueError, match="1 to 5"):
        store.record_rating("a", 6)


def test_pairs_need_two_replies_to_the_same_prompt(store):
    store.log_outputs([out("a", reply="A"), out("b", reply="B"), out("c", prompt="other")])
    assert store.record_pair("a", "b").created
    assert not store.record_pair("a", "b").created
    with pytest.raises(AlreadyRated, match="compares a pair once"):
        store.record_pair("b", "a")
    assert store.record_pair("b", "a", tie=True, annotator="r2").created
    assert not store.record_pair("a", "b", tie=True, annotator="r2").created  # a tie has no order
    with pytest.raises(FeedbackConflict, match="different prompts"):
        store.record_pair("a", "c")
    with pytest.raises(FeedbackConflict, match="same output"):
        store.record_pair("a", "a")
    with pytest.raises(UnknownServedId):
        store.record_pair("a", "zzz")
    assert store.counts()["pairs"] == 2


def test_unrated_queue_is_oldest_first_and_paged(store):
    store.log_outputs([out(f"o{i}") for i in range(5)])
    store.record_rating("o1", 5)
    items, total = store.unrated(limit=2)
    assert total == 4 and [o.id for o in items] == ["o0", "o2"]
    items, _ = store.unrated(limit=2, offset=2)
    assert [o.id for o in items] == ["o3", "o4"]


def test_export_writes_schema_rows_once(store, tmp_path):
    store.log_outputs([out("a", reply="A"), out("b", reply="B"), out("c", reply="C")])
    store.record_rating("a", 5, annotator="ann")
    store.record_pair("a", "b")
    store.record_pair("b", "c", tie=True)
    first = export_feedback(store, tmp_path / "x1")
    assert (first.ratings, first.pairs, first.ties_skipped) == (1, 1, 1)

    ratings = read_feedback(first.ratings_path)
    assert ratings.kind == RATINGS and not ratings.unparseable and not ratings.dropped_columns
    row = ratings.frame.iloc[0]
    assert (row["prompt"], row["response"], row["rating"], row["served_id"], row["model_version"]) == (
        "my order is late",
        "A",
        5,
        "a",
        "v1",
    )
    assert row["source"] == "served" and row["annotator"] == "ann"
    assert list(ratings.frame.columns[:-1]) == list(SCHEMAS[RATINGS].columns)

    pairs = read_feedback(first.pairs_path)
    assert pairs.kind == PAIRS and not pairs.dropped_columns
    p = pairs.frame.iloc[0]
    assert (p["chosen"], p["rejected"], p["chosen_id"], p["rejected_id"]) == ("A", "B", "a", "b")
    assert pd.notna(pd.Timestamp(p["created_at"]))

    second = export_feedback(store, tmp_path / "x2")
    assert (second.ratings, second.pairs, second.ratings_path) == (0, 0, None)
    store.record_rating("b", 1)
    third = export_feedback(store, tmp_path / "x3")
    assert third.ratings == 1 and read_feedback(third.ratings_path).frame["served_id"].tolist() == ["b"]


def test_export_without_advance_repeats_until_the_watermark_moves(store, tmp_path):
    store.log_outputs([out("a")])
    store.record_rating("a", 3)
    held = export_feedback(store, tmp_path / "h1", advance=False)
    again = export_feedback(store, tmp_path / "h2", advance=False)
    assert held.ratings == again.ratings == 1
    store.advance_watermark(held.watermark)
    assert export_feedback(store, tmp_path / "h3").ratings == 0
    store.advance_watermark({RATINGS: 0})  # never moves backwards
    assert store.watermark()[RATINGS] == held.watermark[RATINGS]


def test_forgetting_a_rater_deletes_their_judgements_only(store):
    store.log_outputs([out("a", reply="one"), out("b", reply="two")])
    for who in ("alice", "bob"):
        store.record_rating("a", 4, annotator=who)
        store.record_pair("a", "b", annotator=who)
    assert store.forget_annotator("alice") == {RATINGS: 1, PAIRS: 1}
    assert [r["annotator"] for r in store.ratings_of("a")] == ["bob"]
    assert [p["annotator"] for p in store.all_pairs()] == ["bob"]
    assert store.counts()["served"] == 2 and store.forget_annotator("alice") == {RATINGS: 0, PAIRS: 0}


def test_version_comparisons_give_the_first_versions_outcome_and_skip_same_version_pairs(store):
    def v(i: str, version: str, prompt: str = "p") -> ServedOutput:
        return ServedOutput(id=i, prompt=prompt, reply=f"reply {i}", model_version=version)

    store.log_outputs([v("c1", "cand"), v("h1", "champ"), v("c2", "cand", "q"), v("h2", "champ", "q")])
    store.log_outputs([v("h3", "champ", "r"), v("h4", "champ", "r")])
    store.record_pair("c1", "h1", annotator="ann")  # candidate chosen
    store.record_pair("h1", "c1", annotator="bob")  # champion chosen
    store.record_pair("h2", "c2", tie=True, annotator="ann")
    store.record_pair("h3", "h4", annotator="ann")  # the champion against itself: not a comparison of the two
    got = store.version_comparisons("cand", "champ")
    assert [(r["outcome"], r["annotator"], r["a_id"], r["b_id"]) for r in got] == [
        ("win", "ann", "c1", "h1"),
        ("loss", "bob", "c1", "h1"),
        ("tie", "ann", "c2", "h2"),
    ]
    assert [r["outcome"] for r in store.version_comparisons("champ", "cand")] == ["loss", "win", "tie"]


def test_opening_waits_for_another_connection_holding_a_fresh_sqlite_file(tmp_path):
    """Switching a file to WAL needs it to itself, and SQLite refuses that at once (no busy wait) while another
    connection is writing to it (as a racing opener does): the opener must wait, as it waits for any other lock."""
    import sqlite3
    import threading
    import time

    path = tmp_path / "live" / "served.sqlite"
    path.parent.mkdir(parents=True)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE held (x)")
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.5)
        holder.execute("COMMIT")
        holder.close()
        released.set()

    threading.Thread(target=release).start()
    store = open_store(path)
    assert released.is_set()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.log_outputs([out("a")])
    assert store.get("a").reply == "Sorry to hear that."
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_openers_racing_on_a_fresh_store_all_get_it(backend, request, tmp_path):
    """Several openers of one fresh store race to create its tables; each must end up with a working store."""
    import threading

    if backend == "sqlite":
        url = str(tmp_path / "live" / "served.sqlite")
    else:
        url = request.getfixturevalue("postgres").new_database()
    openers = 6
    barrier = threading.Barrier(openers)
    opened, errors = [], []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(open_store(url))
        except Exception as exc:  # the test reports any failure to open
            errors.append(repr(exc))

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(opened) == openers
    opened[0].log_outputs([out("a")])
    assert opened[-1].get("a").reply == "Sorry to hear that."
    for s in opened:
        s.close()
