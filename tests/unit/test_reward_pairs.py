import pandas as pd
import pytest

from components.config import ConfigError, from_dict, load_section
from components.config.reward import RewardConfig
from components.models.reward.pairs import PairsError, read_pairs, split_by_prompt, split_position


def _write(tmp_path, rows, name="pairs.parquet"):
    path = tmp_path / name
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_read_pairs_margin_null_is_zero_and_extra_columns_ignored(tmp_path):
    path = _write(
        tmp_path,
        [
            {"prompt": "p1", "chosen": "a", "rejected": "b", "margin": 0.5, "source": "x"},
            {"prompt": "p2", "chosen": "c", "rejected": "d", "margin": None, "source": "y"},
        ],
    )
    pairs = read_pairs(path)
    assert len(pairs) == 2
    assert pairs.margins == [0.5, 0.0]
    assert pairs.chosen == ["a", "c"]


def test_read_pairs_without_margin_column(tmp_path):
    pairs = read_pairs(_write(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    assert pairs.margins == [0.0]


def test_read_pairs_errors_name_the_problem(tmp_path):
    with pytest.raises(PairsError, match="not found"):
        read_pairs(tmp_path / "nope.parquet")
    with pytest.raises(PairsError, match=r"missing column.*rejected"):
        read_pairs(_write(tmp_path, [{"prompt": "p", "chosen": "a"}], "a.parquet"))
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": " ", "rejected": "b"}]
    with pytest.raises(PairsError, match=r"'chosen' is empty or null in 1 row\(s\), first rows \[1\]"):
        read_pairs(_write(tmp_path, rows, "b.parquet"))


def test_split_keeps_each_prompt_on_one_side_and_is_seeded(tmp_path):
    rows = [{"prompt": f"p{i % 10}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(40)]
    pairs = read_pairs(_write(tmp_path, rows))
    train, held = split_by_prompt(pairs, 0.3, seed=3)
    assert len(train) + len(held) == 40 and set(train).isdisjoint(held)
    held_prompts = {pairs.prompts[i] for i in held}
    assert held_prompts == {f"p{i}" for i in range(10) if split_position(f"p{i}", 3) < 0.3}
    assert 1 <= len(held_prompts) <= 9
    assert {pairs.prompts[i] for i in train}.isdisjoint(held_prompts)
    again = split_by_prompt(pairs, 0.3, seed=3)
    assert (again[0] == train).all() and (again[1] == held).all()
    # a tiny fraction still holds out one prompt; zero holds out none
    assert len({pairs.prompts[i] for i in split_by_prompt(pairs, 0.01, 0)[1]}) == 1
    assert len(split_by_prompt(pairs, 0.0, 0)[1]) == 0
    # and nearly all still trains one prompt
    assert len({pairs.prompts[i] for i in split_by_prompt(pairs, 0.999999, 0)[0]}) == 1


def test_split_keeps_a_prompt_on_its_side_as_pairs_grow(tmp_path):
    """Round after round the pairs grow; a prompt held out before is held out again, and one trained on before
    never becomes held out (a reward model continued from an earlier one must not be scored on its parent's
    training prompts)."""
    first = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(200)]
    later = first + [{"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(300)]
    a, b = read_pairs(_write(tmp_path, first, "a.parquet")), read_pairs(_write(tmp_path, later, "b.parquet"))
    (a_train, a_held), (b_train, b_held) = split_by_prompt(a, 0.2, 0), split_by_prompt(b, 0.2, 0)
    assert {a.prompts[i] for i in a_held} == {b.prompts[i] for i in b_held if b.prompts[i].startswith("p")}
    assert {a.prompts[i] for i in a_train} == {b.prompts[i] for i in b_train if b.prompts[i].startswith("p")}
    assert 0.1 < len(b_held) / len(later) < 0.3  # about the fraction


def test_reward_config_from_params_and_bad_values():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cfg = load_section(RewardConfig, "reward", root / "params.yaml")
    assert cfg.backbone == "smollm2-135m-instruct" and cfg.center_rewards
    with pytest.raises(ConfigError, match=r"reward\.trainable"):
        from_dict(RewardConfig, {"trainable": "some"}, prefix="reward.")
    with pytest.raises(ConfigError, match="eval_fraction"):
        from_dict(RewardConfig, {"eval_fraction": 1.5}, prefix="reward.")


def test_first_pair_per_prompt_is_each_prompts_first_row():
    from components.models.reward.pairs import Pairs, first_pair_per_prompt

    pairs = Pairs(["a", "a", "b", "c", "b"], ["1", "2", "3", "4", "5"], ["x", "y", "z", "w", "v"], [0.0] * 5)
    assert first_pair_per_prompt(pairs).tolist() == [0, 2, 3]
