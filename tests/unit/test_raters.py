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


def test_the_demo_gives_its_simulated_users_a_fresh_rater_token(tmp_path):
    from components.common.service_process import SIMULATED_RATER, simulated_rater_token

    book = RaterBook(raters_file(tmp_path / "live"))
    first = simulated_rater_token(tmp_path)
    assert book.name_of(first) == SIMULATED_RATER
    second = simulated_rater_token(tmp_path)  # a new demo run: the earlier token is revoked
    assert (book.name_of(first), book.name_of(second)) == (None, SIMULATED_RATER)
