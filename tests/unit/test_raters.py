"""Rater tokens: shown once, stored hashed, revocable, and seen by a running service without a restart."""

from __future__ import annotations

import pytest

from components.data.raters import (
    RaterBook,
    add_rater,
    load_admin,
    load_raters,
    raters_file,
    revoke_rater,
    rotate_admin,
)


def test_add_stores_only_a_hash_and_the_book_follows_revocations(tmp_path):
    path = raters_file(tmp_path / "live")
    book = RaterBook(path)
    assert book.name_of("anything") is None  # no file yet
    alice = add_rater(path, "alice")
    bob = add_rater(path, "bob@example.org")
    assert alice != bob and alice not in path.read_text() and path.stat().st_mode & 0o077 == 0
    assert (book.name_of(alice), book.name_of(bob), book.name_of(alice + "x")) == ("alice", "bob@example.org", None)
    revoke_rater(path, "alice")
    assert book.name_of(alice) is None and book.name_of(bob) == "bob@example.org"
    assert sorted(load_raters(path)) == ["bob@example.org"]


@pytest.mark.parametrize("name", ["api-token", "local", "admin", "", "a b", "-x", "x" * 65])
def test_reserved_and_odd_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="rater name"):
        add_rater(raters_file(tmp_path), name)


def test_duplicates_unknown_names_and_a_broken_file_say_what_to_do(tmp_path):
    path = raters_file(tmp_path)
    add_rater(path, "carol")
    with pytest.raises(ValueError, match="revoke them first"):
        add_rater(path, "carol")
    with pytest.raises(KeyError, match="rlhf raters list"):
        revoke_rater(path, "dave")
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a raters file"):
        load_raters(path)
    assert RaterBook(path).name_of("x") is None  # a broken file accepts no rater token (and says so in the log)


def test_the_admin_token_is_stored_hashed_beside_the_raters_and_rotates(tmp_path):
    path = raters_file(tmp_path / "live")
    book = RaterBook(path)
    alice = add_rater(path, "alice")
    first = rotate_admin(path)
    assert first.startswith("rlhf_at_") and first not in path.read_text() and load_admin(path) is not None
    assert (book.name_of(first), book.name_of(alice)) == ("admin", "alice")
    second = rotate_admin(path)  # rotating: the old admin token stops working, raters keep theirs
    assert (book.name_of(first), book.name_of(second), book.name_of(alice)) == (None, "admin", "alice")
    revoke_rater(path, "alice")  # revoking a rater keeps the admin token
    assert book.name_of(second) == "admin" and sorted(load_raters(path)) == []


def test_the_demo_gives_each_simulated_user_a_fresh_rater_token(tmp_path):
    from components.common.service_process import simulated_rater_tokens

    path = raters_file(tmp_path / "live")
    add_rater(path, "simulated-users")  # the one shared rater of older demos
    add_rater(path, "alice")
    book = RaterBook(path)
    first = simulated_rater_tokens(tmp_path, 3)
    assert [book.name_of(t) for t in first] == ["simulated-user-1", "simulated-user-2", "simulated-user-3"]
    assert sorted(load_raters(path)) == ["alice", "simulated-user-1", "simulated-user-2", "simulated-user-3"]
    second = simulated_rater_tokens(tmp_path, 2)  # a new demo run: every earlier simulated user's token is revoked
    assert [book.name_of(t) for t in first] == [None, None, None]
    assert [book.name_of(t) for t in second] == ["simulated-user-1", "simulated-user-2"]
    assert sorted(load_raters(path)) == ["alice", "simulated-user-1", "simulated-user-2"]  # a person stays
    with pytest.raises(ValueError, match=">= 1"):
        simulated_rater_tokens(tmp_path, 0)
