import pytest

pytestmark = pytest.mark.slow


def test_smollm2_loads_from_the_package_and_replies():
    from components.models.base_model import DEFAULT_SPEC, load_base
    from components.models.generation import generate

    model, tok = load_base(DEFAULT_SPEC)
    n = sum(p.numel() for p in model.parameters())
    assert 130e6 < n < 140e6
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.pad_token_id == tok.eos_token_id
    out = generate(
        model,
        tok,
        ["How do I reset my password?"],
        system="You are a helpful assistant.",
        max_new_tokens=40,
        greedy=True,
    )
    reply = out.texts[0]
    assert len(reply.split()) >= 5
    assert "password" in reply.lower()
