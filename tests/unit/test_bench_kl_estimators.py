"""``python -m bench kl_estimators`` on two random tiny models: both estimators on the same replies."""

from __future__ import annotations

import json

from bench import kl_estimators


def test_kl_estimators_reports_both_estimators_on_the_same_replies(tmp_path):
    out = tmp_path / "k.json"
    kl_estimators.main(["--model", "tiny", "--candidate", "tiny", "--prompts", "16", "--replies", "4",
                        "--bound", "4", "--draws", "200", "--max-new-tokens", "6", "--out", str(out)])  # fmt: skip
    record = json.loads(out.read_text())
    assert record["benchmark"] == "kl_estimators" and record["prompts"] == 16 and record["replies_per_prompt"] == 4
    k1, exact = record["estimators"]["k1"], record["estimators"]["exact"]
    # two random models: apart; the exact KL is never negative and is spread less than k1 around its mean
    assert exact["mean"] > 0.1 and exact["median"] >= 0 and exact["sd_per_reply"] < k1["sd_per_reply"]
    assert exact["bound_4x1_sd"] < k1["bound_4x1_sd"]
    assert abs(exact["mean"] - k1["mean"]) < 3 * k1["sd_per_reply"] / 8  # 64 replies: the same mean within noise
