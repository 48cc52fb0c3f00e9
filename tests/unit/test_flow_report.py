"""The retrain flow's artifacts: the table rows and the Markdown a reviewer reads first."""

from __future__ import annotations

from flows.report import markdown, metric_rows

SUMMARY = {
    "label": "round 2",
    "exported": {"ratings": 16, "pairs": 3},
    "validation": {"rows_in": 19, "accepted": 16, "quarantined": 3},
    "data_version": "6bec00f57488.dir",
    "training": {"where": "in-process", "ran": ["train_reward", "ppo"], "skipped": []},
    "reward": {"accuracy": 0.75},
    "raters": {
        "by_rater": {"alice": {"ratings": 10, "pairs": 2}, "bob": {"ratings": 6, "pairs": 1}},
        "ratings_alpha": 0.6123,
        "replies_rated_more_than_once": 4,
        "choice_agreement": 0.5,
        "pairs_judged_more_than_once": 1,
    },
    "candidate": "v2",
    "policy": {
        "metrics": {"steps": 6, "stopped_at_step": 6, "kl_at_stop": 5.158, "exported_step": 5, "exported_kl": 4.07}
    },
    "evaluation": {
        "champion": "v1",
        "win_rate": 0.4875,
        "win_rate_low": 0.45,
        "win_rate_high": 0.525,
        "judge": {"name": "demo"},
        "judge_candidate": -0.699,
        "judge_champion": -0.694,
        "aa_win_rate": 0.5125,
        "aa_low": 0.45,
        "aa_high": 0.575,
        "kl": 0.08,
        "kl_target": 4.0,
    },
    "gate": {
        "checks": [
            {
                "name": "win rate by demo vs champion (point estimate)",
                "value": 0.4875,
                "threshold": 0.55,
                "passed": False,
                "reason": "low",
            },
            {"name": "KL", "value": 0.08, "threshold": 6.0, "passed": True, "reason": "ok"},
        ]
    },
    "decision": "rejected",
    "champion_before": "v1",
    "champion_after": "v1",
    "links": {"evaluation report": "reports/eval.md"},
    "seconds": 47.0,
}


def test_metric_rows_show_counts_interval_and_decision():
    rows = {r["figure"]: r["value"] for r in metric_rows(SUMMARY)}
    assert rows["served ratings / pairs exported"] == "16 / 3"
    assert (rows["rows in"], rows["rows accepted"], rows["rows quarantined"]) == ("19", "16", "3")
    assert rows["training stages run"] == "train_reward, ppo"
    assert rows["policy steps run"] == "6, back to 5 (KL 5.16 > bound; 4.07)"
    assert rows["raters (ratings / pairs each)"] == "alice 10 / 2, bob 6 / 1"
    assert rows["rater agreement: ratings alpha (replies) / choices (pairs)"] == "0.6123 (4) / 0.5 (1)"
    assert rows["judge"] == "demo"
    assert rows["reward model trained on from"] == "the backbone"
    parent = {**SUMMARY, "reward": {"accuracy": 0.75, "parent": "rm-1"}}
    assert {r["figure"]: r["value"] for r in metric_rows(parent)}["reward model trained on from"] == "rm-1"
    assert rows["win rate by the judge vs v1"] == "48.8% (95 % interval 45.0% - 52.5%)"
    assert rows["A/A: champion vs itself (about 50 %)"] == "51.2% (45.0% - 57.5%)"
    assert rows["judge score candidate / champion"] == "-0.699 / -0.694"
    assert rows["KL to reference (target 4)"] == "0.08"
    assert (rows["decision"], rows["champion"]) == ("rejected", "v1")


def test_many_raters_are_named_up_to_four_and_the_rest_summed():
    by_rater = {f"simulated-user-{i}": {"ratings": 10 + i, "pairs": i} for i in range(1, 9)}
    rows = {r["figure"]: r["value"] for r in metric_rows({**SUMMARY, "raters": {"by_rater": by_rater}})}
    assert rows["raters (ratings / pairs each)"] == (
        "simulated-user-1 11 / 1, simulated-user-2 12 / 2, simulated-user-3 13 / 3, simulated-user-4 14 / 4, "
        "4 more 66 / 26"
    )


def test_rows_before_any_evaluation_say_so():
    rows = {r["figure"]: r["value"] for r in metric_rows({"training": {"ran": []}, "decision": "unchanged"})}
    assert rows["training stages run"] == "none (up to date)" and rows["policy steps run"] == "-"
    assert rows["win rate by the judge vs champion"] == "-" and rows["decision"] == "unchanged"


def test_markdown_has_every_gate_check_and_the_links():
    md = markdown(SUMMARY)
    assert md.startswith("# Retrain round 2") and "**Decision: rejected** (champion v1 -> v1)" in md
    assert "| win rate by demo vs champion (point estimate) | 0.4875 | 0.55 | **fail** | low |" in md
    assert "| KL | 0.08 | 6 | pass | ok |" in md
    assert "- evaluation report: `reports/eval.md`" in md


def test_the_demo_names_which_round_its_final_champion_came_from():
    from rlhf_cli.demo_loop import which_champion

    r1 = {"label": "round 1", "candidate": "v1", "champion_after": "v1", "decision": "promoted"}
    r2 = {"label": "round 2", "candidate": "v2", "champion_after": "v2", "decision": "promoted"}
    assert which_champion([r1, r2]) == "round 2's candidate, promoted"
    rejected = {**r2, "champion_after": "v1", "decision": "rejected"}
    assert which_champion([r1, rejected]) == "round 1's champion; round 2 was rejected"
    base = {**r1, "champion_after": "base-x", "decision": "rejected"}
    assert which_champion([base, {**rejected, "champion_after": "base-x"}]) == "the base: no round promoted a candidate"
    # three rounds: the last one rejected, the champion is round 2's
    r3 = {"label": "round 3", "candidate": "v3", "champion_after": "v2", "decision": "rejected"}
    assert which_champion([r1, r2, r3]) == "round 2's champion; round 3 was rejected"


def test_policy_steps_in_words_with_and_without_a_stop():
    from components.models.policy.metrics import steps_run

    assert steps_run({"steps": 16}) == "16"
    assert steps_run({"steps": 16, "kl_sampled_last": 3.538}) == "16 (last KL 3.54)"
    # a run from before the step back: stopped, exported as the stopping step left it
    assert steps_run({"steps": 5, "stopped_at_step": 5, "kl_at_stop": 4.072}) == "5 (KL 4.07 > bound: stopped)"
    assert steps_run({}) is None
