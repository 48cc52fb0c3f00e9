"""Great Expectations validation: every check has a row that violates it (and only it); counts reconcile."""

import json
from pathlib import Path

import pandas as pd
import pytest

from components.config.validation import ValidationConfig
from components.data.feedback.schema import PAIRS, RATINGS, FeedbackFileError, key_hashes
from components.data.feedback.validation import check_descriptions, validate_file, validate_frame, write_outputs

CFG = ValidationConfig(max_prompt_chars=60, max_reply_chars=40)
TEXT_FAULTS = {
    "not_null": None,
    "is_text": ["a", "list"],
    "valid_utf8": "bad byte \udcff here",
    "not_blank": " \n\t ",
    "no_control_chars": "bell\x07",
    "length": "x" * 61,
}
STORED = {"prompt": "already stored", "chosen": "kept", "rejected": "old", "annotator": "unknown"}


def _pair(i: int, **kw):
    return {"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}", **kw}


def _pair_cases():
    cases = []
    for col in ("prompt", "chosen", "rejected"):
        for fault, value in TEXT_FAULTS.items():
            cases.append((f"{col}_{fault}", {col: value}))
    cases += [
        ("chosen_differs_from_rejected", {"chosen": "same", "rejected": "same"}),
        ("margin_is_number", {"margin": "lots"}),
        ("margin_non_negative", {"margin": -0.5}),
        ("created_at_valid", {"created_at": "yesterday"}),
        ("not_already_stored", {k: v for k, v in STORED.items() if k != "annotator"}),
        ("prompt_messages_valid", {"prompt_messages": '[{"role": "robot", "content": "hi"}]'}),
    ]
    return cases


PAIR_CASES = _pair_cases()


@pytest.fixture(scope="module")
def pairs_result(tmp_path_factory):
    rows = [_pair(0, margin=1.5, created_at="2026-01-02T03:04:05Z"), _pair(1)]
    rows += [_pair(10 + i, **overrides) for i, (_, overrides) in enumerate(PAIR_CASES)]
    rows.append(_pair(1))  # exact duplicate of row 2 (line 2)
    existing = key_hashes(pd.DataFrame([STORED]), PAIRS).to_numpy()
    report = tmp_path_factory.mktemp("report")
    return validate_frame(pd.DataFrame(rows), PAIRS, CFG, existing_keys=existing, report_dir=report)


@pytest.mark.parametrize(("check", "overrides"), PAIR_CASES, ids=[c for c, _ in PAIR_CASES])
def test_each_pairs_check_quarantines_its_violating_row_for_that_reason_only(pairs_result, check, overrides):
    line = 3 + [c for c, _ in PAIR_CASES].index(check)
    row = pairs_result.quarantined[pairs_result.quarantined.line == line]
    assert len(row) == 1, f"line {line} ({check}) was not quarantined"
    assert row.iloc[0].reasons == [check]


def test_duplicate_in_file_keeps_the_first_copy(pairs_result):
    last = 3 + len(PAIR_CASES)
    dup = pairs_result.quarantined[pairs_result.quarantined.line == last]
    assert dup.iloc[0].reasons == ["no_duplicate_in_file"]
    assert "question 1" in pairs_result.accepted.prompt.tolist()


def test_every_pairs_check_is_exercised_and_counts_reconcile(pairs_result):
    exercised = {c for c, _ in PAIR_CASES} | {"no_duplicate_in_file", "required_columns"}
    assert exercised == set(check_descriptions(PAIRS, CFG))
    r = pairs_result
    assert r.rows_in == len(PAIR_CASES) + 3
    assert len(r.accepted) == 2 and len(r.quarantined) == len(PAIR_CASES) + 1
    assert r.rows_in == len(r.accepted) + len(r.quarantined)
    assert sum(r.by_reason.values()) == len(r.quarantined)  # each faulty row here has one reason
    good = r.accepted.set_index("prompt")
    assert good.loc["question 0", "margin"] == 1.5
    assert str(good.loc["question 0", "created_at"]) == "2026-01-02 03:04:05+00:00"
    assert set(r.accepted.source) == {"import"} and set(r.accepted.annotator) == {"unknown"}


def test_html_report_states_the_rules_and_reads_offline(pairs_result):
    page = pairs_result.report
    assert page is not None and page.name == "summary.html" and page.is_file()
    html = page.read_text(encoding="utf-8")
    assert "http" not in html.replace('href="index.html"', "")  # nothing loaded from a network
    assert "<script" not in html
    assert "chosen != rejected" in html and "rows in <b>27</b>" in html
    assert (page.parent / "index.html").is_file()  # GX's Data Docs beside it
    docs = "".join(p.read_text(encoding="utf-8") for p in page.parent.glob("validations/**/*.html"))
    assert "__ok_chosen_differs_from_rejected" not in docs and "__ok_prompt_is_text" not in docs  # GX's own checks
    assert "chosen_valid_utf8: chosen is valid UTF-8" in docs  # a computed check says its rule


RATING_CASES = [(f"response_{fault}", {"response": value}) for fault, value in TEXT_FAULTS.items()] + [
    ("prompt_not_blank", {"prompt": ""}),
    ("rating_not_null", {"rating": None}),
    ("rating_is_number", {"rating": "five"}),
    ("rating_in_range", {"rating": 7}),
    ("rating_integral", {"rating": 3.5}),
]


def test_each_ratings_check_quarantines_its_violating_row():
    rows = [{"prompt": "ok", "response": "fine", "rating": "4", "served_id": "s-1"}]
    for i, (_, overrides) in enumerate(RATING_CASES):
        rows.append({"prompt": f"p{i}", "response": f"r{i}", "rating": 2, **overrides})
    r = validate_frame(pd.DataFrame(rows), RATINGS, CFG)
    assert r.accepted.rating.tolist() == [4] and pd.api.types.is_integer_dtype(r.accepted.rating)
    reasons = dict(zip(r.quarantined.line, r.quarantined.reasons))
    for i, (check, _) in enumerate(RATING_CASES):
        assert reasons[i + 2] == [check], check
    assert r.rows_in == len(r.accepted) + len(r.quarantined)


def test_mixed_file_reconciles_counts_and_writes_outputs(tmp_path):
    f = tmp_path / "mixed.jsonl"
    lines = [json.dumps(_pair(i)) for i in range(5)]
    lines += [json.dumps(_pair(5, chosen="   ")), json.dumps(_pair(0)), '{"prompt": "cut off', "\x00\x01binary"]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = validate_file(f, CFG)
    assert (r.rows_in, len(r.accepted), len(r.quarantined)) == (9, 5, 4)
    assert r.by_reason == {"unparseable": 2, "chosen_not_blank": 1, "no_duplicate_in_file": 1}
    assert set(r.accepted.source) == {"file:mixed.jsonl"}
    out = write_outputs(r, tmp_path / "out")
    quarantine = [json.loads(x) for x in out["quarantine"].read_text().splitlines()]
    assert [q["line"] for q in quarantine] == [6, 7, 8, 9]
    assert quarantine[2]["reasons"] == ["unparseable"] and "line 8, column" in quarantine[2]["detail"]
    assert len(pd.read_parquet(out["accepted"])) == 5
    assert json.loads(out["summary"].read_text())["quarantined"] == 4


def test_frame_without_a_required_column_is_an_error():
    with pytest.raises(FeedbackFileError, match="missing rejected"):
        validate_frame(pd.DataFrame({"prompt": ["p"], "chosen": ["c"]}), PAIRS, CFG)


def test_hh_rlhf_excerpt_validates_clean():
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "hh-rlhf-harmless-base-excerpt.jsonl.gz"
    r = validate_file(fixture, ValidationConfig())
    assert (r.rows_in, len(r.accepted), len(r.quarantined)) == (4, 4, 0) and r.success


def test_parquet_input_with_nulls_and_timestamps(tmp_path):
    f = tmp_path / "pairs.parquet"
    frame = pd.DataFrame(
        {
            "prompt": ["p1", None, "p3"],
            "chosen": ["c1", "c2", "c3"],
            "rejected": ["r1", "r2", "r3"],
            "created_at": pd.to_datetime(["2026-01-01T00:00:00Z", None, "2026-01-03T00:00:00Z"], utc=True),
        }
    )
    frame.astype({"prompt": pd.StringDtype("pyarrow")}).to_parquet(f)
    r = validate_file(f, CFG)
    assert len(r.accepted) == 2 and r.quarantined.reasons.tolist() == [["prompt_not_null"]]
    assert r.accepted.created_at.dt.day.tolist() == [1, 3]
