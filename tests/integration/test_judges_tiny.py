"""The judge reward model and the evaluation on tiny models: the training reward model never sees the judge's
slice (enforced), the judge reports its own held-out accuracy, the evaluation records which judge decided, writes
every verdict and an A/A figure, and a misconfigured judge fails it before anything is written."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from components.config.evaluation import EvalConfig
from components.config.model import ModelConfig
from components.config.reward import RewardConfig
from components.data.judge_slice import in_judge_slice
from components.decide.evaluation import evaluate
from components.decide.judges import JudgeError, JudgeRewardConfig, make_judge
from components.decide.judges.reward_model import RewardModelJudge, train_judge_model
from components.models.reward.trainer import train_reward
from components.project.paths import ProjectPaths
from tests.tiny_params import TINY_REWARD

FRACTION = 0.5
RM = replace(RewardConfig(), **TINY_REWARD, judge_fraction=FRACTION, bf16=False, feature_cache_gib=0.0)


def _pairs(n: int = 48) -> pd.DataFrame:
    prompts = [f"customer question {i}: where is my order?" for i in range(n)]
    return pd.DataFrame({"prompt": prompts, "chosen": ["Sorry for the wait, it ships today."] * n,
                         "rejected": ["no"] * n})  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> ProjectPaths:
    """Pairs, a training reward model and a judge reward model on complementary slices, held-out prompts and a
    candidate policy folder (the tiny model with other weights)."""
    from components.models.base_model import prepare_tiny

    paths = ProjectPaths(tmp_path_factory.mktemp("judged"))
    paths.feedback.mkdir(parents=True)
    _pairs().to_parquet(paths.pairs)
    train_reward(paths.pairs, RM, paths.reward_model, paths.metrics, project_root=paths.root)
    train_judge_model(RM, JudgeRewardConfig(), paths)
    paths.prompts.mkdir(parents=True)
    heldout = ["my parcel is late", "how do I get a refund?", "the app crashes", "change my address"]
    (paths.prompts / "heldout.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in heldout))
    cand = paths.policies / "v1"
    shutil.copytree(prepare_tiny(paths.root / "tiny-1", seed=1), cand)
    rm = json.loads((paths.reward_model / "manifest.json").read_text())
    manifest = {"version": "v1", "base": "tiny", "reward_model": {"spec": "models/reward", "version": rm["version"],
                "heldout_accuracy": rm["metrics"]["eval"].get("accuracy")}}  # fmt: skip
    (cand / "manifest.json").write_text(json.dumps(manifest))
    return paths


def test_the_two_reward_models_train_on_prompt_disjoint_slices(project):
    rm = json.loads((project.reward_model / "manifest.json").read_text())
    judge = json.loads((project.root / "models/judge_reward/manifest.json").read_text())
    in_slice = sum(in_judge_slice(p, FRACTION) for p in _pairs()["prompt"])
    assert 0 < in_slice < 48
    assert rm["judge_slice"]["side"] == "train"
    assert (rm["judge_slice"]["pairs_kept"], rm["judge_slice"]["pairs_dropped"]) == (48 - in_slice, in_slice)
    assert judge["kind"] == "judge_reward_model" and judge["judge_slice"]["side"] == "judge"
    assert (judge["judge_slice"]["pairs_kept"], judge["judge_slice"]["pairs_dropped"]) == (in_slice, 48 - in_slice)
    # what each trained on (train + held-out) is exactly its side of the slice
    assert rm["metrics"]["train"]["pairs"] + rm["metrics"]["eval"]["pairs"] == 48 - in_slice
    assert judge["metrics"]["train"]["pairs"] + judge["metrics"]["eval"]["pairs"] == in_slice
    assert isinstance(judge["metrics"]["eval"]["accuracy"], float)  # its own held-out accuracy on human pairs
    assert (project.metrics / "judge_reward" / "reward.json").is_file()


def test_the_training_reward_model_cannot_train_on_the_judges_slice(project, tmp_path):
    only_judged = _pairs()[[in_judge_slice(p, FRACTION) for p in _pairs()["prompt"]]]
    only_judged.to_parquet(tmp_path / "judged.parquet")
    with pytest.raises(ValueError, match="no pairs left for the train side"):
        train_reward(tmp_path / "judged.parquet", RM, tmp_path / "rm", tmp_path / "metrics")


def test_the_judge_refuses_a_training_reward_model_that_saw_its_slice(project, tmp_path):
    rm = json.loads((project.reward_model / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**rm, "judge_slice": None}))
    with pytest.raises(JudgeError, match="not trained with the judge's slice held apart"):
        RewardModelJudge(project.root / "models/judge_reward", training_manifest=tmp_path / "manifest.json")
    judge = RewardModelJudge(
        project.root / "models/judge_reward", training_manifest=project.reward_model / "manifest.json"
    )
    assert judge.describe()["name"] == "reward_model" and judge.accuracy is not None


def test_a_judge_stage_with_another_judge_configured_writes_only_a_note(tmp_path):
    paths = ProjectPaths(tmp_path)
    done = train_judge_model(RM, JudgeRewardConfig(), paths, used=False)
    assert not done.trained
    with pytest.raises(JudgeError, match="not reward_model"):
        make_judge("reward_model", root=tmp_path, demo_task=False)


def test_evaluate_asks_the_judge_records_it_and_writes_every_verdict_and_an_aa_figure(project):
    cfg = EvalConfig(judge="reward_model", max_new_tokens=6, samples_per_prompt=2, bootstrap_resamples=200,
                     batch_size=8, bf16=False)  # fmt: skip
    ev = evaluate(cfg, project, model=ModelConfig(base="tiny"), candidate=project.policies / "v1")
    assert ev.judge["name"] == "reward_model" and ev.judge["version"].startswith("rm-")
    assert ev.judge_accuracy is not None and ev.judge_min_accuracy == 0.6
    assert ev.wins + ev.ties + ev.losses == 4 * 2
    assert ev.aa_comparisons == 4 and 0.0 <= ev.aa_win_rate <= 1.0
    assert ev.candidate.judge_score is not None and 0.0 <= ev.reward_win_rate <= 1.0
    lines = [json.loads(x) for x in Path(ev.verdicts_path).read_text().splitlines()]
    assert [x["kind"] for x in lines].count("candidate_vs_champion") == 8 and len(lines) == 12
    assert {x["outcome"] for x in lines} <= {"win", "tie", "loss"} and all(x["reason"] for x in lines)
    recorded = json.loads(project.eval_metrics.read_text())
    assert recorded["judge"]["name"] == "reward_model"
    report = project.eval_report.read_text()
    assert "judge: **reward_model rm-" in report and "A/A check" in report and "floor 60.0%" in report


def test_the_demo_judge_on_a_project_without_the_demo_task_fails_before_writing(project):
    project.eval_metrics.unlink(missing_ok=True)
    cfg = EvalConfig(judge="demo", max_new_tokens=4, samples_per_prompt=1, bootstrap_resamples=200, bf16=False)
    with pytest.raises(JudgeError, match=r"seeding\.demo_task: false"):
        evaluate(cfg, project, model=ModelConfig(base="tiny"), candidate=project.policies / "v1", demo_task=False)
    assert not project.eval_metrics.exists()


def test_an_unreachable_llm_judge_fails_the_evaluation_naming_the_url(project):
    from components.decide.judges import LLMJudgeConfig
    from tests.serving.server import free_port

    project.eval_metrics.unlink(missing_ok=True)
    url = f"http://127.0.0.1:{free_port()}/v1"
    llm = LLMJudgeConfig(base_url=url, model="judge", retries=0, backoff_s=0.0, cache=str(project.root / "jc.sqlite"))
    cfg = EvalConfig(judge="llm", llm_judge=llm, max_new_tokens=4, samples_per_prompt=1, bootstrap_resamples=200,
                     bf16=False)  # fmt: skip
    with pytest.raises(JudgeError, match=rf"{url}/chat/completions unreachable"):
        evaluate(cfg, project, model=ModelConfig(base="tiny"), candidate=project.policies / "v1")
    assert not project.eval_metrics.exists()  # nothing for the gate to decide on: nothing is promoted


def test_compare_champion_vs_base_after_a_promotion_counts_add_up_and_changes_nothing_else(project):
    from components.decide.compare import compare
    from components.records import registry

    cfg = EvalConfig(judge="reward_model", max_new_tokens=6, samples_per_prompt=2, bootstrap_resamples=200,
                     batch_size=8, bf16=False)  # fmt: skip
    model = ModelConfig(base="tiny")
    from components.models.base_model import resolve_model_dir

    base = registry.ensure_base_champion(project, "tiny", resolve_model_dir("tiny"))  # as evaluate registers it
    # the evaluation keeps both models' replies; a comparison of the same model files with the same prompts and
    # settings replays them (A's only without the KL) and reaches the evaluation's verdicts
    shutil.rmtree(project.sample_cache, ignore_errors=True)
    ev = evaluate(cfg, project, model=model, candidate=project.policies / "v1")
    verdicts = project.judge_verdicts.read_text()
    # the next evaluation against the same champion replays its replies: the same verdicts, nothing resampled
    again = evaluate(cfg, project, model=model, candidate=project.policies / "v1")
    assert not ev.champion_replayed and again.champion_replayed
    assert (again.wins, again.ties, again.losses) == (ev.wins, ev.ties, ev.losses)
    assert project.judge_verdicts.read_text() == verdicts and again.champion == ev.champion
    assert "replayed from the sample cache" in project.eval_report.read_text()
    replay = compare(cfg, project, model=model, a=str(project.policies / "v1"), b="base", kl=False)
    assert replay.replayed == ["a", "b"] and (replay.wins, replay.ties, replay.losses) == (ev.wins, ev.ties, ev.losses)
    replayed_lines = Path(replay.verdicts_path).read_text()
    shutil.rmtree(project.sample_cache)
    resampled = compare(cfg, project, model=model, a=str(project.policies / "v1"), b="base", kl=False)
    assert resampled.replayed == [] and Path(resampled.verdicts_path).read_text() == replayed_lines

    registry.register(project, "v1", project.policies / "v1", parent=base.version)
    registry.promote(project, "v1", reason="test")
    eval_json = project.eval_metrics.read_bytes() if project.eval_metrics.exists() else None
    before = [(r.version, r.status) for r in registry.list_models(project)]

    r = compare(cfg, project, model=model, a="champion", b="base")  # A sampled again: its KL needs the token ids
    assert r.replayed == ["b"] and (r.wins, r.ties, r.losses) == (ev.wins, ev.ties, ev.losses)
    # the registry's copy of v1 has v1's model files: replayed too
    assert compare(cfg, project, model=model, a="champion", b="base", kl=False).replayed == ["a", "b"]
    assert (r.a.version, r.b.version, r.a_name, r.b_name) == ("v1", base.version, "champion", "base")
    assert r.comparisons == r.prompts * r.samples_per_prompt == 4 * 2 == r.wins + r.ties + r.losses
    assert r.win_rate_low <= r.win_rate <= r.win_rate_high and not r.identical
    assert r.win_rate == (r.wins + 0.5 * r.ties) / r.comparisons
    assert r.a.kl is not None and r.b.kl is None and r.a.judge_score is not None and r.a.reward_score is not None
    saved = json.loads(Path(r.json_path).read_text())
    assert saved["win_rate"] == r.win_rate and Path(r.json_path).parent == project.compare_reports
    lines = [json.loads(x) for x in Path(r.verdicts_path).read_text().splitlines()]
    assert len(lines) == 8 and {(x["a"], x["b"]) for x in lines} == {("v1", base.version)}
    assert "Read-only" in Path(r.report_path).read_text()
    assert r.judge_parts == {} and "by part" not in Path(r.report_path).read_text()  # a reward model has no parts
    # an audit only: the evaluate stage's record, the registry and the champion are as they were
    assert (project.eval_metrics.read_bytes() if project.eval_metrics.exists() else None) == eval_json
    assert [(x.version, x.status) for x in registry.list_models(project)] == before

    # X vs X: one folder is sampled once, every comparison a tie, KL 0; the registry's copy against the policy
    # folder it was registered from: the same weights and seeds give the same replies, so ties too
    same = compare(cfg, project, model=model, a="v1", b="champion")
    assert same.identical and same.ties == same.comparisons == 8 and same.win_rate == 0.5 and same.a.kl == 0.0
    copy = compare(cfg, project, model=model, a=str(project.policies / "v1"), b="v1")
    assert not copy.identical and copy.ties == 8 and abs(copy.a.kl) < 1e-4


def test_compare_by_the_demo_judge_splits_the_score_difference_into_its_parts(project):
    from components.decide.compare import compare

    cfg = EvalConfig(judge="demo", max_new_tokens=6, samples_per_prompt=2, bootstrap_resamples=200, batch_size=8,
                     bf16=False)  # fmt: skip
    r = compare(cfg, project, model=ModelConfig(base="tiny"), a=str(project.policies / "v1"), b="base",
                demo_task=True, kl=False, reward_scores=False)  # fmt: skip
    w, a, b = r.judge_parts["weights"], r.judge_parts["a"], r.judge_parts["b"]
    assert set(w) == set(a) == set(b) >= {"sentiment", "topic", "finished"}
    # the judge score is the weighted sum of the parts, so the mean parts add up to each side's mean score
    assert sum(w[k] * a[k] for k in w) == pytest.approx(r.a.judge_score, abs=1e-4)
    assert sum(w[k] * b[k] for k in w) == pytest.approx(r.b.judge_score, abs=1e-4)
    assert json.loads(Path(r.json_path).read_text())["judge_parts"] == r.judge_parts
    assert "Judge score by part" in Path(r.report_path).read_text()


def test_rlhf_compare_prints_the_table_and_an_unknown_name_fails_naming_what_exists(project, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from components.decide.compare import CompareError, compare
    from rlhf_cli.main import app

    cfg = EvalConfig(judge="reward_model", max_new_tokens=4, samples_per_prompt=1, bootstrap_resamples=200, bf16=False)
    with pytest.raises(CompareError, match=r"'nope': not a model version.*champion, base.*base-tiny"):
        compare(cfg, project, model=ModelConfig(base="tiny"), a="nope", b="base")

    small = {"judge": "reward_model", "max_new_tokens": 4, "samples_per_prompt": 1, "bf16": False}
    params = {"model": {"base": "tiny"}, "reward": {"judge_fraction": FRACTION}, "eval": small}
    project.params.write_text(yaml.safe_dump(params))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    done = runner.invoke(app, ["--project", str(project.root), "compare", "champion", "base", "--no-kl", "--no-reward"])
    assert done.exit_code == 0, done.output
    assert "win rate of A by the judge (reward_model)" in done.output and "4 x 1 = 4" in done.output
    assert re.search(r"KL of A to B, nats/reply\s*\S\s*-\s", done.output), done.output  # --no-kl: not measured
    assert re.search(r"reward-model score A / B\s*\S\s*- / -\s", done.output), done.output  # --no-reward
    refused = runner.invoke(app, ["--project", str(project.root), "compare", "nope"])
    assert refused.exit_code == 2 and "champion, base" in refused.output
