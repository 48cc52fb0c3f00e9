"""The static-cache decode path gives what the eager loop gives: same tokens, same log-probs, same per-row control.

On the CPU the static path runs eagerly; on CUDA (``bench/gpu_check.sh tests``) it runs as a CUDA graph.
"""

from __future__ import annotations

import copy

import pytest
import torch

from components.models.generation import (
    BATCH_BUCKET_MIN,
    LENGTH_BUCKET,
    RowParams,
    bucket_shape,
    chat_text,
    encode_prompts,
    generate,
    generate_rows,
    reply_logits,
    sample,
    static_cache_on,
)
from components.models.policy import ppo_math

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
PROMPTS = ["hello", "my order is late, please help", "refund?", "where is my parcel, it should be here by now"]


@pytest.fixture(scope="module", params=DEVICES)
def model_on(request, tiny):
    model, tok = tiny
    if request.param == "cpu":
        return model, tok
    return copy.deepcopy(model).to(request.param), tok


def test_bucket_shapes_and_the_switch():
    assert bucket_shape(1, 1) == (BATCH_BUCKET_MIN, LENGTH_BUCKET)
    assert bucket_shape(9, 65) == (16, 128)
    assert bucket_shape(256, 128) == (256, 128)
    assert bucket_shape(257, 129) == (512, 192)
    assert static_cache_on("auto", "cuda") and not static_cache_on("auto", "cpu")
    assert static_cache_on("on", "cpu") and not static_cache_on("off", "cuda")
    assert static_cache_on(True, "cpu") and not static_cache_on(False, "cuda")
    with pytest.raises(ValueError, match="auto, on or off"):
        static_cache_on("yes", "cpu")  # type: ignore[arg-type]


def test_static_cache_samples_the_same_tokens_and_logits_as_the_eager_loop(model_on, repeats=2):
    model, tok = model_on
    device = model.device
    ids, attn = encode_prompts(tok, PROMPTS, "Be brief.")
    ids, attn = ids.to(device), attn.to(device)
    n = len(PROMPTS) * repeats
    runs = {}
    for mode in ("off", "on"):
        gens = [torch.Generator(device=device).manual_seed(100 + i) for i in range(n)]  # one seed per row
        runs[mode] = sample(
            model, ids, attn, eos_id=tok.eos_token_id, max_new_tokens=[12, 20, 7, 20] * repeats,
            temperature=[0.9, 0.0, 1.2, 0.7] * repeats, top_p=[1.0, 1.0, 0.9, 1.0] * repeats, generators=gens,
            keep_internals=True, repeats=repeats, static_cache=mode,
        )  # fmt: skip
    (tokens, ended, logits, hidden), (s_tokens, s_ended, s_logits, s_hidden) = runs["off"], runs["on"]
    assert torch.equal(tokens, s_tokens) and torch.equal(ended, s_ended)
    assert tokens.shape[1] > 1  # decode steps ran, not only the prompt pass
    assert torch.allclose(logits, s_logits, atol=1e-4, rtol=0)
    assert torch.allclose(hidden, s_hidden, atol=1e-4, rtol=0)
    logp = ppo_math.logprobs_from_logits(logits, tokens, 0.7)
    assert torch.allclose(logp, ppo_math.logprobs_from_logits(s_logits, s_tokens, 0.7), atol=1e-4, rtol=0)


def test_static_cache_under_bf16_autocast_as_rollouts_run_it(model_on):
    """Under autocast the growing cache holds float32 keys and (promoted) values, the static one the step's own
    dtypes: the same tokens (here, on CPU and GPU kernels, bar a rare bf16 flip), logits within bf16 rounding."""
    from components.models.precision import cast_frozen_weights_once

    model, tok = model_on
    ids, attn = encode_prompts(tok, PROMPTS, "Be brief.")
    ids, attn = ids.to(model.device), attn.to(model.device)
    runs = {}
    for mode in ("off", "on"):
        gens = [torch.Generator(device=model.device).manual_seed(i) for i in range(8)]
        bf16 = torch.autocast(model.device.type, dtype=torch.bfloat16)
        with torch.no_grad(), bf16, cast_frozen_weights_once(model):
            runs[mode] = sample(
                model, ids, attn, eos_id=tok.eos_token_id, max_new_tokens=[12] * 8, temperature=[0.9] * 8,
                top_p=[1.0] * 8, generators=gens, keep_internals=True, repeats=2, static_cache=mode,
            )  # fmt: skip
    same = (runs["off"][0] == runs["on"][0]).all(dim=1)  # shape: (8,)
    # bf16 rounding may flip a sampled token now and then (a wrong cache or mask changes every row)
    assert int(same.sum()) >= 6, same
    assert torch.allclose(runs["off"][2][same].float(), runs["on"][2][same].float(), atol=0.05, rtol=0)


def test_a_kept_static_cache_serves_the_next_batches_of_its_bucket(tiny, monkeypatch):
    """The CUDA-graph path keeps one cache per bucket (stable addresses for the graph): refilled with the next
    batch's prompt, it still gives the eager loop's tokens and logits (run eagerly here)."""
    from components.models import generation

    class Keeping(generation.StaticDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "keep": True})

    model, tok = tiny
    monkeypatch.setattr(generation, "StaticDecoder", Keeping)
    for prompts in (PROMPTS, PROMPTS[1:]):  # one bucket (8 rows, 64 columns), two batches
        ids, attn = encode_prompts(tok, prompts, "Be brief.")
        runs = {}
        for mode in ("off", "on"):
            gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
            runs[mode] = sample(
                model, ids, attn, eos_id=tok.eos_token_id, max_new_tokens=[10] * len(prompts),
                temperature=[0.9] * len(prompts), top_p=[1.0] * len(prompts), generators=gens,
                keep_internals=True, static_cache=mode,
            )  # fmt: skip
        assert torch.equal(runs["off"][0], runs["on"][0])
        assert torch.allclose(runs["off"][2], runs["on"][2], atol=1e-4, rtol=0)
    assert len(generation._kept_caches[model]) == 1


@pytest.mark.slow  # ~13 s (dynamo traces the LoRA model's step); bench/gpu_check.sh tests runs it
def test_the_decode_step_traces_into_one_graph_without_breaks_or_recompiles(tiny, monkeypatch):
    """What torch.compile captures as a CUDA graph on a GPU, traced here by dynamo (``aot_eager``: no code
    generation): the step of a LoRA policy under bf16 autocast is one graph, with no graph break, and the next
    batch of the same bucket reuses it; the tokens are the eager loop's."""
    import copy

    import torch._dynamo
    from peft import LoraConfig, get_peft_model
    from torch._dynamo.utils import counters

    from components.models import generation
    from components.models.precision import cast_frozen_weights_once

    class Graphing(generation.StaticDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "graph": True})

    model, tok = tiny
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    policy = get_peft_model(copy.deepcopy(model), lora).eval()
    torch._dynamo.reset()
    counters.clear()
    traced = torch.compile(generation._decode_step, backend="aot_eager", dynamic=False)
    monkeypatch.setattr(generation, "_compiled_step", traced)
    monkeypatch.setattr(generation, "StaticDecoder", Graphing)
    for prompts in (PROMPTS, PROMPTS[1:]):  # two batches of one bucket
        texts = {}
        for mode in ("off", "on"):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), cast_frozen_weights_once(policy):
                out = generate(policy, tok, prompts, max_new_tokens=8, generator_seed=0, static_cache=mode)
            texts[mode] = out.texts
        assert texts["on"] == texts["off"]
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_static_cache_keeps_seeds_limits_and_stop_strings_per_row(model_on):
    model, tok = model_on
    texts = [chat_text(tok, p) for p in PROMPTS]
    params = [
        RowParams(10, 1.0, 1.0, 7),
        RowParams(3, 1.0, 1.0, 1),
        RowParams(10, 0.8, 0.95, 8, stop=("e",)),
        RowParams(10, 0.0, 1.0, None),  # greedy: no generator needed
    ]
    eager = generate_rows(model, tok, texts, params, static_cache="off")
    static = generate_rows(model, tok, texts, params, static_cache="on")
    assert static == eager
    assert static[1].completion_tokens <= 3


def test_generate_switch_defaults_to_the_eager_loop_on_cpu_and_agrees_with_it(model_on):
    model, tok = model_on
    common = dict(max_new_tokens=10, generator_seed=5, return_internals=True, samples_per_prompt=2)
    a = generate(model, tok, PROMPTS[:2], **common)  # auto: the eager loop on the CPU, the graph on CUDA
    b = generate(model, tok, PROMPTS[:2], static_cache="off" if model.device.type == "cuda" else "on", **common)
    assert a.texts == b.texts
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)


def test_chunked_logprobs_of_a_model_equal_todays_function(tiny):
    model, tok = tiny
    out = generate(model, tok, PROMPTS, max_new_tokens=12, generator_seed=1)
    ids = torch.cat([out.query_ids, out.response_ids], dim=1)
    mask = torch.cat([out.query_mask, out.response_mask], dim=1)
    with torch.no_grad():
        logits = reply_logits(model, ids, mask, out.response_ids.shape[1])  # shape: (B, R, V)
    logp, ent = ppo_math.chunked_logprobs(logits, out.response_ids, 0.7, with_entropy=True, max_elements=1000)
    assert torch.allclose(logp, ppo_math.logprobs_from_logits(logits, out.response_ids, 0.7), atol=1e-5)
    assert torch.allclose(ent, ppo_math.entropy_from_logits(logits.float() / 0.7), atol=1e-5)
