"""The reward model on the tiny backbone: learns a toy preference, saves and reloads, scores in one pass."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import torch

from components.config.reward import RewardConfig
from components.models.base_model import accelerator_device
from components.models.reward.model import (
    RewardModel,
    build_reward_model,
    encode,
    pair_scores,
    sequence_scores,
)
from components.models.reward.pairs import read_pairs, split_by_prompt
from components.models.reward.trainer import select_trainable, train_reward

WORDS = ["order", "refund", "password", "package", "billing", "account", "status", "help", "day", "number"]
OTHER = ["sorry", "please", "okay", "great"]


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """Chosen replies contain "thanks" at a random place; rejected ones have another word there."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, 5)
        pos = rng.randrange(len(words) + 1)
        chosen = [*words[:pos], "thanks", *words[pos:]]
        rejected = [*words[:pos], rng.choice(OTHER), *words[pos:]]
        rows.append(
            {
                "prompt": f"customer {i} asks about the {rng.choice(WORDS)}",
                "chosen": " ".join(chosen),
                "rejected": " ".join(rejected),
                "margin": None,
                "source": "toy",
            }
        )
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small for two threads: on a loaded 2-core machine, thread hand-offs
    made these tests ~8x slower. One thread for this module, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TOY_CFG = RewardConfig(
    backbone="tiny",
    trainable="all",
    lr=3e-3,
    epochs=3,
    batch_size=8,
    max_length=128,
    eval_fraction=0.25,
    warmup_ratio=0.0,
    seed=0,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    pairs_path = root / "pairs.parquet"
    pd.DataFrame(toy_rows(160)).to_parquet(pairs_path)
    result = train_reward(pairs_path, TOY_CFG, root / "models" / "reward", root / "metrics", project_root=root)
    return root, pairs_path, result


def test_toy_preference_is_learned_above_chance(trained):
    root, pairs_path, result = trained
    ev = result.metrics["eval"]
    train_idx, held_idx = split_by_prompt(read_pairs(pairs_path), TOY_CFG.eval_fraction, TOY_CFG.seed)
    assert ev["pairs"] == len(held_idx) and 20 <= len(held_idx) <= 60  # a quarter of 160 prompts, by hash
    assert ev["accuracy"] >= 0.8, ev
    assert ev["mean_margin"] > 0
    steps = [json.loads(x) for x in (root / "metrics" / "reward_train.jsonl").read_text().splitlines()]
    per_epoch = -(-len(train_idx) // TOY_CFG.batch_size)
    assert len(steps) == result.metrics["train"]["steps"] == 3 * per_epoch
    first = sum(s["loss"] for s in steps[:per_epoch]) / per_epoch
    last = sum(s["loss"] for s in steps[-per_epoch:]) / per_epoch
    assert last < first * 0.5, (first, last)
    assert steps[-1]["lr"] == pytest.approx(0.0)  # linear decay to 0


def test_outputs_metrics_and_manifest(trained):
    root, _, result = trained
    metrics = json.loads((root / "metrics" / "reward.json").read_text())
    assert metrics == result.metrics
    assert set(metrics) == {"eval", "train", "normalization", "truncation", "pool_heldout_pairs"}
    assert (root / "metrics" / "reward_train.csv").read_text().startswith("step,")
    assert (root / "metrics" / "reward_train.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert manifest["params"]["backbone"] == "tiny" and manifest["params"]["lr"] == TOY_CFG.lr
    assert len(manifest["data"]["pairs_md5"]) == 32
    assert manifest["data"]["data_version"] is None  # no data.dvc in this folder
    assert manifest["metrics"] == metrics
    assert {"code_revision", "normalization", "created_at"} <= set(manifest)
    assert (result.model_dir / "config.json").is_file() and (result.model_dir / "tokenizer.json").is_file()


def test_reload_scores_like_the_trained_model(trained):
    """The trainer records the raw scores its in-memory model gave the first held-out pairs; the saved folder,
    reloaded, must give the same (a save that dropped or re-initialised the head would not)."""
    _, pairs_path, result = trained
    check = result.manifest["check"]
    n = check["heldout_pairs"]
    assert n == 4 and len(check["raw_chosen"]) == len(check["raw_rejected"]) == n
    pairs = read_pairs(pairs_path)
    _, eval_idx = split_by_prompt(pairs, TOY_CFG.eval_fraction, TOY_CFG.seed)
    held = pairs.subset(eval_idx[:n])
    loaded = RewardModel.load(result.model_dir)
    assert loaded.device.type == accelerator_device().type  # the GPU when one is visible, else the CPU
    raw_c = loaded.raw_scores(held.prompts, held.chosen)
    raw_r = loaded.raw_scores(held.prompts, held.rejected)
    assert check["precision"] == loaded.precision  # recorded in the precision the reload scores in
    assert torch.allclose(raw_c, torch.tensor(check["raw_chosen"]), atol=1e-5)
    assert torch.allclose(raw_r, torch.tensor(check["raw_rejected"]), atol=1e-5)
    # and a model with a fresh head on the same backbone does not
    fresh, tok = build_reward_model("tiny", seed=123)
    other = RewardModel(fresh, tok).raw_scores(held.prompts, held.chosen)
    assert not torch.allclose(other, torch.tensor(check["raw_chosen"]), atol=1e-4)


def test_a_reward_model_trains_on_from_the_champions(trained, tmp_path):
    """``reward.init_from: champion``: the reward model the champion policy was trained with is the start; it
    trains ``warm_epochs`` passes, names its parent in the manifest and the registry. With a learning rate too
    small to move a weight it gives back its parent's scores (a fresh head would not: see above). The base model
    as champion, or a parent on another backbone, starts from the backbone."""
    import shutil
    from dataclasses import replace

    from components.models.base_model import prepare_tiny
    from components.models.reward.train import train_reward_model, warm_start
    from components.project.paths import ProjectPaths
    from components.records import registry

    _, pairs_path, first = trained
    paths = ProjectPaths(tmp_path / "project")
    paths.pairs.parent.mkdir(parents=True)
    shutil.copy(pairs_path, paths.pairs)
    registry.ensure_base_champion(paths, "tiny", prepare_tiny(tmp_path / "tiny"))
    cfg = replace(TOY_CFG, init_from="champion", warm_epochs=1, lr=1e-12)
    registry.write_ppo_parent(paths)
    assert warm_start(cfg, paths) is None  # the base is the champion: nothing to start from

    parent = registry.register_reward_model(paths, first.model_dir)
    policy = tmp_path / "policy-v1"
    shutil.copytree(tmp_path / "tiny", policy)
    registry.register(paths, "v1", policy, facts={"reward_version": parent.version}, parent="base-tiny")
    registry.promote(paths, "v1")
    registry.write_ppo_parent(paths)
    assert warm_start(replace(cfg, backbone="smollm2-135m-instruct"), paths) is None  # another backbone
    assert warm_start(replace(cfg, init_from="base"), paths) is None

    result = train_reward_model(cfg, paths)
    assert result.parent == parent.version
    manifest = json.loads((paths.reward_model / "manifest.json").read_text())
    assert manifest["parent"] == {"version": parent.version, "champion": "v1"}
    train_idx, held_idx = split_by_prompt(read_pairs(paths.pairs), cfg.eval_fraction, cfg.seed)
    assert manifest["metrics"]["train"]["epochs"] == 1
    assert manifest["metrics"]["train"]["steps"] == -(-len(train_idx) // cfg.batch_size)
    held = read_pairs(paths.pairs).subset(held_idx[:8])
    before, after = RewardModel.load(first.model_dir), RewardModel.load(paths.reward_model)
    raw_before, raw_after = before.raw_scores(held.prompts, held.chosen), after.raw_scores(held.prompts, held.chosen)
    assert torch.allclose(raw_before, raw_after, atol=1e-4), (raw_before - raw_after).abs().max()
    assert result.accuracy == pytest.approx(first.eval_accuracy, abs=1e-9)  # same held-out pairs, same weights
    record = registry.register_reward_model(paths, paths.reward_model)
    assert record.parent == parent.version


def rounding_tolerance(rm: RewardModel, raw: torch.Tensor, roundings: int = 8) -> float:
    """How far two computations of the same normalised scores may differ by rounding alone: a few units of
    the scoring precision's epsilon, relative to the largest raw score, in normalised units."""
    eps = torch.finfo(torch.bfloat16 if rm.precision == "bfloat16" else torch.float32).eps
    return roundings * eps * raw.abs().max().item() / rm.std


def test_save_load_identical_scores_and_normalisation(trained):
    _, pairs_path, result = trained
    a = RewardModel.load(result.model_dir)
    b = RewardModel.load(result.model_dir)
    assert a.mean == pytest.approx(result.metrics["normalization"]["mean"], abs=1e-5)
    assert a.bf16 == TOY_CFG.bf16  # the precision the statistics were computed in is the one it scores in
    pairs = read_pairs(pairs_path)
    train_idx, _ = split_by_prompt(pairs, TOY_CFG.eval_fraction, TOY_CFG.seed)
    train = pairs.subset(train_idx)
    prompts, responses = [*train.prompts, *train.prompts], [*train.chosen, *train.rejected]
    # the statistics came from these texts, scored as score() scores them (same function, precision, batches):
    # mean 0 and std 1 up to float32 reductions of the same numbers, whatever the CPU or RLHF_CPU_BF16
    sa = a.score(prompts, responses, batch_size=2 * TOY_CFG.eval_batch_size)
    reduction = 8 * torch.finfo(torch.float32).eps
    assert abs(sa.mean().item()) <= reduction
    assert sa.std(unbiased=False).item() == pytest.approx(1.0, abs=reduction)
    # other batches round differently (bf16 more than float32), within the scoring precision's rounding
    sb = b.score(prompts, responses, batch_size=7)
    tol = rounding_tolerance(a, a.raw_scores(prompts, responses))
    assert torch.allclose(sa, sb, rtol=0.0, atol=tol), ((sa - sb).abs().max().item(), tol)
    assert abs(sb.mean().item()) <= tol
    # a fresh in-memory model saved and reloaded gives bit-identical scores
    model, tok = build_reward_model("tiny", seed=5)
    rm = RewardModel(model, tok, mean=0.25, std=2.0, max_length=96)
    rm.save(result.model_dir.parent / "copy")
    back = RewardModel.load(result.model_dir.parent / "copy")
    assert (back.mean, back.std, back.max_length) == (0.25, 2.0, 96)
    assert torch.equal(rm.score(prompts[:6], responses[:6]), back.score(prompts[:6], responses[:6]))


def test_one_forward_pass_equals_separate_scoring_and_ignores_padding():
    model, tok = build_reward_model("tiny", seed=1)
    model.eval()
    rows = toy_rows(3, seed=4)
    rows[1]["chosen"] = rows[1]["chosen"] + " and a much longer reply so the batch needs padding " * 2
    prompts = [r["prompt"] for r in rows]
    chosen = [r["chosen"] for r in rows]
    rejected = [r["rejected"] for r in rows]
    with torch.no_grad():
        r_c, r_r, _ = pair_scores(model, tok, prompts, chosen, rejected, max_length=512)
        alone = []
        for p, resp in [*zip(prompts, chosen), *zip(prompts, rejected)]:
            one = encode(tok, [p], [resp], 512)
            alone.append(sequence_scores(model, one.input_ids, one.attention_mask))
    assert torch.allclose(torch.cat([r_c, r_r]), torch.cat(alone), atol=1e-5)
    # the score is read at the reply's closing EOS (== pad id), found by position, not by id
    batch = encode(tok, prompts, chosen, 512)
    last = batch.attention_mask.sum(dim=1) - 1
    assert (batch.input_ids[torch.arange(3), last] == tok.eos_token_id).all()
    assert tok.pad_token_id == tok.eos_token_id


def test_truncation_keeps_the_reply_end():
    _, tok = build_reward_model("tiny")
    batch = encode(tok, ["a very long prompt " * 40], ["short reply"], max_length=32)
    assert batch.input_ids.shape == (1, 32) and batch.truncated == 1
    assert batch.input_ids[0, -1].item() == tok.eos_token_id
    assert "short reply" in tok.decode(batch.input_ids[0])


def test_a_long_conversation_loses_its_far_past_and_the_cut_is_reported():
    from components.models.reward.model import reward_text, truncation_stats

    _, tok = build_reward_model("tiny")
    talk = (("user", "the first question, long ago " * 20), ("assistant", "an old answer " * 20), ("user", "now?"))
    text = reward_text(tok, talk, "the reply")
    assert "<|im_start|>assistant\nan old answer" in text and text.endswith("the reply<|im_end|>")  # real roles
    limit = len(tok(reward_text(tok, "short", "ok"), add_special_tokens=False)["input_ids"]) + 8
    batch = encode(tok, [talk], ["the reply"], max_length=limit)
    kept = tok.decode(batch.input_ids[0])
    assert "now?" in kept and "the reply" in kept and "the first question" not in kept  # the far past is cut
    total = len(tok(text, add_special_tokens=False)["input_ids"])
    stats = truncation_stats(tok, [talk, "short"], ["the reply", "ok"], max_length=limit)
    assert stats["truncated"] == 1 and stats["tokens_cut"] == stats["max_cut"] == total - limit
    assert stats["replies_cut"] == 0 and stats["texts"] == 2


def test_top_mode_trains_only_the_top_blocks_and_head():
    model, tok = build_reward_model("tiny", seed=2)
    cfg = RewardConfig(backbone="tiny", trainable="top", train_layers=1)
    trainable = select_trainable(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=1e-2)
    rows = toy_rows(4)
    r_c, r_r, _ = pair_scores(
        model, tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows], 128
    )
    (-torch.nn.functional.logsigmoid(r_c - r_r).mean()).backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "score.weight" in changed and "model.norm.weight" in changed
    assert any(k.startswith("model.layers.1.") for k in changed)
    assert not any(k.startswith(("model.layers.0.", "model.embed_tokens")) for k in changed)


def test_lora_mode_saves_a_plain_merged_model(tmp_path):
    pairs_path = tmp_path / "pairs.parquet"
    pd.DataFrame(toy_rows(24)).to_parquet(pairs_path)
    cfg = RewardConfig(backbone="tiny", trainable="lora", lora_r=4, lr=1e-2, epochs=1, max_length=128)
    result = train_reward(pairs_path, cfg, tmp_path / "reward", tmp_path / "metrics", project_root=tmp_path)
    assert not (result.model_dir / "adapter_config.json").exists()
    loaded = RewardModel.load(result.model_dir)
    assert not any("lora" in k for k in loaded.model.state_dict())
    base, _ = build_reward_model("tiny", seed=cfg.seed)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(loaded.model.state_dict()[q].cpu(), base.state_dict()[q].cpu())  # adapters merged in
    assert result.metrics["train"]["trainable_params"] < result.metrics["train"]["total_params"]


def test_early_stopping_keeps_the_weights_of_the_best_validation_point(tmp_path):
    """With val_fraction the trainer scores a validation split of the training prompts twice per epoch
    and restores the weights of the lowest validation loss, so the kept model's validation loss is that
    minimum, not the last point's."""
    from dataclasses import replace

    from components.models.reward.losses import bradley_terry_loss
    from components.models.reward.pairs import Pairs
    from components.models.reward.trainer import fit_reward_model, score_pairs

    rows = toy_rows(96, seed=3)
    pairs = Pairs(
        [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows], [0.0] * len(rows)
    )
    cfg = replace(TOY_CFG, lr=2e-2, epochs=3, val_fraction=0.25, evals_per_epoch=2, eval_fraction=0.0)
    model, tok, metrics = fit_reward_model(pairs, cfg, tmp_path / "steps.jsonl", device="cpu")
    curve = metrics["val"]
    fit_idx, val_idx = split_by_prompt(pairs, 0.25, cfg.seed + 2)
    assert metrics["val_pairs"] == len(val_idx) and metrics["pairs"] == len(fit_idx) == 96 - len(val_idx)
    per_epoch = -(-len(fit_idx) // cfg.batch_size)  # a validation point mid-epoch and one at each epoch's end
    assert [c["step"] for c in curve] == [
        e * per_epoch + m for e in range(3) for m in (round(per_epoch / 2), per_epoch)
    ]
    best = min(curve, key=lambda c: c["loss"])
    assert metrics["best_step"] == best["step"] and metrics["best_val_loss"] == best["loss"]
    # the kept weights reproduce the best point's validation loss
    r_c, r_r = score_pairs(model, tok, pairs.subset(val_idx), cfg)
    assert bradley_terry_loss(r_c, r_r).item() == pytest.approx(best["loss"], abs=1e-4)


def test_checkpoint_averaging_is_the_mean_of_the_epoch_end_weights():
    from components.models.reward.trainer import average_states

    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([1.0])}
    avg = average_states([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and torch.equal(avg["b"], torch.tensor([0.5]))
    with pytest.raises(ValueError):
        average_states([])


def test_averaged_model_differs_from_the_last_weights(tmp_path):
    from dataclasses import replace

    from components.models.reward.pairs import Pairs
    from components.models.reward.trainer import fit_reward_model

    rows = toy_rows(48, seed=4)
    pairs = Pairs(
        [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows], [0.0] * len(rows)
    )
    last_model, _, last = fit_reward_model(pairs, replace(TOY_CFG, epochs=2), tmp_path / "a.jsonl", device="cpu")
    avg_model, _, avg = fit_reward_model(
        pairs, replace(TOY_CFG, epochs=2, average_epochs=2), tmp_path / "b.jsonl", device="cpu"
    )
    assert avg["averaged_epochs"] == 2 and "averaged_epochs" not in last
    w_last, w_avg = last_model.score.weight, avg_model.score.weight
    assert not torch.allclose(w_last, w_avg)  # same run (same seed), different kept weights


def test_two_pairs_per_prompt_also_report_the_first_pairs_accuracy(tmp_path):
    """With several pairs per prompt (data.pairs_per_prompt) the held-out metrics also give the accuracy on
    each prompt's first (best-vs-worst) pair, the figure comparable with one pair per prompt."""
    from dataclasses import replace

    rows = toy_rows(40, seed=5)
    doubled = [r2 for r in rows for r2 in (r, {**r, "chosen": r["chosen"] + " ok", "rejected": r["rejected"] + " ok"})]
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(doubled).to_parquet(path)
    result = train_reward(
        path, replace(TOY_CFG, epochs=1), tmp_path / "rm", tmp_path / "metrics", project_root=tmp_path
    )
    ev = result.metrics["eval"]
    held = split_by_prompt(read_pairs(path), TOY_CFG.eval_fraction, TOY_CFG.seed)[1]
    assert ev["pairs"] == len(held) and ev["first_pairs"] == len(held) // 2 and len(held) % 2 == 0
    assert 0.0 <= ev["first_pair_accuracy"] <= 1.0
