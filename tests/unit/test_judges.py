"""Judges' pure parts: answer parsing, both-order combination, the template's version, the judge slice, the demo
judge's refusal, and the gate deciding on the point estimate or the interval's lower bound."""

from __future__ import annotations

from dataclasses import replace

import pytest

from components.config.gate import GateConfig
from components.data.judge_slice import in_judge_slice, normalise_prompt, slice_position
from components.decide.gate import checks
from components.decide.judges import JudgeError, make_judge
from components.decide.judges.base import outcome_from_scores
from components.decide.judges.llm import Template, combine, parse_choice


@pytest.mark.parametrize(
    ("answer", "choice"),
    [
        ("Reply A addresses the question. [[A]]", "A"),
        ("B is shorter but wrong.\n[[B]]", "B"),
        ("[[ B ]]", "B"),
        ("A", "A"),
        ("B.", "B"),
        ("Reply B", "B"),
        ("[[A]] at first, but on reflection [[B]]", None),  # two verdicts: ambiguous
        ("A reply that names no verdict", None),
        ("", None),
        ("ÿ\x03 g'h lo", None),  # what a random model says
    ],
)
def test_parse_choice_reads_one_verdict_or_none(answer, choice):
    assert parse_choice(answer) == choice


def test_both_orders_agreeing_decide_and_a_disagreement_is_a_tie():
    # first: a shown as A; second: a shown as B
    assert combine("A", "B") == "win"
    assert combine("B", "A") == "loss"
    assert combine("A", "A") == "tie"  # always the first position: position bias
    assert combine("B", "B") == "tie"


def test_template_is_versioned_by_content_and_renders_both_replies(tmp_path):
    t = Template.load("pairwise-v1")
    assert t.version.startswith("pairwise-v1@") and len(t.version.split("@")[1]) == 12
    msgs = t.messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                       {"role": "user", "content": "my order?"}], "reply one", "reply two")  # fmt: skip
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "user: my order?" in user and user.index("reply one") < user.index("reply two")
    own = tmp_path / "mine.txt"
    own.write_text("=== system ===\nbe fair\n=== user ===\n{conversation} {reply_a} {reply_b}\n")
    first = Template.load(str(own)).version
    own.write_text(own.read_text() + "Answer [[A]] or [[B]].\n")
    assert first.startswith("mine@") and Template.load(str(own)).version != first  # an edit is a new version
    with pytest.raises(JudgeError, match="no such template"):
        Template.load("pairwise-v0")


def test_judge_slice_is_fixed_by_the_normalised_prompt_and_has_about_its_share():
    assert normalise_prompt("  Where is  MY order? ") == normalise_prompt("where is my order?")
    assert slice_position("Where is MY order?") == slice_position("where is   my order?")
    prompts = [f"question number {i}" for i in range(2000)]
    share = sum(in_judge_slice(p, 0.25) for p in prompts) / len(prompts)
    assert 0.22 < share < 0.28
    assert not any(in_judge_slice(p, 0.0) for p in prompts)
    # a larger fraction only adds prompts to the slice (positions are fixed)
    assert all(in_judge_slice(p, 0.5) for p in prompts if in_judge_slice(p, 0.25))


def test_outcome_from_scores():
    assert outcome_from_scores(1.0, 0.5) == "win"
    assert outcome_from_scores(0.5, 1.0) == "loss"
    assert outcome_from_scores(0.5, 0.5 + 1e-9) == "tie"


def test_the_demo_judge_refuses_a_project_without_the_demo_task(tmp_path):
    with pytest.raises(JudgeError, match=r"seeding\.demo_task: false.*reward_model.*llm"):
        make_judge("demo", root=tmp_path, demo_task=False)
    judge = make_judge("demo", root=tmp_path, demo_task=True)
    v = judge.compare("my parcel is late", "Sorry about the delay! Your parcel ships today.", "no")
    assert v.outcome == "win" and v.reason.startswith("demo scores")
    # a conversation: the demo annotator reads the last user turn
    convo = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
             {"role": "user", "content": "my parcel is late"}]  # fmt: skip
    assert judge.compare(convo, "no", "Sorry about the delay! Your parcel ships today.").outcome == "loss"


def test_the_demo_judges_parts_weighted_add_up_to_its_score_and_other_judges_have_none(tmp_path):
    judge = make_judge("demo", root=tmp_path, demo_task=True)
    prompts = ["my parcel is late", "how do I get a refund?", "the app crashes", "change my address"]
    replies = ["Happy to help! Your parcel is on its way and arrives today.",  # finished, positive, on topic
               "refund refund refund refund refund refund refund refund",  # repeated trigrams
               "",  # empty: the annotator's fixed score
               " ".join(["the address changed and"] * 12)]  # too long, cut mid-sentence  # fmt: skip
    parts, scores, w = judge.parts(prompts, replies), judge.scores(prompts, replies), judge.part_weights
    assert len(parts) == 4 and all(set(p) == set(w) for p in parts)
    for p, s in zip(parts, scores):
        assert sum(w[k] * p[k] for k in w) == pytest.approx(s, abs=1e-5)
    assert parts[0]["finished"] == 1.0 and parts[0]["topic"] > 0 and parts[0]["sentiment"] > 0
    assert parts[1]["repetition_penalty"] > 0.5 and parts[2]["empty"] == 1.0 and parts[3]["length_penalty"] > 0
    assert parts[3]["finished"] == 0.0
    from components.decide.judges.base import Judge

    assert Judge().parts(prompts, replies) is None and Judge().part_weights == {}


def _evaluation(**fields):
    from tests.integration.test_registry import evaluation

    return evaluation(**fields)


def test_gate_lower_bound_needs_the_whole_interval_above_the_minimum_point_does_not():
    ev = _evaluation(win_rate=0.60, win_rate_low=0.506, win_rate_high=0.694)
    point = {c.name: c for c in checks(GateConfig(decide_on="point"), ev)}
    lower = {c.name: c for c in checks(GateConfig(decide_on="lower_bound"), ev)}
    p = point["win rate by demo vs champion (point estimate)"]
    lo = lower["win rate by demo vs champion (lower bound)"]
    assert p.passed and p.value == 0.60
    assert not lo.passed and lo.value == 0.506
    for c in (p, lo):  # both figures in the table either way
        assert "60.0% [50.6%, 69.4%]" in c.reason
    ev = replace(ev, win_rate_low=0.56)
    assert all(c.passed for c in checks(GateConfig(decide_on="lower_bound"), ev))


def test_disagreement_is_flagged_both_ways():
    cfg = GateConfig()
    over = {c.name: c for c in checks(cfg, _evaluation(overoptimised=True))}["judge and reward model agree"]
    rev = {c.name: c for c in checks(cfg, _evaluation(judge_disagrees=True))}["judge and reward model agree"]
    assert not over.passed and "reward model prefers the candidate" in over.reason
    assert not rev.passed and "judge prefers the candidate while the training reward model" in rev.reason
    off = {c.name: c for c in checks(replace(cfg, block_overoptimisation=False), _evaluation(judge_disagrees=True))}
    assert off["judge and reward model agree"].passed


def test_gate_refuses_to_decide_below_the_judge_floor():
    from components.decide.gate import gate
    from components.project.paths import ProjectPaths

    ev = _evaluation(judge={"name": "reward_model"}, judge_accuracy=0.55, judge_min_accuracy=0.6)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = gate(GateConfig(), ProjectPaths(d), evaluation=ev)
    assert not res.passed and not res.decided
    assert "refuses to decide" in res.reasons[0] and "55.0%" in res.reasons[0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeding": {"demo_task": False}}, r"eval\.judge is 'demo'.*seeding\.demo_task: false"),
        ({"eval": {"judge": "reward_model"}}, r"reward\.judge_fraction is 0"),
        ({"eval": {"judge": "llm"}}, r"eval\.llm_judge\.model is empty"),
    ],
)
def test_judge_settings_that_cannot_work_are_refused_when_params_load(tmp_path, changes, message):
    from pathlib import Path

    import yaml

    from components.config import ConfigError
    from components.project.params import load_params

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    for section, values in changes.items():
        raw[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_params(tmp_path / "params.yaml")
    raw["reward"]["judge_fraction"] = 0.25
    raw["eval"]["llm_judge"]["model"] = "judge"
    raw["seeding"]["demo_task"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").eval.judge == raw["eval"]["judge"]
