import torch

from components.models.base_model import build_tiny
from components.models.generation import chat_text, response_mask_from_eos


def test_tiny_model_is_small_and_deterministic():
    m1, tok = build_tiny(seed=0)
    m2, _ = build_tiny(seed=0)
    m3, _ = build_tiny(seed=1)
    n = sum(p.numel() for p in m1.parameters())
    assert 10_000 < n < 1_000_000
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(m1.model.embed_tokens.weight, m3.model.embed_tokens.weight)
    assert m1.config.vocab_size == len(tok)


def test_tiny_tokenizer_mirrors_smollm2_quirks():
    _, tok = build_tiny()
    # Same special tokens as SmolLM2: pad == EOS == <|im_end|>.
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    text = chat_text(tok, "hello", system="be nice")
    assert text.startswith("<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\nhello<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_response_mask_keeps_first_eos_and_flags_unfinished():
    eos = 2
    ids = torch.tensor([[5, 6, eos, eos, eos], [5, 6, 7, 8, 9], [eos, 3, 3, 3, 3]])
    mask, ended = response_mask_from_eos(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]
