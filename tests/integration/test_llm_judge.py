"""The ``llm`` judge against a real ``bentoml serve`` of this project's service (its OpenAI-compatible
``/v1/chat/completions``), no mocks:

- a tiny model trained for a few seconds to answer the judge template with ``[[A]]`` / ``[[B]]`` for the better /
  worse of two fixed replies: the judge decides, in both orders, and a rerun is answered from the cache (the
  server's served-output store counts the requests it answered);
- the session's random tiny model: junk answers fail with a message naming the URL;
- a closed port: unreachable, the message names the URL.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from components.data.served_store import open_store
from components.decide.judges import Comparison, JudgeError, LLMJudgeConfig, make_judge
from tests.serving.server import free_port, make_project, start_server

PROMPT = "my parcel is late"
GOOD, BAD = "Sorry for the wait, it ships today.", "no"


def train_tiny_judge(folder: Path) -> Path:
    """The tiny model taught to say ``[[A]]`` when reply A is GOOD and ``[[B]]`` when reply B is (seconds)."""
    import torch

    from components.decide.judges.llm import Template, parse_choice
    from components.models.base_model import build_tiny
    from components.models.generation import encode_chat

    model, tok = build_tiny(seed=0)
    template = Template.load("pairwise-v1")
    rows = []
    for a, b, answer in ((GOOD, BAD, "[[A]]"), (BAD, GOOD, "[[B]]")):
        ids = encode_chat(tok, template.messages(PROMPT, a, b))
        rows.append((ids, tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], answer[2]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than contending threads for a model this small
    try:
        for step in range(600):
            loss = sum(
                torch.nn.functional.cross_entropy(
                    model(torch.tensor([ids + tgt])).logits[0, len(ids) - 1 : -1], torch.tensor(tgt)
                )
                for ids, tgt, _ in rows
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 25 == 24:
                with torch.no_grad():
                    said = [tok.decode(model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0,
                            len(ids):]) for ids, _, _ in rows]  # fmt: skip
                if [parse_choice(s) for s in said] == [want for _, _, want in rows]:
                    break
        else:
            raise AssertionError(f"the tiny judge did not learn its two answers: {said}")
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-judge")
    folder = train_tiny_judge(root / "judge-model")
    project = make_project(root / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["base"] = str(folder)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    server = start_server(project)
    yield server
    server.kill()


def judge_at(url: str, cache_root: Path, **over) -> object:
    cfg = LLMJudgeConfig(base_url=url + "/v1", model="tiny-judge", max_tokens=8, retries=1, backoff_s=0.05, **over)
    return make_judge("llm", root=cache_root, demo_task=False, llm_judge=cfg)


def served_count(project: Path) -> int:
    store = open_store(project / "live" / "served.sqlite")
    try:
        return store.counts()["served"]
    finally:
        store.close()


@pytest.mark.slow
def test_the_llm_judge_decides_in_both_orders_and_a_rerun_sends_nothing(judge_server, tmp_path):
    judge = judge_at(judge_server.url, tmp_path)
    before = served_count(judge_server.project)
    win = judge.compare(PROMPT, GOOD, BAD)
    loss = judge.compare(PROMPT, BAD, GOOD)
    assert win.outcome == "win" and loss.outcome == "loss"
    assert win.reason.startswith("both orders agree") and "[[A]]" in win.reason and "[[B]]" in win.reason
    # two comparisons x two orders are two distinct questions (the second comparison's orders are the first's,
    # swapped): the cache answers the repeats
    assert judge.requests == 2
    assert served_count(judge_server.project) - before == 2  # the server answered each request
    assert judge.describe()["template"].startswith("pairwise-v1@")

    again = judge_at(judge_server.url, tmp_path)  # a rerun: a new judge over the same on-disk cache
    verdicts = again.compare_many([Comparison(PROMPT, GOOD, BAD), Comparison(PROMPT, BAD, GOOD)])
    assert [v.outcome for v in verdicts] == ["win", "loss"]
    assert again.requests == 0 and served_count(judge_server.project) - before == 2


@pytest.mark.slow
def test_junk_answers_fail_with_the_url(served, tmp_path):
    judge = judge_at(served.url, tmp_path, junk_retries=1)
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match=rf"{served.url}/v1/chat/completions .*gave no verdict in 2 answers"):
        judge.compare(PROMPT, GOOD, BAD)
    assert judge.requests == 2 and time.monotonic() - t0 < 60


def test_identical_replies_are_a_tie_without_asking(tmp_path):
    judge = judge_at(f"http://127.0.0.1:{free_port()}", tmp_path)  # nothing listens: asking would fail
    assert judge.compare(PROMPT, GOOD, GOOD).outcome == "tie" and judge.requests == 0


def test_a_closed_port_fails_with_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    judge = judge_at(url, tmp_path)
    with pytest.raises(JudgeError, match=rf"{url}/v1/chat/completions unreachable after 2 tries"):
        judge.compare(PROMPT, GOOD, BAD)
    assert judge.requests == 2
