"""Continuous batching: rows join and leave the running batch step by step, with the sampler's per-row seeds,
stop strings, streaming that adds up to the reply, cancellation and a bounded queue."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch

from components.models.generation import RowParams, encode_chat, generate_rows
from components.models.shared_prefix import template_prefix
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


SYSTEM = "Be brief."


def chat(tok, text: str, system: str = SYSTEM) -> list[int]:
    return encode_chat(tok, [{"role": "system", "content": system}, {"role": "user", "content": text}])


class Passes:
    """Counts the model's forward passes by input shape (b, tokens)."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self._hook = model.register_forward_pre_hook(self._seen, with_kwargs=True)

    def _seen(self, module, args, kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))

    def remove(self) -> None:
        self._hook.remove()


def run_mixed(model, tok, prompts, params, prefix) -> list[Row]:
    """The first prompt alone, then the others joining its running batch, then the second again in a new busy
    period; the rows, finished."""
    eng = Engine(lambda: (model, tok, "v1"), max_rows=4, max_queued=8, on_finish=lambda f: None, prefix=prefix)
    try:
        first = Row(prompts[0], params[0])
        eng.submit([first])
        deadline = time.monotonic() + 30
        while eng.load != (1, 0) and time.monotonic() < deadline:  # the first row is running
            time.sleep(0.001)
        later = [Row(p, q) for p, q in zip(prompts[1:], params[1:])]
        eng.submit(later)
        rows = [first, *later]
        for r in rows:
            r.future.result(timeout=60)
        again = Row(prompts[1], params[1])
        eng.submit([again])
        again.future.result(timeout=60)
        return [*rows, again]
    finally:
        eng.close()


@pytest.fixture(scope="module")
def sharp(tiny):
    """The tiny model with its weights (norms aside) scaled 6x: the random model's attention is nearly uniform
    and its argmax one token everywhere, so greedy tokens could not tell right positions and keys from wrong
    ones; scaled, greedy replies vary and a position off by the prefix length moves the logits by ~1."""
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(6.0)
    return model, tok


def test_the_prefix_cache_decodes_the_same_greedy_tokens_and_runs_the_prefix_once(sharp):
    model, tok = sharp
    prefix = template_prefix(tok, SYSTEM)
    params = [RowParams(30, 0.0), RowParams(10, 0.0), RowParams(12, 0.0), RowParams(8, 0.0)]
    prompts = [
        chat(tok, "a long question about a late order"),
        chat(tok, "hi"),
        chat(tok, "refund?", system="You are a pirate."),  # another system prompt: prefilled whole
        chat(tok, "where is my parcel, it is late"),
    ]
    assert [p[: len(prefix)] == prefix for p in prompts] == [True, True, False, True]
    plain = run_mixed(model, tok, prompts, params, None)
    passes = Passes(model)
    try:
        cached = run_mixed(model, tok, prompts, params, lambda t: prefix)
    finally:
        passes.remove()
    assert [r.tokens for r in cached] == [r.tokens for r in plain]
    assert len({t for r in cached for t in r.tokens}) > 5  # the replies vary: the comparison means something
    expected = [generate_rows(model, tok, [p], [q])[0] for p, q in zip(prompts, params)]
    assert [r.future.result().result for r in cached] == [*expected, expected[1]]
    assert cached[0].peak_rows == 4  # the others joined the first row's running batch
    assert passes.shapes.count((1, len(prefix))) == 1  # the prefix's one pass, for two busy periods
    longest_suffix = max(len(p) - len(prefix) for p in prompts)
    prefills = [n for b, n in passes.shapes if n > 1 and (b, n) != (1, len(prefix))]
    # prefix rows prefill only their suffixes; the other system prompt's row its whole prompt
    assert len(prompts[2]) in prefills and all(n <= longest_suffix or n == len(prompts[2]) for n in prefills)
    assert len(prefills) == 4  # first; its joiners with the prefix; the pirate; the second busy period


def test_a_new_model_version_runs_its_prefix_again(tiny):
    model, tok = tiny
    prefix = template_prefix(tok, SYSTEM)
    version = ["v1"]
    passes = Passes(model)
    eng = Engine(
        lambda: (model, tok, version[0]), max_rows=2, max_queued=4, on_finish=lambda f: None, prefix=lambda t: prefix
    )
    try:
        for v in ("v1", "v2"):
            version[0] = v
            row = Row(chat(tok, "hi"), RowParams(3, 0.0))
            eng.submit([row])
            assert row.future.result(timeout=60).model_version == v
    finally:
        eng.close()
        passes.remove()
    assert passes.shapes.count((1, len(prefix))) == 2


def test_a_burst_is_prefilled_in_passes_each_getting_its_first_token_before_the_next(tiny):
    model, tok = tiny
    texts = ["a long question about a late order", "hi", "refund?", "where is my parcel", "thanks", "help"]
    params = [RowParams(5, 1.0, 1.0, 10 + i) for i in range(len(texts))]
    expected = [generate_rows(model, tok, [prompt(tok, t)], [p])[0] for t, p in zip(texts, params)]
    gate = threading.Event()

    def current():
        gate.wait(30)  # the whole burst waits before the first admission
        return model, tok, "v1"

    rows = [Row(prompt(tok, t), p) for t, p in zip(texts, params)]
    started: list[list[bool]] = []  # per prefill pass: which rows had their first token when it began

    def seen(module, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            started.append([bool(r.tokens or r.finish_reason) for r in rows])

    hook = model.register_forward_pre_hook(seen, with_kwargs=True)
    eng = Engine(current, max_rows=8, max_queued=8, on_finish=lambda f: None, prefill_rows=2)
    try:
        eng.submit(rows)
        gate.set()
        got = [r.future.result(timeout=60) for r in rows]
    finally:
        eng.close()
        hook.remove()
    # the same replies as sampled alone (the batch sampler also counts a final EOS among the completion tokens)
    assert [(g.result.text, g.result.finish_reason) for g in got] == [(e.text, e.finish_reason) for e in expected]
    assert started == [[False] * 6, [True] * 2 + [False] * 4, [True] * 4 + [False] * 2]
    assert {g.row.peak_rows for g in got} == {6}  # then all six decode together


def test_replies_never_carry_a_nul_character(tiny):
    """A byte token can decode to NUL; the reply shown, streamed and stored leaves it out (PostgreSQL text cannot
    hold it, so the store would refuse the whole reply)."""
    from serving.scheduler import _visible

    _, tok = tiny
    ids = tok.encode("a\x00b. c", add_special_tokens=False)
    assert "\x00" in tok.decode(ids)
    assert _visible(tok, ids, [], final=True) == ("ab. c", False)
    assert _visible(tok, ids[:3], [], final=False) == ("ab", False)
