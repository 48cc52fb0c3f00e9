"""Reading feedback files: formats, HH-RLHF conversations, and malformed files (clear errors, nothing lost)."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from components.data.feedback.io import LINE, read_feedback, split_hh_conversation
from components.data.feedback.schema import PAIRS, RATINGS, FeedbackFileError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_jsonl_pairs_with_line_numbers_and_blank_lines_skipped(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, "", {"prompt": "q"}])
    loaded = read_feedback(f)
    assert loaded.kind == PAIRS and loaded.format == "jsonl"
    assert loaded.frame[LINE].tolist() == [1, 3]
    assert loaded.frame["chosen"].isna().tolist() == [False, True]  # missing key -> null, validated later


def test_broken_json_line_is_kept_as_unparseable_with_line_and_column(tmp_path):
    good = {"prompt": "p", "chosen": "c", "rejected": "r"}
    f = _jsonl(tmp_path / "a.jsonl", [good, '{"prompt": "x", "chosen":', "[1, 2]"])
    loaded = read_feedback(f)
    assert len(loaded.frame) == 1 and loaded.rows_in == 3
    assert [u.line for u in loaded.unparseable] == [2, 3]
    assert "line 2, column" in loaded.unparseable[0].error
    assert "not an object" in loaded.unparseable[1].error


def test_binary_junk_is_a_clear_error_naming_the_line(tmp_path):
    f = tmp_path / "junk.jsonl"
    f.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FeedbackFileError) as err:
        read_feedback(f)
    assert "junk.jsonl, line 1" in str(err.value) and "no readable rows" in str(err.value)


def test_wrong_columns_name_the_missing_column(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [{"question": "p", "chosen": "c", "rejected_answer": "r"}])
    with pytest.raises(FeedbackFileError) as err:
        read_feedback(f)
    assert err.value.column == "prompt" or "missing" in str(err.value)
    assert "found: chosen, question, rejected_answer" in str(err.value)


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FeedbackFileError, match="unknown file type"):
        read_feedback(tmp_path / "a.txt")
    with pytest.raises(FeedbackFileError, match="not found"):
        read_feedback(tmp_path / "nope.jsonl")


def test_corrupt_parquet_is_a_clear_error(tmp_path):
    f = tmp_path / "a.parquet"
    f.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(FeedbackFileError, match="not a readable Parquet file"):
        read_feedback(f)


def test_csv_ratings_and_a_row_with_wrong_field_count(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text('prompt,response,rating\nhello,"hi, there\nfriend",5\nbad,row\nq,a,"3"\n', encoding="utf-8")
    loaded = read_feedback(f)
    assert loaded.kind == RATINGS and loaded.format == "csv"
    assert loaded.frame[LINE].tolist() == [2, 5]  # the quoted newline makes row 1 span lines 2-3
    assert loaded.frame["response"].iloc[0] == "hi, there\nfriend"
    assert [(u.line, "2 fields" in u.error) for u in loaded.unparseable] == [(4, True)]


def test_parquet_round_trip_and_unknown_columns_reported(tmp_path):
    f = tmp_path / "a.parquet"
    pd.DataFrame({"prompt": ["p"], "response": ["r"], "rating": [4], "extra": [1]}).to_parquet(f)
    loaded = read_feedback(f)
    assert loaded.kind == RATINGS and loaded.dropped_columns == ["extra"] and loaded.frame[LINE].tolist() == [1]


def test_hh_split_takes_the_shared_prefix_and_final_replies():
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: Sure, how?"
    r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: No."
    prompt, chosen, rejected = split_hh_conversation(c, r)
    assert prompt == "Human: hi\n\nAssistant: hello\n\nHuman: help?"
    assert (chosen, rejected) == ("Sure, how?", "No.")
    with pytest.raises(ValueError, match="do not share"):
        split_hh_conversation(c, "\n\nHuman: other\n\nAssistant: No.")


def test_hh_rlhf_excerpt_imports_as_pairs(tmp_path):
    loaded = read_feedback(FIXTURES / "hh-rlhf-harmless-base-excerpt.jsonl.gz")
    assert loaded.format == "hh-rlhf" and loaded.kind == PAIRS and not loaded.unparseable
    assert len(loaded.frame) == 4
    first = loaded.frame.iloc[0]
    assert first.prompt == "Is it possible to download a car?" and first.prompt_messages is None  # one user turn
    assert first.chosen == "I’m not sure what you mean. Can you clarify?"
    assert first.rejected == "I’m sorry, I don’t understand."
    assert set(loaded.frame.source) == {"hh-rlhf"} and set(loaded.frame.annotator) == {"human"}
    # multi-turn prompts keep their turns with real roles; ``prompt`` holds the text form
    multi = tmp_path / "multi.jsonl"
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: Sure, how?"
    multi.write_text(json.dumps({"chosen": c, "rejected": c.replace("Sure, how?", "No.")}) + "\n")
    row = read_feedback(multi).frame.iloc[0]
    roles = [(m["role"], m["content"]) for m in json.loads(row.prompt_messages)]
    assert roles == [("user", "hi"), ("assistant", "hello"), ("user", "help?")]
    assert row.prompt == "Human: hi\n\nAssistant: hello\n\nHuman: help?" and row.chosen == "Sure, how?"
    # a pair whose conversations differ before the last turn is kept as unparseable, not dropped
    bad = tmp_path / "hh.jsonl.gz"
    row = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: b"}
    bad.write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    loaded = read_feedback(bad)
    assert len(loaded.frame) == 0 and [u.line for u in loaded.unparseable] == [1]
