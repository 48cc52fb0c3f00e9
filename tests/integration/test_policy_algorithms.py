"""Every policy optimiser (``policy.algorithm``) on the tiny model: trains (weights change), exports a policy version
that records its algorithm, is evaluated against the champion and reaches a gate decision the registry records;
RLOO and DPO resume to the uninterrupted result; the scored optimisers raise a known reward."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from components.config.evaluation import EvalConfig
from components.config.gate import GateConfig
from components.config.model import ModelConfig
from components.config.reward import RewardConfig
from components.data.feedback.io import write_parquet
from components.data.feedback.schema import PAIRS, conform
from components.decide.evaluation import evaluate
from components.decide.gate import gate
from components.models.policy.scorers import CountScorer
from components.models.policy.train import exported_policy, run
from components.models.reward.trainer import train_reward
from components.project.paths import ProjectPaths
from components.records import registry
from tests.tiny_params import TINY_REWARD

ALGORITHMS = ["ppo", "rloo", "grpo", "dpo", "online_dpo", "bon_sft"]
WORDS = ["order", "refund", "password", "package", "billing", "account", "status", "help"]
PROMPTS = [f"My {w} is a problem, can you help?" for w in WORDS]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model is too small for intra-op threads: on a busy 2-core machine they make it ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_pairs(n: int = 32, seed: int = 0) -> pd.DataFrame:
    """Chosen replies say "thanks"; rejected ones say something else in its place."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, 4)
        rows.append(
            {
                "prompt": PROMPTS[i % len(PROMPTS)],
                "chosen": " ".join([*words[:2], "thanks", *words[2:]]),
                "rejected": " ".join([*words[:2], rng.choice(["sorry", "okay"]), *words[2:]]),
                "source": "toy",
                "annotator": "toy",
                "created_at": pd.Timestamp("2026-12-01", tz="UTC"),
                "margin": None,
                "chosen_id": None,
                "rejected_id": None,
            }
        )
    return conform(pd.DataFrame(rows), PAIRS)


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory) -> Path:
    """Prompts (train and held-out), the versioned pairs and a tiny reward model trained on them, built once."""
    root = tmp_path_factory.mktemp("policy-project")
    paths = ProjectPaths(root)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "heldout.jsonl").write_text("".join(json.dumps({"prompt": p + " Thanks."}) + "\n" for p in PROMPTS[:4]))
    write_parquet(toy_pairs(), paths.pairs, PAIRS)
    cfg = RewardConfig(**{**TINY_REWARD, "eval_fraction": 0.25})
    train_reward(paths.pairs, cfg, root / "models" / "reward", root / "metrics", project_root=root)
    return root


def policy_params(algorithm: str, **overrides: object) -> dict:
    ppo = {
        "algorithm": algorithm,
        "prompts": "prompts.jsonl",
        "reward_model": "models/reward",
        "steps": 2,
        "batch_size": 8,
        "mini_batch_size": 4,
        "micro_batch_size": 4,
        "max_new_tokens": 8,
        "save_every": 2,
        "learning_rate": 1e-2,
        "lora_r": 4,
        "lora_alpha": 8,
        "bf16": False,
        "dpo": {"max_reply_tokens": 12},
        **overrides,
    }
    return {"model": {"base": "tiny"}, "policy": ppo}


def assert_export_equals_base(out: Path) -> None:
    from components.models.base_model import load_base

    policy, tok = load_base(str(out))
    base, _ = load_base("tiny")
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(policy(ids).logits, base(ids).logits, atol=1e-5), "the export is not the parent"


def assert_export_differs_from_base(out: Path) -> None:
    from components.models.base_model import load_base

    policy, tok = load_base(str(out))
    base, _ = load_base("tiny")
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(policy(ids).logits, base(ids).logits), "training did not change the policy"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_trains_exports_evaluates_and_reaches_a_gate_decision(trained_project, tmp_path, algorithm):
    root = tmp_path / "p"
    shutil.copytree(trained_project, root)
    paths = ProjectPaths(root)
    result = run(policy_params(algorithm), root)
    out = result.export_dir
    assert out is not None and exported_policy(root) == out
    assert_export_differs_from_base(out)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["algorithm"] == algorithm and manifest["params"]["policy"]["algorithm"] == algorithm
    own = manifest["algorithm_params"]
    assert ("ppo_epochs" in own) if algorithm == "ppo" else (own == manifest["params"]["policy"][algorithm])
    assert manifest["reward_model"]["spec"] == "models/reward"
    assert manifest["reward_model"].get("in_loop", True) is (algorithm != "dpo")
    rows = [json.loads(x) for x in (root / "metrics" / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["policy/minibatches"] >= 1, r
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not torch.isfinite(torch.tensor(v))}
        assert not bad, f"non-finite metrics: {bad}"
    assert ("objective/score" in rows[0]) is (algorithm != "dpo")
    assert (root / "metrics" / "ppo_score.png").stat().st_size > 0

    eval_cfg = EvalConfig(prompts="heldout.jsonl", samples_per_prompt=1, max_new_tokens=8, bootstrap_resamples=100)
    evaluation = evaluate(eval_cfg, paths, model=ModelConfig(base="tiny"), candidate=out, demo_task=True)
    decision = gate(GateConfig(), paths, evaluation=evaluation)
    assert decision.checks, "the gate decided nothing"
    promoted = registry.register_and_decide(paths, policy=out, evaluation=evaluation, gate=decision)
    assert promoted.status == ("champion" if decision.passed else "rejected")
    record = registry.get(paths, promoted.version)
    assert record.facts["algorithm"] == algorithm and record.facts["algorithm_params"] == own


@pytest.mark.parametrize("algorithm", ["rloo", "dpo"])
def test_resume_equals_uninterrupted(trained_project, tmp_path, algorithm):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(trained_project, a)
    shutil.copytree(trained_project, b)
    params = policy_params(algorithm, steps=4, rloo={"epochs": 2})
    full = run(params, a, export=False)
    crashed = run(params, b, stop_after=2, export=False)
    assert crashed.steps_run == 2
    del crashed
    resumed = run(params, b, resume=True, export=False)
    assert resumed.steps_run == 2 and [m["step"] for m in resumed.metrics] == [1, 2, 3, 4]
    for w, g in zip(full.metrics, resumed.metrics, strict=True):
        for k, v in w.items():
            if not k.startswith(("time/", "charts/")):
                assert g[k] == pytest.approx(v, abs=1e-6, rel=0), (k, w["step"])


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "online_dpo", "bon_sft"])
def test_known_reward_rises(tmp_path, algorithm):
    """Reward: occurrences of "e" in the reply (capped): each scored optimiser raises it within a few steps."""
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    params = policy_params(
        algorithm,
        reward_model="builtin:count:e",
        steps=8,
        batch_size=16,
        mini_batch_size=8,
        micro_batch_size=8,
        max_new_tokens=12,
        lora=False,
        init_kl_coef=0.05,
        adaptive_kl=False,
        **{algorithm: {"max_kl": None}},  # the optimiser alone: full fine-tuning of the tiny model leaves 4 nats fast
    )
    result = run(params, tmp_path, scorer=CountScorer("e", cap=4.0), export=False)
    scores = [m["objective/score"] for m in result.metrics]
    first, last = sum(scores[:2]) / 2, sum(scores[-2:]) / 2
    assert last > first + 0.5, f"{algorithm}: mean reward did not rise: {scores}"


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "online_dpo", "bon_sft"])
def test_online_optimisers_stop_at_their_kl_bound(tmp_path, algorithm):
    """With ``<algorithm>.max_kl``, the KL of a step's own batch (measured before its update) beyond the bound
    stops training: that step makes no update, no further step runs, also when resumed, the policy goes back to
    its weights at the last measurement within the bound (here step 1's batch: the parent), and the stop reaches
    the metrics and the manifest. Without a bound every step runs, the first one as with it."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b, tmp_path / "c"):
        root.mkdir()
        (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    # online DPO's 4 pairs a step move the tiny policy too little with the defaults to show a KL on 8 samples
    push = algorithm == "online_dpo"
    scored = {
        "reward_model": "builtin:count:e",
        "steps": 3,
        "max_new_tokens": 6,
        "learning_rate": 0.05 if push else 1e-2,
    }

    def params(max_kl: float | None, **more: object) -> dict:
        own = {"max_kl": max_kl, **({"beta": 1.0} if push else {})}
        return policy_params(algorithm, **scored, **more, **{algorithm: own})

    bounded = run(params(1e-3), a, export=False)
    rows = bounded.metrics
    # step 1 samples the parent (KL 0) and trains; step 2's batch, from the trained policy, is beyond 1e-3 nats
    assert [r["step"] for r in rows] == [1, 2] and [r["kl_bound/stopped"] for r in rows] == [0.0, 1.0]
    assert rows[0]["policy/minibatches"] >= 1 and rows[1]["policy/minibatches"] == 0
    # the batch measured exactly (the same mean as its k1 reading, objective/kl; never negative)
    assert rows[1]["kl_bound/sampled_kl"] == rows[1]["objective/kl_exact"] > 1e-3
    assert all(r["objective/kl_exact"] >= 0 for r in rows)
    # the parent's own batch measured at step 1 (KL 0 up to float rounding)
    assert rows[1]["kl_bound/kept_step"] == 0.0 and rows[1]["kl_bound/kept_kl"] == rows[0]["kl_bound/sampled_kl"]
    weights = {n: p.detach().clone() for n, p in bounded.actor_critic.named_parameters() if p.requires_grad}

    again = run(params(1e-3), a, resume=True)
    assert again.steps_run == 0 and again.export_dir is not None  # the checkpoint at the stop: no further step
    summary = json.loads((a / "metrics" / "ppo.json").read_text())
    assert summary["stopped_at_step"] == 2 and summary["kl_at_stop"] == rows[1]["kl_bound/sampled_kl"]
    assert summary["exported_step"] == 0 and summary["exported_kl"] == rows[0]["kl_bound/sampled_kl"] < 1e-5
    manifest = json.loads((again.export_dir / "manifest.json").read_text())["metrics"]
    assert manifest["stopped_at_step"] == 2 and manifest["exported_step"] == 0

    free = params(None, save_every=1)
    parent = dict(run(free, tmp_path / "c", stop_after=0, export=False).actor_critic.named_parameters())
    first = run(free, b, stop_after=1, export=False)
    assert first.metrics[0]["loss/policy"] == rows[0]["loss/policy"]
    after_1 = dict(first.actor_critic.named_parameters())
    for n, p in again.actor_critic.named_parameters():  # back to the parent, and the resume changed nothing
        if p.requires_grad:
            assert torch.equal(weights[n], p) and torch.equal(parent[n], p), n
    assert any(not torch.equal(after_1[n], p) for n, p in parent.items() if p.requires_grad)  # step 1 trained
    rest = run(free, b, resume=True, export=False).metrics
    assert [r["step"] for r in rest] == [1, 2, 3] and "kl_bound/stopped" not in rest[-1]


def test_an_online_optimisers_last_update_is_measured_too(tmp_path):
    """No batch follows the last step, so after it the policy samples replies of its own to measure the bound: here
    the one step's batch (the parent's samples) is within it and the trained policy's samples are not, so the policy
    goes back to the parent's weights; without a bound the same step trains and stays."""
    for root in (tmp_path / "a", tmp_path / "b"):
        root.mkdir()
        (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    scored = {"reward_model": "builtin:count:e", "steps": 1, "max_new_tokens": 6, "save_every": 1}

    def params(max_kl: float | None) -> dict:
        return policy_params("grpo", **scored, grpo={"max_kl": max_kl})

    bounded = run(params(1e-3), tmp_path / "a", export=False)
    (row,) = bounded.metrics
    assert row["objective/kl"] <= 1e-3 < row["kl_bound/sampled_kl"] and row["kl_bound/stopped"] == 1.0
    assert row["kl_bound/kept_step"] == 0 and row["policy/minibatches"] >= 1  # the step trained, then was undone
    free = run(params(None), tmp_path / "b", export=False)
    parent = dict(run(params(None), tmp_path / "b", stop_after=0, export=False).actor_critic.named_parameters())
    trained = dict(free.actor_critic.named_parameters())
    for n, p in bounded.actor_critic.named_parameters():
        if p.requires_grad:
            assert torch.equal(parent[n], p), n
    assert any(not torch.equal(trained[n], p) for n, p in parent.items() if p.requires_grad)


def test_offline_dpo_without_the_no_grad_policy_pass_trains_the_same(trained_project, tmp_path, monkeypatch):
    """Offline DPO's loss reads the fresh and the reference log-probs only, so the loop skips the no-grad policy
    pass and logs KL and entropy from the update's first pass: same losses, same weights, and (one minibatch a
    step: that pass sees the policy before the step's update) the same logged KL and entropy."""
    from components.models.policy.algorithms import DPO

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(trained_project, a)
    shutil.copytree(trained_project, b)
    params = policy_params("dpo", steps=3, mini_batch_size=8, micro_batch_size=4)
    fast = run(params, a, export=False)
    monkeypatch.setattr(DPO, "needs_old_logp", True)  # the policy's own no-grad pass before the update, as PPO has
    full = run(params, b, export=False)
    for f, g in zip(fast.metrics, full.metrics, strict=True):
        assert f["loss/policy"] == g["loss/policy"] and f["dpo/margin"] == g["dpo/margin"], f["step"]
        assert f["objective/kl"] == pytest.approx(g["objective/kl"], abs=1e-5)
        assert f["objective/entropy"] == pytest.approx(g["objective/entropy"], abs=1e-5)
    assert fast.metrics[-1]["objective/kl"] != 0.0  # the policy moved, and the KL says so
    trained = dict(fast.actor_critic.named_parameters())
    for name, p in full.actor_critic.named_parameters():
        if p.requires_grad:
            assert torch.equal(trained[name], p), name


def test_the_step_log_line_shows_only_what_the_algorithm_logs(caplog):
    from components.models.policy.loop import _progress

    dpo = {"step": 3, "objective/kl": 1.5, "objective/kl_coef": 0.1, "loss/policy": 0.6, "dpo/accuracy": 0.75}
    ppo = {**dpo, "objective/score": 0.25, "policy/approx_kl": 0.01}
    with caplog.at_level("INFO", logger="components.models.policy.loop"):
        for row in (dpo, ppo):
            _progress("x", 16, True)({**row, "charts/samples_per_s": 2.0})
    dpo_line, ppo_line = (r.getMessage() for r in caplog.records)
    assert "nan" not in dpo_line and "score" not in dpo_line and "approx_kl" not in dpo_line
    assert "accuracy 0.75" in dpo_line and "kl 1.500" in dpo_line
    assert "score 0.250" in ppo_line and "approx_kl 0.0100" in ppo_line


def test_offline_dpo_stops_at_its_kl_bound(trained_project, tmp_path):
    """With ``dpo.max_kl``, the KL measured on the policy's own samples every ``kl_every`` steps stops training
    once beyond the bound: no further step, also when resumed; the policy goes back to its weights at the last
    measurement within the bound (here the start: the parent) and is exported with where it stopped. The
    measurement leaves the training's numbers alone; without a bound every step runs."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(trained_project, a)
    shutil.copytree(trained_project, b)
    leash = {"max_reply_tokens": 12, "max_kl": 1e-3, "kl_every": 2, "kl_prompts": 8}
    bounded = run(policy_params("dpo", steps=4, dpo=leash), a, export=False)
    rows = bounded.metrics
    assert [r["step"] for r in rows] == [1, 2] and [r["kl_bound/stopped"] for r in rows] == [0.0, 1.0]
    assert rows[0]["kl_bound/sampled_kl"] == 0.0 and rows[1]["kl_bound/sampled_kl"] > 1e-3
    weights = {n: p.detach().clone() for n, p in bounded.actor_critic.named_parameters() if p.requires_grad}

    again = run(policy_params("dpo", steps=4, dpo=leash), a, resume=True)  # continues from the stop: no step
    assert again.steps_run == 0 and again.export_dir is not None
    for n, p in again.actor_critic.named_parameters():
        if p.requires_grad:
            assert torch.equal(weights[n], p), n
    summary = json.loads((a / "metrics" / "ppo.json").read_text())
    assert summary["stopped_at_step"] == 2 and summary["kl_at_stop"] == rows[1]["kl_bound/sampled_kl"]
    assert summary["exported_step"] == 0 and summary["exported_kl"] == 0.0
    assert json.loads((again.export_dir / "manifest.json").read_text())["metrics"]["stopped_at_step"] == 2
    assert_export_equals_base(again.export_dir)

    free = run(policy_params("dpo", steps=4, dpo={"max_reply_tokens": 12, "max_kl": None}), b, export=False).metrics
    assert [r["step"] for r in free] == [1, 2, 3, 4] and "kl_bound/stopped" not in free[-1]
    for f, g in zip(free[:2], rows, strict=False):
        assert f["loss/policy"] == g["loss/policy"] and f["objective/kl"] == g["objective/kl"]


def test_offline_dpo_goes_back_to_its_last_step_within_the_bound(trained_project, tmp_path, monkeypatch):
    """Measurements within the bound after steps 2 and 4, beyond it after step 6: training stops at 6 and the
    policy is the one after step 4, weight for weight as a run stopped there; a run killed after step 5 (no
    measurement there, so the kept weights are not the checkpoint's own) and resumed goes back to the same
    weights. The measured KLs are scripted by step (the tiny policy's KL on 8 samples does not grow steadily);
    training, checkpoints and weights are the real ones, compared with an unbounded run's."""
    from components.models.policy.loop import PolicyTrainer

    script = {2: 0.25, 4: 0.5, 6: 2.0}
    monkeypatch.setattr(PolicyTrainer, "sampled_kl", lambda self, n: script[self.step])
    dirs = [tmp_path / x for x in "abc"]
    for d in dirs:
        shutil.copytree(trained_project, d)
    a, b, c = dirs
    leash = {"max_reply_tokens": 12, "max_kl": 1.0, "kl_every": 2, "kl_prompts": 8}
    params = policy_params("dpo", steps=8, save_every=1, dpo=leash)

    bounded = run(params, a, export=False)
    last = bounded.metrics[-1]
    assert [r["step"] for r in bounded.metrics] == [1, 2, 3, 4, 5, 6] and last["kl_bound/stopped"] == 1.0
    assert last["kl_bound/sampled_kl"] == 2.0 and last["kl_bound/kept_step"] == 4 and last["kl_bound/kept_kl"] == 0.5
    weights = {n: p.detach().clone() for n, p in bounded.actor_critic.named_parameters() if p.requires_grad}
    free = policy_params("dpo", steps=8, save_every=1, dpo={**leash, "max_kl": None})  # measurements leave it alone
    after_4 = dict(run(free, b, stop_after=4, export=False).actor_critic.named_parameters())
    after_6 = dict(run(free, b, resume=True, stop_after=2, export=False).actor_critic.named_parameters())
    for n, p in weights.items():
        assert torch.equal(after_4[n], p), n
    assert any(not torch.equal(after_6[n], p) for n, p in weights.items())  # steps 5 and 6 trained: undone

    run(params, c, stop_after=5, export=False)  # killed after step 5
    resumed = run(params, c, resume=True, export=False)
    assert resumed.steps_run == 1 and resumed.metrics[-1]["kl_bound/kept_step"] == 4
    for n, p in resumed.actor_critic.named_parameters():
        if p.requires_grad:
            assert torch.equal(weights[n], p), n
