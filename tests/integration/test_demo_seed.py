"""Seeding the demo feedback with the tiny model: prompts copied, pairs labelled, validated, a DVC version."""

import dataclasses
import json

import pandas as pd

from components.demo_task import load_prompts
from components.demo_task.seed import label_pairs, seed_demo_feedback
from components.feedback.config import TINY_DATA
from components.feedback.store import data_version
from components.project import init_project


def test_label_pairs_takes_best_over_worst_and_skips_near_ties():
    prompt = "My order is late, where is my package?"
    good = "Sorry your package is late! Send me the order number and I will check it."
    bad = "No."
    frame, stats = label_pairs(
        [prompt, prompt], [[bad, good, "Okay then maybe"], ["Same reply.", "Same reply."]], TINY_DATA
    )
    assert len(frame) == 1 and stats["skipped_prompts"] == 1
    row = frame.iloc[0]
    assert (row.chosen, row.rejected, row.annotator, row.source) == (good, bad, "gold", "demo-seed")
    assert row.margin > TINY_DATA.min_gold_gap


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
    cfg = dataclasses.replace(TINY_DATA, pairs_per_prompt=3)
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
    result = seed_demo_feedback(paths, TINY_DATA, model, tok, system="Be brief.", progress=None)
    train = [json.loads(x)["prompt"] for x in (paths.prompts / "train.jsonl").read_text().splitlines()]
    assert train == [p["prompt"] for p in load_prompts("train")]
    assert (paths.prompts / "heldout.jsonl").is_file()
    stats, ingest = result.stats, result.ingest
    assert stats["prompts"] == TINY_DATA.seed_prompts
    assert stats["replies"] == TINY_DATA.seed_prompts * TINY_DATA.replies_per_prompt
    assert stats["pairs"] + stats["skipped_prompts"] == stats["prompts"]  # one pair per prompt by default
    v = ingest.validation
    assert v.rows_in == stats["pairs"] == len(v.accepted) + len(v.quarantined)
    assert ingest.version is not None and ingest.version == data_version(paths)
    stored = pd.read_parquet(paths.feedback / "pairs.parquet") if len(v.accepted) else None
    if stored is not None:
        assert set(stored.annotator) == {"gold"} and (stored.margin > 0).all()
