"""Seeding with the real default model: the gold annotator's chosen replies beat the rejected ones."""

import dataclasses

import pytest

from components.config.seeding import SeedingConfig
from components.data.feedback.store import load
from components.demo_task import gold
from components.demo_task.seed import seed_demo_feedback
from components.models.base_model import load_base
from components.project.scaffold import init_project


@pytest.mark.slow
def test_seed_with_smollm2_makes_gold_ranked_pairs(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    paths = init_project(tmp_path / "proj")
    model, tok = load_base("smollm2-135m-instruct")
    cfg = dataclasses.replace(SeedingConfig(), seed_prompts=4, replies_per_prompt=2, max_new_tokens=24, batch_size=8)
    result = seed_demo_feedback(paths, cfg, model, tok, system="Answer briefly.", progress=None)
    pairs = load(paths, "pairs")
    assert result.ingest.version and len(pairs) == result.stats["pairs"] >= 1
    for row in pairs.itertuples():
        assert gold.score(row.prompt, row.chosen) > gold.score(row.prompt, row.rejected)
        assert row.margin == pytest.approx(gold.score(row.prompt, row.chosen) - gold.score(row.prompt, row.rejected))
