"""Agreement between raters, against hand-computed values and a plain loop; per-rater counts."""

from __future__ import annotations

import itertools
import random

import pandas as pd
import pytest

from components.data.feedback.agreement import agreement_rate, krippendorff_alpha_interval, summarise


def naive_alpha(units: list[list[float]]) -> float:
    """Krippendorff's alpha (interval) by the coincidence definition, every ordered pair spelled out."""
    units = [u for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    d_o = sum((a - b) ** 2 / (len(u) - 1) for u in units for a, b in itertools.permutations(u, 2)) / n
    d_e = sum((a - b) ** 2 for a, b in itertools.permutations(values, 2)) / (n * (n - 1))
    return 1 - d_o / d_e


def test_alpha_matches_hand_computed_values():
    assert krippendorff_alpha_interval([[1, 1], [2, 2]]) == pytest.approx(1.0)
    # D_o = (2 + 2) / 4 = 1; D_e = 8 / (4 * 3) = 2/3 (8 of the 12 ordered pairs differ by 1) -> 1 - 1.5
    assert krippendorff_alpha_interval([[1, 2], [2, 1]]) == pytest.approx(-0.5)
    # units [1, 2, 3] and [3, 3]: D_o = (2 * (1 + 4 + 1) / 2 + 0) / 5 = 1.2; all 5 values 1,2,3,3,3:
    # ordered squared differences 2 * (1 + 4 + 4 + 4 + 1 + 1 + 1 + 0 + 0 + 0) = 32 -> D_e = 32 / 20 = 1.6
    assert krippendorff_alpha_interval([[1, 2, 3], [3, 3], [5]]) == pytest.approx(1 - 1.2 / 1.6)


def test_alpha_agrees_with_the_plain_loop_and_is_none_when_undefined():
    rng = random.Random(0)
    for _ in range(20):
        units = [[rng.randint(1, 5) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(2, 8))]
        if sum(len(u) for u in units if len(u) >= 2) >= 2 and len({v for u in units if len(u) > 1 for v in u}) > 1:
            assert krippendorff_alpha_interval(units) == pytest.approx(naive_alpha(units))
    assert krippendorff_alpha_interval([[3], [4]]) is None  # nothing rated twice
    assert krippendorff_alpha_interval([[4, 4], [4, 4]]) is None  # no variation at all: undefined


def test_agreement_rate_pools_ordered_pairs_of_judgements():
    # [x, x, y]: 2 of 6 ordered pairs agree; [x, y]: 0 of 2 -> 2 / 8
    assert agreement_rate([["x", "x", "y"], ["x", "y"], ["z"]]) == pytest.approx(0.25)
    assert agreement_rate([["a", "a"]]) == 1.0 and agreement_rate([["a"]]) is None


def test_summary_counts_each_rater_and_skips_pairs_made_from_ratings():
    ratings = pd.DataFrame(
        {
            "prompt": ["p"] * 5,
            "response": ["r1", "r1", "r2", "r2", "r3"],
            "rating": [5, 4, 2, 2, 3],
            "served_id": ["o1", "o1", "o2", "o2", "o3"],
            "annotator": ["alice", "bob", "alice", "bob", "alice"],
        }
    )
    pairs = pd.DataFrame(  # the last two were made from ratings, not chosen
        {
            "prompt": ["p"] * 5,
            "chosen": ["r1", "r2", "r1", "r1", "r1"],
            "rejected": ["r2", "r1", "r3", "r2", "r3"],
            "chosen_id": ["o1", "o2", "o1", "o1", "o1"],
            "rejected_id": ["o2", "o1", "o3", "o2", "o3"],
            "source": ["served", "served", "served", "ratings", "served"],
            "annotator": ["alice", "bob", "alice", "ratings", "alice"],
            "margin": [None, None, None, 2.0, 2.0],
        }
    )
    got = summarise(ratings, pairs)
    assert got["by_rater"] == {"alice": {"ratings": 3, "pairs": 2}, "bob": {"ratings": 2, "pairs": 1}}
    assert got["replies_rated_more_than_once"] == 2 and got["ratings_alpha"] == pytest.approx(
        round(krippendorff_alpha_interval([[5, 4], [2, 2]]), 4)
    )
    assert got["pairs_judged_more_than_once"] == 1 and got["choice_agreement"] == 0.0  # alice o1, bob o2


def test_the_audit_text_names_raters_agreement_and_a_forget():
    from rlhf_cli.main import _audit_text

    trail = {
        "model": {"version": "v2", "status": "champion", "tag": "policy:v2", "path": "models/v2"},
        "ancestry": [{"version": "v2", "status": "champion"}],
        "data_version": "bbb.dir",
        "data_history": [
            {
                "version": "bbb.dir",
                "kind": "forget",
                "origin": "forget rater alice",
                "time": "t",
                "removed": {"ratings": 3, "pairs": 0},
            },
        ],
        "feedback": {
            "raters": {
                "by_rater": {"bob": {"ratings": 2, "pairs": 1}},
                "ratings_alpha": 0.25,
                "replies_rated_more_than_once": 2,
                "choice_agreement": None,
                "pairs_judged_more_than_once": 0,
            },
        },
        "forgotten_raters": [
            {"rater": "alice", "version": "bbb.dir", "in_this_data_version": False, "note": "kept in DVC history"}
        ],
        "code_revision": "abc",
    }
    text = " ".join(_audit_text(trail).split())
    assert "bbb.dir: forget rater alice (ratings 3)" in text
    assert "raters: bob: 2 ratings / 1 pairs" in text and "alpha 0.250 on 2 replies" in text
    assert "forgotten rater alice at data version bbb.dir: this model's data version is without them" in text
