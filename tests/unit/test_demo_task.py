"""The bundled demo prompts and the gold annotator (pure, fast)."""

import re

from components.demo_task import gold, load_prompts

PROMPT = "My package was supposed to arrive on Monday and it still hasn't shown up. What can I do?"


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z]+", text.lower()))


def test_unique_prompts_split_train_heldout_without_overlap():
    all_prompts = load_prompts()
    train, heldout = load_prompts("train"), load_prompts("heldout")
    texts = [p["prompt"] for p in all_prompts]
    assert len(texts) == 440 and len({_words(t) for t in texts}) == len(texts)  # no duplicate up to case/punctuation
    assert len(train) == 400 and len(heldout) == 40 and len(train) + len(heldout) == len(all_prompts)
    assert not {_words(p["prompt"]) for p in train} & {_words(p["prompt"]) for p in heldout}
    assert {p["topic"] for p in heldout} == {p["topic"] for p in train}  # every topic is held out too
    # the first 240 are the original set (every sixth held out); the 200 added later are all train prompts
    assert [p["split"] == "heldout" for p in all_prompts[:240]] == [i % 6 == 5 for i in range(240)]
    assert all(p["split"] == "train" for p in all_prompts[240:])


def test_gold_prefers_a_friendly_on_topic_concise_reply():
    good = "I'm sorry your package is late! Please send me your order number and I will check the delivery."
    rude = "That is a stupid question, just wait like everyone else."
    off_topic = "Our summer sale has great prices on garden furniture."
    rambling = " ".join(["Thank you for reaching out, we will look into the package delivery."] * 6)
    loop = "package late package late package late package late package late package late."
    s = {
        k: gold.score(PROMPT, v) for k, v in locals().items() if k in ("good", "rude", "off_topic", "rambling", "loop")
    }
    assert s["good"] == max(s.values())
    assert s["good"] > s["rude"] and s["good"] > s["off_topic"] and s["good"] > s["rambling"] and s["good"] > s["loop"]
    assert gold.score(PROMPT, "") == gold.EMPTY_SCORE == min(gold.score(PROMPT, x) for x in ("", "No."))


def test_gold_parts_are_bounded_and_deterministic():
    reply = "I'm sorry your package is late! Please send me your order number."
    parts = gold.explain(PROMPT, reply)
    assert -1 <= parts.sentiment <= 1 and 0 <= parts.topic <= 1 and parts.finished == 1.0
    assert parts.length_penalty == 0 and parts.repetition_penalty == 0
    expected = gold.W_SENTIMENT * parts.sentiment + parts.topic + gold.W_FINISHED
    assert abs(parts.total - expected) < 1e-5
    assert gold.explain(PROMPT, reply) == parts


def test_gold_rating_buckets_the_score():
    assert gold.rating(PROMPT, "") == 1
    good = "I'm sorry your package is late! Please send me your order number and I will check the delivery."
    assert gold.rating(PROMPT, good) >= 4
    assert all(1 <= gold.rating(PROMPT, r) <= 5 for r in ("No.", "Hello!", "package package package package"))


def test_each_phase_of_simulated_traffic_asks_other_training_prompts(tmp_path):
    from components.demo_task.seed import train_prompts
    from components.demo_task.traffic import traffic_prompts
    from components.project.paths import ProjectPaths

    paths = ProjectPaths(tmp_path)  # no params file: the default pool split
    pool = train_prompts(paths)
    first, second = traffic_prompts(paths, 96), traffic_prompts(paths, 96, skip=96)
    assert len(first) == len(second) == 96 and not set(first) & set(second)
    assert set(first) | set(second) <= set(pool)  # never a held-out prompt
    assert traffic_prompts(paths, 96) == first  # seeded: the same order every time
    # past the end of the pool the order starts again; never more prompts than the pool has
    assert traffic_prompts(paths, 10, skip=len(pool) - 5)[5:] == traffic_prompts(paths, 5)
    assert len(traffic_prompts(paths, len(pool) + 10)) == len(pool)
