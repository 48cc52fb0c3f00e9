"""Offline DPO's draw of pairs: served pairs (the loop's own, on-policy feedback) weighted against the others."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config.policy import DPOConfig
from components.models.policy.algorithms.dpo import served_draw
from components.models.policy.batch import read_pairs, read_pairs_with_source


def _pairs(sources: list[str]) -> list[tuple[str, str, str, str]]:
    return [(f"prompt {i}", "good", "bad", s) for i, s in enumerate(sources)]


def test_served_pairs_are_drawn_served_weight_times_as_often():
    pairs = _pairs(["demo-seed"] * 80 + ["served"] * 20)
    p = served_draw(pairs, 4.0)
    assert p is not None and p.sum() == pytest.approx(1.0)
    assert p[-1] / p[0] == pytest.approx(4.0)  # one served pair against one seed pair
    assert p[80:].sum() == pytest.approx(80 / 160)  # 20 x 4 of 80 + 20 x 4: half the draws are served pairs
    draws = np.random.default_rng(0).choice(len(pairs), size=20_000, replace=True, p=p)
    assert (draws >= 80).mean() == pytest.approx(0.5, abs=0.02)
    # uniform where the weight changes nothing: weight 1, no served pair, only served pairs
    assert served_draw(pairs, 1.0) is None
    assert served_draw(_pairs(["demo-seed"] * 5), 4.0) is None and served_draw(_pairs(["served"] * 5), 4.0) is None
    with pytest.raises(ValueError, match="served_weight"):
        DPOConfig(served_weight=0.0)


def test_pairs_are_read_with_their_source_and_without_one(tmp_path):
    frame = pd.DataFrame(
        {"prompt": ["a?", "b?", "c?"], "chosen": ["x", "y", "z"], "rejected": ["u", "v", "w"],
         "source": ["demo-seed", "served", None]}
    )  # fmt: skip
    path = tmp_path / "pairs.parquet"
    frame.to_parquet(path)
    assert [r[3] for r in read_pairs_with_source(path)] == ["demo-seed", "served", ""]
    assert read_pairs(path) == [("a?", "x", "u"), ("b?", "y", "v"), ("c?", "z", "w")]
    frame.drop(columns=["source"]).to_parquet(path)  # an imported file without the column
    assert [r[3] for r in read_pairs_with_source(path)] == ["", "", ""]
