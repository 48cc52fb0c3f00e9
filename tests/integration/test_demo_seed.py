"""Seeding the demo feedback with the tiny model: prompts copied, pairs labelled, validated, a DVC version."""

import dataclasses
import json

import pandas as pd
import pytest

from components.config.seeding import TINY_SEEDING
from components.data.feedback.store import data_version
from components.demo_task import load_prompts
from components.demo_task.seed import label_pairs, seed_demo_feedback
from components.project.scaffold import init_project


def test_label_pairs_takes_best_over_worst_and_skips_near_ties():
    prompt = "My order is late, where is my package?"
    good = "Sorry your package is late! Send me the order number and I will check it."
    bad = "No."
    frame, stats = label_pairs(
        [prompt, prompt], [[bad, good, "Okay then maybe"], ["Same reply.", "Same reply."]], TINY_SEEDING
    )
    assert len(frame) == 1 and stats["skipped_prompts"] == 1
    row = frame.iloc[0]
    assert (row.chosen, row.rejected, row.annotator, row.source) == (good, bad, "gold", "demo-seed")
    assert row.margin > TINY_SEEDING.min_gold_gap


def test_label_pairs_takes_disjoint_pairs_from_the_ends_of_the_ranking():
    from components.demo_task import gold

    prompt = "My order is late, where is my package?"
    replies = [
        "No.",
        "Sorry your package is late! Send me the order number and I will check it right away.",
        "Your package is late. Send the order number.",
        "I hate this stupid question about a package",
        "Sorry your package is late! Send me the order number and I will check it right away.",  # duplicate
    ]
    ranked = sorted(dict.fromkeys(replies), key=lambda r: -gold.score(prompt, r))
    cfg = dataclasses.replace(TINY_SEEDING, pairs_per_prompt=3)
    frame, stats = label_pairs([prompt], [replies], cfg)
    # 4 distinct replies make at most 2 disjoint pairs, whatever pairs_per_prompt asks
    assert list(zip(frame.chosen, frame.rejected)) == [(ranked[0], ranked[3]), (ranked[1], ranked[2])]
    assert frame.margin.iloc[0] > frame.margin.iloc[1] > 0
    assert stats["pairs"] == 2 and stats["skipped_prompts"] == 0
    # a gap threshold between the two margins keeps only the widest pair
    cut = dataclasses.replace(cfg, min_gold_gap=float(frame.margin.mean()))
    assert len(label_pairs([prompt], [replies], cut)[0]) == 1


def test_seed_demo_feedback_makes_a_dvc_version(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    paths = init_project(tmp_path / "proj")
    model, tok = tiny
    result = seed_demo_feedback(paths, TINY_SEEDING, model, tok, system="Be brief.", progress=None)
    train = [json.loads(x)["prompt"] for x in (paths.prompts / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x)["prompt"] for x in (paths.prompts / "heldout.jsonl").read_text().splitlines()]
    # the bundled prompts join the pool, split by hash; the seed prompts are pool train prompts, never held out
    assert len(train) + len(held) == len(load_prompts()) and 0 < len(held) < len(train)
    assert set(pd.read_parquet(paths.pairs).prompt) <= set(train)
    stats, ingest = result.stats, result.ingest
    assert stats["prompts"] == TINY_SEEDING.seed_prompts
    assert stats["replies"] == TINY_SEEDING.seed_prompts * TINY_SEEDING.replies_per_prompt
    assert stats["pairs"] + stats["skipped_prompts"] == stats["prompts"]  # one pair per prompt by default
    v = ingest.validation
    assert v.rows_in == stats["pairs"] == len(v.accepted) + len(v.quarantined)
    assert ingest.version is not None and ingest.version == data_version(paths)
    stored = pd.read_parquet(paths.feedback / "pairs.parquet") if len(v.accepted) else None
    if stored is not None:
        assert set(stored.annotator) == {"gold"} and (stored.margin > 0).all()


def test_seed_stages_sample_label_ingest_and_a_retry_never_resamples(tmp_path, monkeypatch):
    from dataclasses import asdict

    from components import stages
    from components.config.model import ModelConfig
    from components.config.validation import ValidationConfig

    monkeypatch.setenv("RLHF_DVC_REMOTE", str(tmp_path / "remote"))
    paths = init_project(tmp_path / "proj")
    model = ModelConfig(base="tiny")
    data = dataclasses.replace(TINY_SEEDING, seed_prompts=24)
    calls = []
    sample = stages.sample_seed(data, paths, model=model, progress=lambda d, t, n: calls.append((d, t)))
    assert not sample.reused and sample.replies == data.seed_prompts * data.replies_per_prompt
    assert calls[-1][0] == calls[-1][1] > 0  # progress reached its total
    labels = stages.label_seed(data, paths, sample=sample)
    ingest = stages.ingest_seed(ValidationConfig(), paths, labels=labels, push=False)
    assert ingest.rows_in == labels.pairs == ingest.accepted + ingest.quarantined
    assert ingest.version == data_version(paths) and not ingest.reused and ingest.accepted > 0
    for result in (sample, labels, ingest):
        json.dumps(asdict(result))  # the stage API's results are JSON-serialisable

    # a retry: the replies file is reused (nothing sampled: the base model is not even loaded) ...
    import components.models.base_model as base_model

    monkeypatch.setattr(base_model, "load_base", lambda *a, **k: pytest.fail("a retry sampled again"))
    again = stages.sample_seed(data, paths, model=model)
    assert again.reused and again.path == sample.path
    # ... and the same labels are not stored twice: same data version, same totals
    relabelled = stages.label_seed(data, paths, sample=again)
    retried = stages.ingest_seed(data, paths, labels=relabelled, push=False)
    assert retried.reused and retried.version == ingest.version == data_version(paths)
    assert len(pd.read_parquet(paths.pairs)) == ingest.totals["pairs"]
