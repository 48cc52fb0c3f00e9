"""The tournament's statistics (Holm-Bonferroni, the bootstrap p-value), recipes and the decision rule."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from components.config import ConfigError, from_dict, load_section
from components.config.flow import CandidateRecipe, FlowConfig
from components.config.policy import PolicyConfig
from components.decide.eval_stats import win_rate_interval
from components.decide.tournament import (
    Entrant,
    bootstrap_p_value,
    decide,
    holm_bonferroni,
    outcomes_from_verdicts,
    recipe_policy,
    sweep_recipes,
)


def naive_holm(p: list[float], alpha: float) -> list[bool]:
    """Holm 1979 as written: walk the sorted p-values, reject while p_(i) <= alpha / (m - i + 1)."""
    m, rejected = len(p), [False] * len(p)
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        if p[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def test_holm_bonferroni_against_hand_computed_values():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> running max 0.06
    adjusted, rejected = holm_bonferroni([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert rejected == [True, False, False, True]
    # two candidates at p = 0.02 each: 0.04 > 0.025 for both (uncorrected, both would pass)
    assert holm_bonferroni([0.02, 0.02], alpha=0.025) == ([0.04, 0.04], [False, False])
    assert holm_bonferroni([0.6], alpha=0.05) == ([0.6], [False])
    assert holm_bonferroni([0.5, 0.9, 0.7], alpha=1.0)[0] == pytest.approx([1.0, 1.0, 1.0])


def test_holm_bonferroni_matches_the_step_down_loop_on_random_p_values():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = list(rng.uniform(0, 0.1, size=rng.integers(1, 6)))
        assert holm_bonferroni(p, 0.05)[1] == naive_holm(p, 0.05)


def test_bootstrap_p_value_inverts_the_evaluations_percentile_interval():
    assert bootstrap_p_value(np.ones((5, 2)), 0.55) == 0.0
    assert bootstrap_p_value(np.zeros((5, 2)), 0.55) == 1.0
    outcomes = np.random.default_rng(1).choice([0.0, 0.5, 1.0], size=(20, 4), p=[0.3, 0.1, 0.6])
    for alpha in (0.025, 0.1):
        _, low, _ = win_rate_interval(outcomes, confidence=1 - 2 * alpha, resamples=500, seed=3)
        for threshold in (low - 0.02, low + 0.02):
            p = bootstrap_p_value(outcomes, threshold, resamples=500, seed=3)
            assert (p <= alpha) == (low > threshold)


def test_sweep_grid_and_list_of_overrides():
    grid = sweep_recipes(["policy.learning_rate=1e-4,5e-4", "policy.algorithm=rloo,ppo"])
    assert [(r.algorithm, r.overrides) for r in grid] == [
        ("rloo", {"policy.learning_rate": 1e-4}),
        ("ppo", {"policy.learning_rate": 1e-4}),
        ("rloo", {"policy.learning_rate": 5e-4}),
        ("ppo", {"policy.learning_rate": 5e-4}),
    ]
    assert len({r.name for r in grid}) == 4 and grid[0].name == "learning-rate-0.0001_algorithm-rloo"
    listed = sweep_recipes(["policy.rloo.k=2,4", "policy.steps=8,4"], zip_axes=True)
    assert [r.overrides for r in listed] == [
        {"policy.rloo.k": 2, "policy.steps": 8},
        {"policy.rloo.k": 4, "policy.steps": 4},
    ]
    for bad in (["learning_rate=1e-4"], ["policy.steps"], []):
        with pytest.raises(ConfigError, match="sweep"):
            sweep_recipes(bad)
    with pytest.raises(ConfigError, match="as many values"):
        sweep_recipes(["policy.steps=1,2", "policy.seed=1"], zip_axes=True)


def test_a_recipe_is_the_policy_section_with_its_overrides_in_its_own_folder():
    recipe = CandidateRecipe("fast", "rloo", {"policy.learning_rate": 1e-4, "policy.rloo.k": 2})
    cfg = recipe_policy(PolicyConfig(batch_size=8), recipe, "models/candidates/fast")
    assert (cfg.algorithm, cfg.learning_rate, cfg.rloo.k, cfg.batch_size) == ("rloo", 1e-4, 2, 8)
    assert (cfg.output_dir, cfg.checkpoint_dir) == (
        "models/candidates/fast/policy",
        "models/candidates/fast/checkpoints",
    )
    with pytest.raises(ConfigError, match="unknown key"):
        recipe_policy(PolicyConfig(), CandidateRecipe("x", None, {"policy.learnig_rate": 1.0}), "f")
    with pytest.raises(ConfigError, match="no section"):
        recipe_policy(PolicyConfig(), CandidateRecipe("x", None, {"policy.nope.k": 1}), "f")


def test_flow_candidates_load_from_params_and_refuse_bad_entries():
    raw = {"flow": {"candidates": [{"name": "rloo", "algorithm": "rloo", "overrides": {"policy.rloo.k": 2}}]}}
    cfg = load_section(FlowConfig, "flow", raw)
    assert cfg.candidates == (CandidateRecipe("rloo", "rloo", {"policy.rloo.k": 2}),)
    for bad, words in (
        ({"name": "policy"}, "not 'policy'"),
        ({"name": "Big Name"}, "lowercase"),
        ({"name": "a", "overrides": {"reward.lr": 1}}, "must name a policy key"),
        ({"name": "a", "algorithm": "sgd"}, "algorithm: 'sgd' is not"),
    ):
        with pytest.raises(ConfigError, match=words):
            from_dict(CandidateRecipe, bad)
    with pytest.raises(ConfigError, match="unique"):
        load_section(FlowConfig, "flow", {"flow": {"candidates": [{"name": "a"}, {"name": "a"}]}})


def _entrant(name: str, win: float, p: float, passed: bool, kl: float = 1.0) -> Entrant:
    from components.decide.gate import GateCheck, GateResult

    # the decision reads an evaluation's win rate and the candidate's KL only (EvalResult would import torch)
    ev = SimpleNamespace(win_rate=win, candidate=SimpleNamespace(kl=kl))
    check = GateCheck("KL to reference", kl, 6.0, passed, "kl")
    return Entrant(name, ev, GateResult(passed, name, "champ", [check], ""), p)


def test_decide_promotes_at_most_the_best_candidate_that_passes_everything():
    a, b, c = _entrant("a", 0.70, 0.001, True), _entrant("b", 0.80, 0.001, False), _entrant("c", 0.65, 0.01, True)
    out = decide([a, b, c], min_win_rate=0.55, alpha=0.025)
    assert [g.passed for g in out] == [True, False, False]
    assert all(g.checks[-2].name.startswith("win rate > minimum, Holm over 3") for g in out)
    assert [g.checks[-2].passed for g in out] == [True, True, True]
    assert "a won" in out[2].checks[-1].reason and out[2].checks[-2].value == pytest.approx(0.01)
    # corrected for two candidates, p = 0.02 each misses alpha 0.025: nothing is promoted
    out = decide([_entrant("a", 0.7, 0.02, True), _entrant("c", 0.7, 0.02, True)], min_win_rate=0.55, alpha=0.025)
    assert not any(g.passed for g in out) and "no candidate passed" in out[0].checks[-1].reason
    # equal win rates: the lower KL wins
    out = decide([_entrant("a", 0.7, 0.0, True, kl=2.0), _entrant("c", 0.7, 0.0, True, kl=1.0)], min_win_rate=0.55,
                 alpha=0.025)  # fmt: skip
    assert [g.passed for g in out] == [False, True]
    alone = _entrant("a", 0.7, 0.5, True)
    assert decide([alone], min_win_rate=0.55, alpha=0.025) == [alone.gate]


def test_outcomes_from_verdicts_rebuild_the_prompt_by_sample_grid(tmp_path):
    path = tmp_path / "judge_verdicts.jsonl"
    rows = [
        {"kind": "candidate_vs_champion", "prompt_index": p, "sample_a": k, "outcome": o}
        for (p, k), o in {(0, 0): "win", (1, 0): "tie", (0, 1): "loss", (1, 1): "win"}.items()
    ] + [{"kind": "aa", "prompt_index": 0, "sample_a": 0, "outcome": "loss"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert outcomes_from_verdicts(path).tolist() == [[1.0, 0.0], [0.5, 1.0]]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[3]) + "\n")
    with pytest.raises(ValueError, match="missing"):
        outcomes_from_verdicts(path)
