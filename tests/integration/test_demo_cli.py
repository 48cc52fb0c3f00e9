"""`rlhf demo` end to end on the tiny model in a throwaway git + DVC project: seed -> validate -> version ->
reward model -> PPO -> evaluate -> gate -> promote, then `rlhf models`, `rlhf audit`, `rlhf rollback`."""

from __future__ import annotations

import json

import torch
import yaml
from typer.testing import CliRunner

from components import registry
from components.project import init_project
from rlhf_cli import main as cli
from rlhf_cli.main import app

TINY = {
    "model": {"base": "tiny", "seed": 0},
    "data": {"seed_prompts": 24, "replies_per_prompt": 2, "max_new_tokens": 8, "batch_size": 24},
    "reward": {"backbone": "tiny", "trainable": "all", "lr": 3e-3, "epochs": 1, "batch_size": 8, "max_length": 96},
    "ppo": {
        "steps": 2,
        "batch_size": 8,
        "mini_batch_size": 4,
        "micro_batch_size": 2,
        "max_new_tokens": 8,
        "save_every": 1,
        "lora": False,
        "bf16": False,
    },
    "eval": {"max_new_tokens": 8, "max_prompts": 12, "samples_per_prompt": 2, "bootstrap_resamples": 200},
    # the tiny random model babbles: a gate it can pass, so the promotion path runs (the failing gates are
    # tested one by one in test_registry_gate.py)
    "gate": {
        "min_win_rate": 0.0,
        "max_kl": 1e6,
        "max_degenerate_rate": 1.0,
        "min_reward_accuracy": 0.0,
        "block_overoptimisation": False,
    },
}


def test_demo_runs_the_loop_on_the_tiny_model(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    paths = init_project(tmp_path / "proj")
    params = yaml.safe_load(paths.params.read_text())
    for section, values in TINY.items():
        params[section].update(values)
    paths.params.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(paths.root)
    monkeypatch.setattr(cli.console, "width", 200)  # a wide terminal, so table cells are not folded
    runner = CliRunner()

    result = runner.invoke(app, ["demo", "--params", str(paths.params)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "held-out preference accuracy" in text
    assert "gold win rate of" in text and "95 % interval" in text
    assert "gate:" in text and "PASSED" in text
    assert (paths.feedback / "pairs.parquet").is_file()
    reward_manifest = json.loads((paths.reward_model / "manifest.json").read_text())

    # the registry: the base was the first champion and is now retired; the round-one policy is champion
    champ = registry.champion(paths)
    assert champ is not None and champ.version != "base-tiny" and champ.parent == "base-tiny"
    assert registry.get(paths, "base-tiny").status == "retired"
    assert (champ.path / "config.json").is_file() and (champ.path / "manifest.json").is_file()
    manifest = json.loads((champ.path / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2
    assert manifest["data_version"] == reward_manifest["data"]["data_version"] is not None
    assert manifest["reward_model"]["version"] == reward_manifest["version"] == champ.facts["reward_version"]
    ev = json.loads(paths.eval_metrics.read_text())
    assert ev["prompts"] == 12 and ev["samples_per_prompt"] == 2
    assert ev["wins"] + ev["ties"] + ev["losses"] == 24
    assert ev["win_rate_low"] <= ev["win_rate"] <= ev["win_rate_high"]
    assert ev["candidate"]["kl"] != 0.0  # full fine-tuning moved the policy away from the reference
    assert paths.eval_report.read_text().startswith("# Evaluation")

    # rlhf models: both versions with status and gate decision
    listed = runner.invoke(app, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    by_version = {m["version"]: m for m in json.loads(listed.output)}
    assert by_version["base-tiny"]["status"] == "retired"
    assert by_version[champ.version]["status"] == "champion"
    assert by_version[champ.version]["gate"]["passed"] is True
    assert by_version[reward_manifest["version"]]["kind"] == "reward_model"
    table = " ".join(runner.invoke(app, ["models"]).output.split())
    assert champ.version in table and "champion" in table and "passed" in table

    # rlhf audit: data, params, code, reward model and parent without opening a file
    audit = runner.invoke(app, ["audit", "--json"])
    assert audit.exit_code == 0, audit.output
    trail = json.loads(audit.output)
    assert [a["version"] for a in trail["ancestry"]] == [champ.version, "base-tiny"]
    assert trail["reward_model"]["version"] == reward_manifest["version"]
    assert trail["data_version"] == manifest["data_version"]
    assert trail["feedback"]["by_source"]["pairs"] == {"demo-seed": len_pairs(paths)}
    assert trail["params"]["ppo"]["steps"] == 2 and trail["code_revision"]
    words = " ".join(runner.invoke(app, ["audit"]).output.split())
    for needle in ("ancestry", "reward model", "data version", "demo-seed", "code revision", "params.ppo", "gate"):
        assert needle in words, needle

    # the evaluate DVC stage's command on the same project: the last export against the champion
    from components.evaluation import main as evaluate_main
    from components.ppo.train import exported_policy

    assert evaluate_main(["--params", str(paths.params)]) == 0
    ev = json.loads(paths.eval_metrics.read_text())
    assert ev["candidate"]["version"] == exported_policy(paths.root).name and ev["champion"]["version"] == champ.version

    import shutil
    from dataclasses import replace

    from components.params import load_params

    p = load_params(paths.params)
    strict = replace(p, gate=replace(p.gate, min_win_rate=1.0))  # a copy of the champion ties: 50 % < 100 %

    again = paths.policies / "20990101-000000-beef"
    shutil.copytree(exported_policy(paths.root), again)
    m = json.loads((again / "manifest.json").read_text())
    (again / "manifest.json").write_text(json.dumps({**m, "version": again.name, "parent": champ.version}))
    outcome = cli._evaluate_gate_promote(strict, paths, str(again))
    assert outcome.status == "rejected" and outcome.champion == champ.version
    assert registry.champion(paths).version == champ.version
    assert "gold win rate" in outcome.reasons[0] and "< minimum 100.0%" in outcome.reasons[0]

    # the strict gate's candidate is rejected and listed so
    assert by_status(runner, "rejected") == ["20990101-000000-beef"]
    refused = runner.invoke(app, ["rollback", "20990101-000000-beef"])
    assert refused.exit_code == 2 and "never champion" in refused.output

    # rollback to the base, then forward again
    back = runner.invoke(app, ["rollback", "base-tiny"])
    assert back.exit_code == 0, back.output
    assert registry.champion(paths).version == "base-tiny"
    assert registry.get(paths, champ.version).status == "retired"

    # a second run reuses the versioned seed feedback instead of sampling it again, and evaluates against the
    # champion of the moment (the base again)
    again = runner.invoke(app, ["demo", "--params", str(paths.params)])
    assert again.exit_code == 0, again.output
    assert "seed feedback already versioned" in again.output
    policies = registry.list_models(paths, "policy")
    assert len(policies) == 4 and sum(m.status == "champion" for m in policies) == 1
    assert len(list(paths.policies.iterdir())) == 3  # every version folder kept (two trained, one copied)


def len_pairs(paths) -> int:
    import pandas as pd

    return len(pd.read_parquet(paths.pairs))


def by_status(runner, status: str) -> list[str]:
    return [m["version"] for m in json.loads(runner.invoke(app, ["models", "--json"]).output) if m["status"] == status]
