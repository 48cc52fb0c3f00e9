import math

import pytest
import torch

from components.models.reward.losses import (
    bradley_terry_loss,
    center_loss,
    normalise,
    preference_accuracy,
    reward_stats,
)


def _naive_bt(rc: list[float], rr: list[float], m: list[float]) -> float:
    total = 0.0
    for c, r, mm in zip(rc, rr, m):
        total += -math.log(1.0 / (1.0 + math.exp(-(c - r - mm))))
    return total / len(rc)


def test_bradley_terry_hand_computed():
    # One pair with equal rewards: -log σ(0) = log 2.
    assert bradley_terry_loss(torch.tensor([0.5]), torch.tensor([0.5])).item() == pytest.approx(math.log(2))
    # r_c - r_r = 2: -log σ(2) = log(1 + e^-2) = 0.126928...
    assert bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0])).item() == pytest.approx(0.1269280, abs=1e-6)
    # wrong order, diff = -1: log(1 + e) = 1.313262...
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(1.3132617, abs=1e-6)


def test_bradley_terry_margin_and_mean_match_naive_loop():
    rc = [1.0, -0.5, 2.0, 0.3]
    rr = [0.0, 0.5, -1.0, 0.3]
    m = [0.5, 0.0, 1.0, 0.25]
    got = bradley_terry_loss(torch.tensor(rc), torch.tensor(rr), torch.tensor(m)).item()
    assert got == pytest.approx(_naive_bt(rc, rr, m), abs=1e-6)
    # margin 1 on diff 1 gives log 2
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(
        math.log(2)
    )


def test_bradley_terry_is_finite_and_has_the_right_gradient():
    rc = torch.tensor([-100.0, 0.0], requires_grad=True)
    rr = torch.tensor([100.0, 0.0])
    loss = bradley_terry_loss(rc, rr)
    assert torch.isfinite(loss) and loss.item() == pytest.approx((200.0 + math.log(2)) / 2, rel=1e-6)
    loss.backward()
    # d/dr_c of -log σ(d) / B = -(1 - σ(d)) / B: -0.5 for d = -200, -0.25 for d = 0
    assert rc.grad.tolist() == pytest.approx([-0.5, -0.25], abs=1e-6)


def test_accuracy_counts_strict_wins():
    rc = torch.tensor([1.0, 0.0, 2.0, 5.0])
    rr = torch.tensor([0.0, 1.0, 2.0, -1.0])
    assert preference_accuracy(rc, rr).item() == pytest.approx(0.5)  # a tie counts as wrong


def test_center_loss_and_normalisation():
    assert center_loss(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 2.0])).item() == pytest.approx((4 + 1) / 2)
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, std = reward_stats(r)
    assert mean == pytest.approx(2.5) and std == pytest.approx(math.sqrt(1.25))
    z = normalise(r, mean, std)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert reward_stats(torch.tensor([2.0, 2.0]))[1] > 0  # floored std
    with pytest.raises(ValueError):
        reward_stats(torch.tensor([]))
