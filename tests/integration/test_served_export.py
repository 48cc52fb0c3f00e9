"""Rows exported from the served-output store pass the normal validation (Great Expectations) unchanged."""

from __future__ import annotations

import pytest

from components.data.served_store import ServedOutput, export_feedback, open_store


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "live" / "served.sqlite")
    yield s
    s.close()


def out(i: str, reply: str) -> ServedOutput:
    return ServedOutput(id=i, prompt="my order is late", reply=reply, model_version="v1")


def test_exported_rows_pass_the_normal_validation(store, tmp_path):
    from components.config.validation import ValidationConfig
    from components.data.feedback.validation import validate_file

    store.log_outputs([out("a", "Please share your order number."), out("b", "No.")])
    store.record_rating("a", 5)
    store.record_rating("b", 1, comment="curt")
    store.record_pair("a", "b")
    result = export_feedback(store, tmp_path / "x")
    for path, n in ((result.ratings_path, 2), (result.pairs_path, 1)):
        checked = validate_file(path, ValidationConfig())
        assert len(checked.accepted) == n and len(checked.quarantined) == 0, checked.by_reason
    accepted = validate_file(result.ratings_path, ValidationConfig()).accepted
    assert sorted(accepted["served_id"]) == ["a", "b"] and set(accepted["model_version"]) == {"v1"}


def test_a_conversation_is_exported_with_its_turns(store, tmp_path):
    import json

    from components.config.validation import ValidationConfig
    from components.data.feedback.validation import validate_file

    talk = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "my order is late"},
    ]
    store.log_outputs([ServedOutput(id="c", prompt="my order is late", reply="Sorry!", model_version="v1",
                                    messages=talk)])  # fmt: skip
    store.record_rating("c", 4)
    result = export_feedback(store, tmp_path / "x")
    row = validate_file(result.ratings_path, ValidationConfig()).accepted.iloc[0]
    assert json.loads(row.prompt_messages) == talk[1:]  # the turns users sent, the system turn dropped
    assert row.prompt == "Human: hi\n\nAssistant: hello\n\nHuman: my order is late"
