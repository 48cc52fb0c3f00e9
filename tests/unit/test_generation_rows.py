"""Thread-safe sampling: per-row seeds and limits, stop strings, nothing global touched."""

from __future__ import annotations

import threading

import torch

from components.generation import RowParams, chat_text, filter_logits, generate, generate_rows


def test_filter_logits_top_k_and_top_p_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = filter_logits(logits, torch.tensor([1.0, 1.0]), 0, torch.tensor([0.6, 1.0]))
    # row 0: mass above token 2 is 0.8 > 0.6, so tokens 2 and 3 go; row 1 keeps everything
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    assert torch.isfinite(out[1]).all()
    out = filter_logits(logits, torch.tensor([2.0, 1.0]), 1, torch.tensor([1.0, 1.0]))
    assert torch.isfinite(out[:, 0]).all() and torch.isinf(out[:, 1:]).all()
    assert torch.allclose(out[0, 0], logits[0, 0] / 2)


def test_seeded_rows_do_not_depend_on_their_batch(tiny):
    model, tok = tiny
    text = chat_text(tok, "hello")
    alone = generate_rows(model, tok, [text], [RowParams(10, 1.0, 1.0, 7)])[0]
    crowd = generate_rows(
        model,
        tok,
        [chat_text(tok, "a much longer prompt about a late order"), text, text],
        [RowParams(3, 1.0, 1.0, 1), RowParams(10, 1.0, 1.0, 7), RowParams(10, 1.0, 1.0, 8)],
    )
    assert crowd[1] == alone
    assert crowd[0].completion_tokens <= 3
    assert crowd[2].text != alone.text or crowd[2].completion_tokens != alone.completion_tokens


def test_no_global_state_is_touched(tiny):
    model, tok = tiny
    tok.padding_side = "right"
    try:
        state = torch.get_rng_state()
        generate(model, tok, ["hi", "longer prompt here"], max_new_tokens=4, generator_seed=3)
        generate_rows(model, tok, [chat_text(tok, "hi")], [RowParams(4, 1.0, 1.0, 5)])
        assert tok.padding_side == "right"
        assert torch.equal(state, torch.get_rng_state())
    finally:
        tok.padding_side = "left"


def test_concurrent_threads_get_their_seeded_replies(tiny):
    model, tok = tiny
    text = chat_text(tok, "thread test")
    expected = {s: generate_rows(model, tok, [text], [RowParams(8, 1.0, 1.0, s)])[0] for s in range(4)}
    got: dict[int, object] = {}

    def work(seed: int) -> None:
        got[seed] = generate_rows(model, tok, [text], [RowParams(8, 1.0, 1.0, seed)])[0]

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_stop_string_ends_the_row(tiny):
    model, tok = tiny
    text = chat_text(tok, "hello")
    full = generate_rows(model, tok, [text], [RowParams(20, 1.0, 1.0, 2)])[0]
    assert len(full.text) >= 4, full
    stop = full.text[2:4]
    cut = generate_rows(model, tok, [text], [RowParams(20, 1.0, 1.0, 2, (stop,))])[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and full.text.startswith(cut.text)
    assert cut.completion_tokens <= full.completion_tokens
