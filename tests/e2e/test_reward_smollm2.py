"""The reward model on the real default backbone (SmolLM2-135M-Instruct): builds, scores padding-invariantly,
trains its top blocks on a few pairs, and reloads scoring as the trained model did."""

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slow


def test_smollm2_reward_model_trains_and_reloads(tmp_path):
    from components.config.reward import RewardConfig
    from components.models.base_model import DEFAULT_SPEC
    from components.models.reward.model import RewardModel, build_reward_model, encode, pair_scores, sequence_scores
    from components.models.reward.trainer import train_reward

    model, tok = build_reward_model(DEFAULT_SPEC)
    assert type(model).__name__ == "LlamaForSequenceClassification" and tok.pad_token_id == tok.eos_token_id
    model.eval()
    prompts = ["How do I reset my password?", "My parcel is late."]
    chosen = ["Go to Settings, then Security, and choose Reset password. Thanks for asking!", "Sorry! I'll check."]
    rejected = ["No.", "Not my problem."]
    with torch.no_grad():
        _, r_r, _ = pair_scores(model, tok, prompts, chosen, rejected, 256)
        one = encode(tok, prompts[1:], rejected[1:], 256)
        alone = sequence_scores(model, one.input_ids, one.attention_mask)
    assert torch.allclose(r_r[1:], alone, atol=1e-4)

    rows = [
        {"prompt": f"{p} (case {i})", "chosen": c, "rejected": r, "margin": None}
        for i in range(8)
        for p, c, r in zip(prompts, chosen, rejected)
    ]
    pairs = tmp_path / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(pairs)
    cfg = RewardConfig(trainable="top", train_layers=2, lr=1e-4, epochs=2, batch_size=4, eval_fraction=0.25)
    result = train_reward(pairs, cfg, tmp_path / "reward", tmp_path / "metrics", project_root=tmp_path)
    assert result.metrics["train"]["last_epoch_loss"] < 0.69  # below the loss of a coin flip (log 2)
    assert result.metrics["eval"]["accuracy"] >= 0.75
    # the reload scores the held-out pairs as the trained model did before saving (recorded in the manifest)
    from components.models.reward.pairs import read_pairs, split_by_prompt

    check = result.manifest["check"]
    _, eval_idx = split_by_prompt(read_pairs(pairs), cfg.eval_fraction, cfg.seed)
    held = read_pairs(pairs).subset(eval_idx[: check["heldout_pairs"]])
    loaded = RewardModel.load(result.model_dir)
    assert torch.allclose(loaded.raw_scores(held.prompts, held.chosen), torch.tensor(check["raw_chosen"]), atol=1e-3)
    assert torch.allclose(
        loaded.raw_scores(held.prompts, held.rejected), torch.tensor(check["raw_rejected"]), atol=1e-3
    )
