"""The prompt pool's pure parts: normalising, the hash split, the checks, conversations."""

import hashlib

import pytest

from components.config.prompts import PromptsConfig
from components.data.prompt_pool import (
    as_messages,
    check,
    conversation,
    heldout_score,
    is_heldout,
    normalise,
    prompt_key,
    prompt_text,
)

TALK = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "ok?"},
]


def test_normalise_collapses_whitespace_and_unicode_forms():
    assert normalise("  Where\tis\n\nmy  order? ") == "Where is my order?"
    assert normalise("cafe\u0301") == normalise("caf\u00e9")  # NFC


def test_the_split_is_the_prompts_hash_and_only_grows_with_the_fraction():
    key = "Where is my order?"
    expected = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64
    assert heldout_score(key) == expected
    assert is_heldout(" Where is  my order? ", 0.5) == is_heldout(key, 0.5)  # same prompt after normalising
    prompts = [f"question {i}" for i in range(500)]
    small = {p for p in prompts if is_heldout(p, 0.1)}
    large = {p for p in prompts if is_heldout(p, 0.2)}
    assert small < large and 20 < len(small) < 80  # raising the fraction only moves prompts to held-out


def test_a_conversation_is_hashable_renders_with_roles_and_has_a_text_form():
    conv = conversation(TALK)
    assert conv == (("user", "hi"), ("assistant", "hello"), ("user", "ok?")) and hash(conv)
    assert as_messages(conv) == TALK
    assert prompt_text(conv) == "Human: hi\n\nAssistant: hello\n\nHuman: ok?"
    assert prompt_key(conv) == prompt_key(TALK)
    assert conversation([{"role": "user", "content": "just one"}]) == "just one"


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("   ", "blank"),
        ("a", "too_short"),
        ("x" * 101, "too_long"),
        ("bell\x07", "control_chars"),
        ([*TALK, {"role": "assistant", "content": "late"}], "not_ending_with_user_turn"),
        ([{"role": "robot", "content": "x"}], "bad_message"),
        (TALK * 3, "too_many_turns"),
        ([], "empty_conversation"),
        ("Where is my order?", None),
        (TALK, None),
    ],
)
def test_each_bad_prompt_has_its_reason(prompt, reason):
    assert check(prompt, PromptsConfig(max_chars=100, max_turns=8)) == reason
