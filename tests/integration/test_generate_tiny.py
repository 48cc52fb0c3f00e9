import torch

from components.models.base_model import load_base, prepare_tiny, resolve_model_dir
from components.models.generation import generate


def test_tiny_generates_a_batch_with_consistent_masks():
    model, tok = load_base("tiny")
    out = generate(model, tok, ["hello", "my order is late, please help"], max_new_tokens=12, generator_seed=0)
    assert len(out.texts) == 2
    assert out.response_ids.shape[0] == 2 and out.response_ids.shape[1] <= 12
    assert out.query_ids.shape == out.query_mask.shape
    # left padding: the shorter prompt is padded on the left, the last query token is real
    assert out.query_mask[:, -1].eq(1).all()
    assert out.response_mask.sum(dim=1).ge(1).all()


def test_tiny_saved_folder_reloads_identically(tmp_path):
    folder = prepare_tiny(tmp_path / "tiny")
    assert resolve_model_dir(str(folder)) == folder.resolve()
    a, _ = load_base("tiny")
    b, tok = load_base(str(folder))
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits)
