"""Continuous batching: rows join and leave the running batch step by step, with the sampler's per-row seeds,
stop strings, streaming that adds up to the reply, cancellation and a bounded queue."""

from __future__ import annotations

import threading
import time

import pytest

from components.models.generation import RowParams, encode_chat, generate_rows
from serving.scheduler import Engine, QueueFull, Row


def prompt(tok, text: str) -> list[int]:
    return encode_chat(tok, [{"role": "user", "content": text}])


@pytest.fixture()
def engine(tiny):
    model, tok = tiny
    finished: list = []
    eng = Engine(lambda: (model, tok, "v1"), max_rows=4, max_queued=3, on_finish=finished.extend)
    eng.finished = finished
    yield eng
    eng.close()


def test_rows_match_the_batch_sampler_whenever_they_join(engine, tiny):
    model, tok = tiny
    params = [RowParams(40, 1.0, 1.0, 7), RowParams(12, 0.8, 0.9, 3), RowParams(6, 0.0)]
    texts = ["a long question about a late order", "hi", "refund?"]
    expected = [generate_rows(model, tok, [prompt(tok, t)], [p])[0] for t, p in zip(texts, params)]
    first = Row(prompt(tok, texts[0]), params[0])
    engine.submit([first])
    time.sleep(0.05)  # the first row is running when the others arrive
    later = [Row(prompt(tok, t), p) for t, p in zip(texts[1:], params[1:])]
    engine.submit(later)
    got = [r.future.result(timeout=60).result for r in [first, *later]]
    assert got == expected
    assert {f.model_version for f in engine.finished} == {"v1"} and len(engine.finished) == 3


def test_a_short_row_leaves_before_a_long_one_and_streams_its_reply(engine, tiny):
    _, tok = tiny
    long = Row(prompt(tok, "tell me everything"), RowParams(300, 1.0, 1.0, 1))
    engine.submit([long])
    pieces: list[str] = []
    short = Row(prompt(tok, "hi"), RowParams(8, 1.0, 1.0, 2), on_text=pieces.append)
    engine.submit([short])
    done = short.future.result(timeout=60)
    assert not long.future.done()  # the short reply left while the long one runs on
    assert "".join(pieces) == done.result.text
    long.cancel()
    aborted = long.future.result(timeout=60)
    assert aborted.result.finish_reason == "aborted" and 0 < aborted.result.completion_tokens < 300


def test_stop_strings_end_rows_and_never_stream(engine, tiny):
    model, tok = tiny
    plain = generate_rows(model, tok, [prompt(tok, "hi")], [RowParams(24, 1.0, 1.0, 5)])[0].text
    if len(plain) < 4:
        pytest.skip(f"tiny model's sampled reply too short to cut: {plain!r}")
    stop = plain[len(plain) // 2 : len(plain) // 2 + 2]
    pieces: list[str] = []
    row = Row(prompt(tok, "hi"), RowParams(24, 1.0, 1.0, 5, (stop,)), on_text=pieces.append)
    engine.submit([row])
    got = row.future.result(timeout=60).result
    assert got.finish_reason == "stop" and stop not in got.text and plain.startswith(got.text)
    assert "".join(pieces) == got.text


def test_a_full_queue_refuses_and_nothing_is_half_queued(tiny):
    model, tok = tiny
    gate = threading.Event()

    def current():
        gate.wait(30)
        return model, tok, "v1"

    eng = Engine(current, max_rows=1, max_queued=2, on_finish=lambda f: None)
    try:
        eng.submit([Row(prompt(tok, "a"), RowParams(2, 0.0)), Row(prompt(tok, "b"), RowParams(2, 0.0))])
        with pytest.raises(QueueFull, match="limit is 2"):
            eng.submit([Row(prompt(tok, "c"), RowParams(2, 0.0))])
    finally:
        gate.set()
        eng.close()
