"""PPO on the tiny model with real transformers/peft/accelerate: learning, resume (also after SIGKILL),
refusal, export, 2 processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.models.base_model import load_base
from components.models.policy.checkpoint import CheckpointError, latest_checkpoint
from components.models.policy.scorers import CountScorer, load_scorer
from components.models.policy.train import exported_policy, run

PROMPTS = [
    "My order is late.",
    "How do I reset my password?",
    "Can I get a refund?",
    "The app crashes when I log in.",
    "Where is my package?",
    "Thanks for the help!",
    "I was charged twice.",
    "How do I change my address?",
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model is too small for intra-op threads: on a busy 2-core machine they make it ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def project(tmp_path: Path, **ppo) -> dict:
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    base = {
        "prompts": "prompts.jsonl",
        "reward_model": "builtin:count:e",
        "batch_size": 8,
        "mini_batch_size": 4,
        "micro_batch_size": 2,
        "max_new_tokens": 8,
        "ppo_epochs": 2,
        "save_every": 2,
        "learning_rate": 1e-2,
    }
    return {"model": {"base": "tiny"}, "policy": {**base, **ppo}}


NOT_TIMING = ("time/", "charts/")


def numbers(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith(NOT_TIMING)} for m in metrics]


def test_known_reward_rises_while_kl_stays_bounded(tmp_path):
    # Reward: occurrences of "e" in the reply, capped at 4, so a bounded KL buys the whole reward.
    params = project(
        tmp_path,
        steps=10,
        batch_size=16,
        mini_batch_size=8,
        micro_batch_size=8,
        max_new_tokens=12,
        lora=False,
        init_kl_coef=0.1,
        kl_target=6.0,
        kl_horizon=64,
    )
    result = run(params, tmp_path, scorer=CountScorer("e", cap=4.0))
    scores = [m["objective/score"] for m in result.metrics]
    kls = [m["objective/kl"] for m in result.metrics]
    first, last = sum(scores[:2]) / 2, sum(scores[-3:]) / 3
    assert last > first + 1.0, f"mean reward did not rise clearly: {scores}"
    # KL is bounded: the capped reward stops paying, and the adaptive controller raised beta once KL > target.
    assert max(kls) < 25.0, f"KL ran away: {kls}"
    assert result.metrics[-1]["objective/kl_coef"] > 0.1, "adaptive controller did not react to KL above target"
    # exported folder is a normal transformers model that loads and has the manifest
    out = exported_policy(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base"] == "tiny" and manifest["metrics"]["steps"] == 10
    assert (tmp_path / "metrics" / "ppo_log.jsonl").read_text().count("\n") == 10
    assert (tmp_path / "metrics" / "ppo_score.png").stat().st_size > 0
    assert (tmp_path / "metrics" / "ppo_kl.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics" / "ppo.json").read_text())["steps"] == 10


def assert_export_differs_from_base(out: Path) -> None:
    """The exported policy folder loads and its logits differ from the tiny base's: training changed it."""
    policy, tok = load_base(str(out))
    base, _ = load_base("tiny")
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(policy(ids).logits, base(ids).logits), "training did not change the policy"


def test_lora_export_is_merged_and_differs_from_base(tmp_path):
    run(project(tmp_path, steps=2, lora=True, lora_r=4, lora_alpha=8), tmp_path)
    out = exported_policy(tmp_path)
    assert not (out / "adapter_config.json").exists(), "LoRA must be merged on export"
    assert_export_differs_from_base(out)


@pytest.fixture
def bf16_autocast(monkeypatch):
    """Force the trainer's CUDA setting, ``mixed_precision="bf16"``, onto the CPU accelerator (accelerate runs
    torch's CPU bf16 autocast), and reset accelerate's process-wide state before and after."""
    from accelerate.state import AcceleratorState

    import components.models.policy.model as trainer_module

    real = trainer_module.Accelerator
    monkeypatch.setattr(trainer_module, "Accelerator", lambda *a, **k: real(*a, **{**k, "mixed_precision": "bf16"}))
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("lora", [True, False])
def test_bf16_autocast_path_trains(tmp_path, bf16_autocast, lora):
    # What the GPU run does differently is bf16 autocast around rollout, forward and update; run it here.
    result = run(project(tmp_path, steps=2, lora=lora, lora_r=4, lora_alpha=8), tmp_path)
    assert result.accelerator.mixed_precision == "bf16"
    for m in result.metrics:
        bad = {k: v for k, v in m.items() if isinstance(v, float) and not torch.isfinite(torch.tensor(v))}
        assert not bad, f"non-finite metrics under bf16 autocast: {bad}"
    assert result.metrics[-1]["policy/approx_kl"] > 0.0, "the update did not move the policy"
    assert_export_differs_from_base(exported_policy(tmp_path))
    saved = load_file(str(exported_policy(tmp_path) / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}, "the export must keep full-precision weights"


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_resume_equals_uninterrupted(tmp_path, value_model):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    params = project(a, steps=4, lora=True, lora_r=4, lora_alpha=8, value_model=value_model)
    assert project(b, steps=4, lora=True, lora_r=4, lora_alpha=8, value_model=value_model) == params
    full = run(params, a, export=False)
    crashed = run(params, b, stop_after=2, export=False)  # dies after step 2 (checkpoint at 2)
    assert crashed.steps_run == 2 and len(crashed.metrics) == 2
    del crashed  # the process is gone: nothing of it survives but the checkpoint on disk
    resumed = run(params, b, resume=True, export=False)
    assert resumed.steps_run == 2
    want, got = numbers(full.metrics), numbers(resumed.metrics)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for w, g in zip(want, got):
        for k in w:
            assert g[k] == pytest.approx(w[k], abs=1e-6, rel=0), (k, w["step"])
    fa = {n: p for n, p in full.actor_critic.named_parameters() if p.requires_grad}
    fb = dict(resumed.actor_critic.named_parameters())
    assert all(torch.allclose(p, fb[n], atol=1e-6) for n, p in fa.items())
    lines = (b / "metrics" / "ppo_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]


def test_rollout_normalisation_scores_mean_0_std_1_on_the_initial_policy_and_survives_resume(tmp_path):
    """``reward_normalization: rollouts`` measures the scorer on the initial policy's samples at step 0 and
    feeds PPO (raw - mean) / std; a resumed run reads the statistics from the checkpoint instead of sampling."""
    from components.config import load_section
    from components.config.model import ModelConfig
    from components.config.policy import PolicyConfig
    from components.models.policy.loop import PolicyTrainer
    from components.project.paths import ProjectPaths

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    kw = {"steps": 4, "lora_r": 4, "lora_alpha": 8, "reward_normalization": "rollouts", "normalization_samples": 16}
    params = project(a, **kw)
    project(b, **kw)
    cfg, model_cfg = load_section(PolicyConfig, "policy", params), load_section(ModelConfig, "model", params)
    trainer = PolicyTrainer(cfg, model_cfg, CountScorer("e"), ProjectPaths(a))
    mean, std = trainer.rollout_score_stats()
    # the same seeded draw of prompts and replies, scored by hand
    again = PolicyTrainer(cfg, model_cfg, CountScorer("e"), ProjectPaths(a))
    rng = __import__("numpy").random.default_rng(again.seed + 7919)
    prompts = [again.all_prompts[i] for i in rng.choice(len(again.all_prompts), size=16, replace=True)]
    texts = again.rollout(prompts[:8]).texts + again.rollout(prompts[8:]).texts
    counts = torch.tensor([float(t.lower().count("e")) for t in texts])  # CountScorer ignores case
    assert mean == pytest.approx(counts.mean().item()) and std == pytest.approx(counts.std(unbiased=False).item())
    assert std > 0
    trainer.score_norm = (mean, std)
    batch = trainer.rollout(PROMPTS)
    raw, fed = trainer.score(batch)
    ended = batch.ended
    expected = (raw - mean) / std - torch.where(ended, 0.0, cfg.missing_eos_penalty)
    assert torch.allclose(fed, expected)

    full = run(params, a, export=False)
    run(params, b, stop_after=2, export=False)
    resumed = run(params, b, resume=True, export=False)
    for w, g in zip(numbers(full.metrics), numbers(resumed.metrics)):
        assert g["objective/score_penalised"] == pytest.approx(w["objective/score_penalised"], abs=1e-6)
    ckpt = torch.load(latest_checkpoint(b / "models" / "ppo-checkpoints") / "state.pt", weights_only=False)
    assert ckpt["score_norm"] is not None and len(ckpt["score_norm"]) == 2


def log_steps(path: Path) -> list[int]:
    """Steps in a ppo_log.jsonl, skipping a last line a kill cut short."""
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            steps.append(json.loads(line)["step"])
    return steps


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    params = project(a, steps=6, save_every=2, lora=True, lora_r=4, lora_alpha=8)
    assert project(b, steps=6, save_every=2, lora=True, lora_r=4, lora_alpha=8) == params
    run(params, a)  # uninterrupted (in this process, also one torch thread)

    (b / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "components.models.policy.train", "--params", str(b / "params.yaml"), "--root", str(b)]
    # OMP_NUM_THREADS=1: torch reads it at import, so the CLI runs on one thread like this process.
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ckpts, log = b / "models" / "ppo-checkpoints", b / "metrics" / "ppo_log.jsonl"
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=b, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            # Kill once step 3 is logged: the checkpoint is at step 2, the process is inside step 4.
            deadline = time.monotonic() + 120
            while proc.poll() is None and max(log_steps(log), default=0) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    killed_log = (tmp_path / "killed.log").read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{killed_log}"
    assert max(log_steps(log), default=0) >= 3, f"no step 3 within the time limit:\n{killed_log}"
    k = int(latest_checkpoint(ckpts).name.removeprefix("step_"))
    assert 2 <= k < 6, k
    logged_at_kill = log_steps(log)
    assert exported_policy(b) is None

    proc = subprocess.run([*cmd, "--resume"], cwd=b, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # It continued from the checkpoint and ran only the missing steps.
    assert re.search(rf"resumed from \S+step_{k:06d} at step {k}\b", proc.stderr), proc.stderr[-3000:]
    assert [int(s) for s in re.findall(r"ppo step (\d+)/6", proc.stderr)] == list(range(k + 1, 7))

    # Each step logged once (the killed run's rows after step k were dropped), same numbers as uninterrupted.
    assert log_steps(log) == [1, 2, 3, 4, 5, 6], f"log at kill time: {logged_at_kill}"
    want = numbers(json.loads(x) for x in (a / "metrics" / "ppo_log.jsonl").read_text().splitlines())
    got = numbers(json.loads(x) for x in log.read_text().splitlines())
    for w, g in zip(want, got, strict=True):
        assert g.keys() == w.keys()
        for key in w:
            assert g[key] == pytest.approx(w[key], abs=1e-6, rel=0), (key, w["step"])
    csv_steps = [line.split(",")[0] for line in (b / "metrics" / "ppo_log.csv").read_text().splitlines()[1:]]
    assert csv_steps == ["1", "2", "3", "4", "5", "6"]
    # The exported policy (LoRA merged) has the same weights.
    wa = load_file(exported_policy(a) / "model.safetensors")
    wb = load_file(exported_policy(b) / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name, tensor in wa.items():
        assert torch.allclose(wb[name], tensor, atol=1e-6, rtol=0), name
    assert json.loads((exported_policy(b) / "manifest.json").read_text())["metrics"]["steps"] == 6


def test_resume_without_a_checkpoint_starts_fresh_with_a_warning(tmp_path, caplog):
    params = project(tmp_path, steps=1, lora=True, lora_r=4, lora_alpha=8)
    stale = tmp_path / "models" / "ppo-checkpoints" / ".tmp_step_000001"  # a run killed in its first save
    stale.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="components.models.policy.loop"):
        result = run(params, tmp_path, resume=True, export=False)
    assert "--resume: no complete checkpoint under" in caplog.text
    assert result.steps_run == 1
    assert log_steps(tmp_path / "metrics" / "ppo_log.jsonl") == [1]
    assert not stale.exists()
    assert latest_checkpoint(tmp_path / "models" / "ppo-checkpoints").name == "step_000001"


def test_resume_with_different_params_is_refused(tmp_path):
    run(project(tmp_path, steps=4, lora=True, lora_r=4, lora_alpha=8), tmp_path, stop_after=2, export=False)
    changed = project(tmp_path, steps=4, lora=True, lora_r=4, lora_alpha=8, learning_rate=5e-3)
    with pytest.raises(CheckpointError, match="different params"):
        run(changed, tmp_path, resume=True, export=False)
    # operational fields (where files go, how often) do not block a resume
    run(project(tmp_path, steps=4, lora=True, lora_r=4, lora_alpha=8, save_every=1), tmp_path, resume=True)


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward model"):
        load_scorer(tmp_path / "no-such-reward-model")
    with pytest.raises(ValueError, match="top_k=0"):
        run(project(tmp_path, top_k=50), tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    params = project(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:2"):
        run(params, tmp_path, scorer=CountScorer("e"))


# Two processes: stop after step 1 (the checkpoint keeps one RNG state per rank), keep a copy of it (a finished
# run clears its checkpoints), then resume to the end and export.
TWO_PROCESS_DRILL = """
import shutil, sys
from pathlib import Path
from components.models.policy.train import run
root = Path.cwd()
run(root / "params.yaml", root, stop_after=1)
if int(__import__("os").environ.get("RANK", "0")) == 0:
    shutil.copytree(root / "models" / "ppo-checkpoints", root / "kept-checkpoints")
run(root / "params.yaml", root, resume=True)
"""


def test_two_processes_with_accelerate_launch(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed next to this python")
    params = project(
        tmp_path, steps=2, save_every=1, lora=True, lora_r=4, lora_alpha=8, batch_size=4, micro_batch_size=2
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "drill.py").write_text(TWO_PROCESS_DRILL)
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",  # accelerate's torchrun launcher; with no GPU the processes use CPU + gloo
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(tmp_path / "drill.py"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if torch.cuda.device_count() < 2:  # two processes on one GPU is refused by NCCL ("Duplicate GPU"): use CPU + gloo
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((exported_policy(tmp_path) / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["resumed_from_step"] == 1
    rows = [json.loads(x) for x in (tmp_path / "metrics" / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert not list((tmp_path / "models" / "ppo-checkpoints").glob("step_*")), "a finished run clears its checkpoints"
    ckpt = sorted((tmp_path / "kept-checkpoints").glob("step_*"))[-1]
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file()
    r0, r1 = (torch.load(ckpt / f"rng_rank{r}.pt", weights_only=False)["torch"] for r in (0, 1))
    assert not torch.equal(r0, r1), "each process must have its own seed"
    shutil.rmtree(tmp_path / "models")


def test_scorer_and_policy_sit_on_the_accelerators_device(tmp_path):
    """The reward model used to stay on the CPU whatever the trainer's device; it now follows the policy."""
    from components.config import load_section
    from components.config.model import ModelConfig
    from components.config.policy import PolicyConfig
    from components.models.policy.loop import PolicyTrainer
    from components.project.paths import ProjectPaths

    class Spy(CountScorer):
        device = None

        def to(self, device):
            self.device = torch.device(device)
            return self

    params = project(tmp_path, steps=1)
    spy = Spy("e")
    cfg = load_section(PolicyConfig, "policy", params)
    trainer = PolicyTrainer(cfg, ModelConfig(base="tiny"), spy, ProjectPaths(tmp_path))
    assert spy.device == trainer.acc.device
    assert next(trainer.unwrapped.parameters()).device.type == trainer.acc.device.type


def test_policy_versions_are_new_folders_never_replaced(tmp_path):
    first = run(project(tmp_path, steps=1, save_every=1), tmp_path).export_dir
    second = run(project(tmp_path, steps=1, save_every=1), tmp_path).export_dir
    assert first != second and first.parent == second.parent == tmp_path / "models" / "policy"
    assert (first / "model.safetensors").is_file() and (second / "model.safetensors").is_file()
    assert exported_policy(tmp_path) == second
    m = json.loads((second / "manifest.json").read_text())
    assert m["version"] == second.name and m["parent"] == "base-tiny"
    assert {"data_version", "reward_model", "code_revision", "params"} <= set(m)


def test_after_a_promotion_ppo_starts_from_the_champion_and_dvc_reruns_it(tmp_path):
    """policy.init_from: champion. registry/ppo_parent.json is a dep of the ppo stage: promoting a policy leaves
    the pipeline up to date; pointing the file at the new champion (the flow's step before training) makes
    `dvc status` report the stage changed; the next run starts from the champion's weights (step 0) and records
    it as parent and KL reference."""
    from components.models.base_model import resolve_model_dir
    from components.project.scaffold import init_project, pipeline_template
    from components.records import registry
    from components.records.code_fingerprint import write_code_fingerprint

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["base"] = "tiny"
    params["policy"].update({**project(tmp_path)["policy"], "prompts": "data/prompts/train.jsonl", "steps": 1})
    params["policy"].update({"save_every": 1, "bf16": False, "algorithm": "ppo"})  # the demo trains with DPO
    (tmp_path / "params-src.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    paths = init_project(tmp_path / "p", params=tmp_path / "params-src.yaml")
    root = paths.root
    (root / "dvc.yaml").write_text(pipeline_template())
    shutil.copytree(REPO / "components", root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "data" / "prompts").mkdir(parents=True)
    (root / "data" / "prompts" / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "models" / "reward").mkdir(parents=True)  # a dep of the stage; this run scores with a built-in
    (root / "models" / "reward" / "unused.txt").write_text("builtin scorer\n")
    base = registry.ensure_base_champion(paths, "tiny", resolve_model_dir("tiny"))
    registry.write_ppo_parent(paths)
    assert json.loads(registry.pointer_path(paths).read_text())["version"] == base.version == "base-tiny"

    # round one from the base (the champion is the base), recorded in dvc.lock as the ppo stage
    first = run(paths.params, root).export_dir
    assert json.loads((first / "manifest.json").read_text())["parent"] == "base-tiny"
    dvc = [sys.executable, "-m", "dvc"]
    write_code_fingerprint(root)  # the stages' code, as the tool writes it before every DVC command
    subprocess.run([*dvc, "commit", "--force", "ppo"], cwd=root, check=True, capture_output=True)

    def ppo_status() -> str:
        done = subprocess.run([*dvc, "status", "ppo"], cwd=root, check=True, capture_output=True, text=True)
        return done.stdout

    assert "changed" not in ppo_status()

    # promote it: the pipeline stays up to date until the next round points PPO at the new champion
    registry.register(paths, first.name, first, parent="base-tiny")
    registry.promote(paths, first.name)
    champ = registry.champion(paths)
    assert "changed" not in ppo_status()
    registry.write_ppo_parent(paths)
    assert json.loads(registry.pointer_path(paths).read_text()) == {"version": first.name, "path": str(champ.path)}
    assert "registry/ppo_parent.json" in ppo_status()

    # the next run starts from the champion's weights: before any step the policy equals the champion
    start = run(paths.params, root, stop_after=0, export=False)
    start_weights = start.actor_critic.policy.merge_and_unload().state_dict()
    champion_weights = load_file(champ.path / "model.safetensors")
    base_weights, _ = load_base("tiny")
    assert all(torch.equal(start_weights[k], v) for k, v in champion_weights.items())
    assert any(not torch.equal(base_weights.state_dict()[k], v) for k, v in champion_weights.items())

    second = run(paths.params, root).export_dir
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["parent"] == first.name and manifest["base_dir"] == str(champ.path)
    assert manifest["base"] == "tiny" and manifest["init_from"] == "champion"


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_forward_passes_in_parts_equal_one_pass_over_the_batch(tmp_path, value_model):
    """forward_batch_size only splits step 2's no-grad passes: reference log-probs (and, with a separate value
    trunk, the policy's log-probs, values and entropy) equal those of one pass over the whole batch."""
    import copy
    import dataclasses

    from components.config import load_section
    from components.config.model import ModelConfig
    from components.config.policy import PolicyConfig
    from components.models.policy.loop import PolicyTrainer
    from components.project.paths import ProjectPaths

    params = project(tmp_path, steps=1, value_model=value_model, bf16=False)
    cfg, model_cfg = load_section(PolicyConfig, "policy", params), load_section(ModelConfig, "model", params)
    trainer = PolicyTrainer(cfg, model_cfg, CountScorer("e"), ProjectPaths(tmp_path))
    whole = trainer.rollout(PROMPTS[:7])  # 7 replies: parts of 3 leave a remainder of 1
    parts = copy.deepcopy(whole)
    trainer.forward_batch(whole)
    trainer.cfg = dataclasses.replace(cfg, forward_batch_size=3)
    trainer.forward_batch(parts)
    for name in ("logp", "ref_logp", "values", "entropy"):
        a, b = getattr(whole, name), getattr(parts, name)
        assert a.shape == b.shape == whole.response_ids.shape
        assert torch.allclose(a, b, atol=1e-5), name
    with pytest.raises(ValueError, match="forward_batch_size"):
        dataclasses.replace(cfg, forward_batch_size=0)
