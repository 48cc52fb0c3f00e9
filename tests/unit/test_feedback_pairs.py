import pandas as pd
import pytest

from components.data.feedback.pairs import ratings_to_pairs
from components.data.feedback.schema import PAIRS_SCHEMA


def _ratings(rows):
    return pd.DataFrame(rows, columns=["prompt", "response", "rating", "served_id", "annotator"])


def test_higher_rating_is_chosen_and_margin_is_the_difference():
    pairs = ratings_to_pairs(
        _ratings(
            [
                ("p", "good", 5, "s1", "u1"),
                ("p", "ok", 3, "s2", "u1"),
                ("p", "bad", 1, "s3", "u1"),
                ("q", "x", 4, "s4", "u2"),  # alone on its prompt: no pair
            ]
        )
    )
    assert list(pairs.columns) == list(PAIRS_SCHEMA.columns)
    got = {(r.chosen, r.rejected): r.margin for r in pairs.itertuples()}
    assert got == {("good", "ok"): 2.0, ("good", "bad"): 4.0, ("ok", "bad"): 2.0}
    row = pairs[(pairs.chosen == "good") & (pairs.rejected == "bad")].iloc[0]
    assert (row.chosen_id, row.rejected_id, row.annotator, row.source) == ("s1", "s3", "u1", "ratings")


def test_ties_and_small_margins_make_no_pair_and_repeat_ratings_are_averaged():
    pairs = ratings_to_pairs(
        _ratings(
            [
                ("p", "a", 4, "s1", "u1"),
                ("p", "b", 4, "s2", "u2"),  # tie with a
                ("p", "c", 2, "s3", "u1"),
                ("p", "c", 4, "s3", "u2"),  # c averages to 3: margin 1 to a and b
            ]
        ),
        min_margin=1.5,
    )
    assert pairs.empty
    rows = [("p", "a", 4, "s1", "u1"), ("p", "c", 2, "s3", "u1"), ("p", "c", 4, "s3", "u2")]
    pairs = ratings_to_pairs(_ratings(rows))
    assert len(pairs) == 1 and pairs.margin.iloc[0] == pytest.approx(1.0) and pairs.annotator.iloc[0] == "ratings"


def test_max_pairs_per_prompt_keeps_the_widest_margins():
    rows = [("p", f"r{i}", i, f"s{i}", "u") for i in range(1, 6)]
    pairs = ratings_to_pairs(_ratings(rows), max_pairs_per_prompt=2)
    assert sorted(pairs.margin) == [3.0, 4.0]


def test_empty_ratings_give_empty_pairs_frame():
    assert ratings_to_pairs(_ratings([])).empty
