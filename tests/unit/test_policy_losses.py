"""The optimisers' advantages and losses against the reference formulas, written out as plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from components.models.policy import losses as L


def rand_batch(B: int = 6, R: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, R, generator=g) * 3
    old = logp + 0.3 * torch.randn(B, R, generator=g)
    ref = logp + 0.5 * torch.randn(B, R, generator=g)
    lengths = torch.randint(1, R + 1, (B,), generator=g)
    mask = (torch.arange(R)[None] < lengths[:, None]).float()
    return logp, old, ref, mask


def test_sequence_logprob_sums_or_averages_real_tokens():
    logp, _, _, mask = rand_batch()
    for i in range(logp.shape[0]):
        n = int(mask[i].sum())
        assert L.sequence_logprob(logp, mask)[i] == pytest.approx(logp[i, :n].sum().item(), abs=1e-6)
        assert L.sequence_logprob(logp, mask, average=True)[i] == pytest.approx(logp[i, :n].mean().item(), abs=1e-6)


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    k = 4
    r = torch.randn(3 * k, generator=torch.Generator().manual_seed(1))
    adv = L.rloo_advantages(r, k)
    for g in range(3):
        for i in range(k):
            others = [r[g * k + j].item() for j in range(k) if j != i]
            assert adv[g * k + i].item() == pytest.approx(r[g * k + i].item() - sum(others) / (k - 1), abs=1e-6)
    # leave-one-out advantages of a group sum to zero, and equal k/(k-1) (r - mean)
    assert L.group_view(adv, k).sum(1).abs().max() < 1e-5
    mean = L.group_view(r, k).mean(1, keepdim=True)
    assert torch.allclose(L.group_view(adv, k), k / (k - 1) * (L.group_view(r, k) - mean), atol=1e-6)
    with pytest.raises(ValueError, match="k >= 2"):
        L.rloo_advantages(r, 1)
    with pytest.raises(ValueError, match="groups of k=5"):
        L.rloo_advantages(r, 5)


def test_sequence_kl_penalty_is_score_minus_beta_times_summed_k1():
    logp, _, ref, mask = rand_batch()
    scores = torch.randn(6)
    rewards, seq_kl = L.sequence_kl_penalised_rewards(scores, logp, ref, mask, 0.1)
    for i in range(6):
        n = int(mask[i].sum())
        kl = sum(logp[i, t].item() - ref[i, t].item() for t in range(n))
        assert seq_kl[i].item() == pytest.approx(kl, abs=1e-5)
        assert rewards[i].item() == pytest.approx(scores[i].item() - 0.1 * kl, abs=1e-5)


def test_rloo_loss_matches_trl_sequence_ratio_clipping():
    logp, old, _, mask = rand_batch()
    adv = torch.randn(6)
    out = L.rloo_loss(logp, old, adv, mask, clip=0.2)
    want, clipped_n = 0.0, 0
    for i in range(6):
        n = int(mask[i].sum())
        ratio = math.exp(logp[i, :n].sum().item() - old[i, :n].sum().item())
        a, b = -adv[i].item() * ratio, -adv[i].item() * min(max(ratio, 0.8), 1.2)
        want += max(a, b) / 6
        clipped_n += b > a
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.clipfrac.item() == pytest.approx(clipped_n / 6)


def test_rloo_loss_without_clipping_has_the_reinforce_gradient():
    logp, _, _, mask = rand_batch()
    logp = logp.clone().requires_grad_(True)
    adv = torch.randn(6)
    L.rloo_loss(logp, logp.detach(), adv, mask, clip=None).loss.backward()
    # d/dlogp_t of -A * exp(sum logp - sum old) at logp = old: -A on every real token, / B for the mean
    assert torch.allclose(logp.grad, -adv[:, None] * mask / 6, atol=1e-6)


def test_group_normalised_advantages_and_dr_grpo_centring():
    k = 4
    r = torch.randn(2 * k, generator=torch.Generator().manual_seed(2))
    adv = L.group_normalised_advantages(r, k)
    centred = L.group_normalised_advantages(r, k, scale=False)
    for g in range(2):
        vals = [r[g * k + j].item() for j in range(k)]
        mean = sum(vals) / k
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (k - 1))  # torch.std: Bessel-corrected, as TRL
        for j in range(k):
            assert adv[g * k + j].item() == pytest.approx((vals[j] - mean) / (std + 1e-4), abs=1e-5)
            assert centred[g * k + j].item() == pytest.approx(vals[j] - mean, abs=1e-6)
    # a group whose samples all score the same gives zero advantages, not a division by zero
    assert L.group_normalised_advantages(torch.ones(4), 4).abs().max() == 0


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_grpo_loss_matches_the_token_loop(loss_type):
    logp, old, ref, mask = rand_batch()
    adv = torch.randn(6)
    clip, beta, width = 0.2, 0.05, 7
    out = L.grpo_loss(logp, old, ref, adv, mask, clip=clip, kl_coef=beta, loss_type=loss_type, max_tokens=width)
    per_seq, total, kls = [], 0.0, []
    for i in range(6):
        n = int(mask[i].sum())
        terms = []
        for t in range(n):
            rho = math.exp(logp[i, t].item() - old[i, t].item())
            a = adv[i].item()
            d = ref[i, t].item() - logp[i, t].item()
            k3 = math.exp(d) - d - 1
            kls.append(k3)
            terms.append(-min(rho * a, min(max(rho, 1 - clip), 1 + clip) * a) + beta * k3)
        per_seq.append(sum(terms) / n)
        total += sum(terms)
    want = sum(per_seq) / 6 if loss_type == "grpo" else total / (6 * width)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.kl.item() == pytest.approx(sum(kls) / len(kls), rel=1e-5)


def test_dr_grpo_weighs_every_token_alike_whatever_the_reply_length():
    # one long and one short reply, same per-token loss: grpo gives each reply equal weight, dr_grpo each token
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0]])
    adv = torch.ones(2)
    L.grpo_loss(
        logp, logp.detach(), logp.detach(), adv, mask, clip=0.2, kl_coef=0.0, loss_type="dr_grpo"
    ).loss.backward()
    g = logp.grad
    assert g[0, 0] == pytest.approx(g[1, 0].item())
    logp.grad = None
    L.grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, clip=0.2, kl_coef=0.0).loss.backward()
    assert logp.grad[1, 0] == pytest.approx(4 * logp.grad[0, 0].item())


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_preference_loss_matches_dpo_and_ipo(loss_type):
    g = torch.Generator().manual_seed(3)
    c, r, rc, rr = (torch.randn(5, generator=g) for _ in range(4))
    beta = 0.1
    out = L.preference_loss(c, r, rc, rr, beta, loss_type)
    want = 0.0
    for i in range(5):
        h = (c[i] - rc[i] - (r[i] - rr[i])).item()
        want += (-math.log(1 / (1 + math.exp(-beta * h))) if loss_type == "sigmoid" else (h - 1 / (2 * beta)) ** 2) / 5
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert torch.allclose(out.chosen_reward, beta * (c - rc)) and torch.allclose(out.rejected_reward, beta * (r - rr))
    assert out.accuracy.item() == pytest.approx(float(((c - rc) > (r - rr)).float().mean()))


def test_dpo_at_the_reference_is_log_2_and_weights_drop_pairs():
    z = torch.zeros(4)
    assert L.preference_loss(z, z, z, z, 0.1).loss.item() == pytest.approx(math.log(2))
    c = torch.tensor([1.0, -1.0, 0.0, 0.0])
    w = torch.tensor([1.0, 0.0, 1.0, 0.0])
    full = L.preference_loss(c, z, z, z, 1.0)
    kept = L.preference_loss(c, z, z, z, 1.0, weights=w)
    assert kept.loss.item() == pytest.approx((-F_logsig(1.0) - F_logsig(0.0)) / 2)
    assert full.loss.item() != pytest.approx(kept.loss.item())
    with pytest.raises(ValueError, match="beta"):
        L.preference_loss(z, z, z, z, 0.0)


def test_rpo_adds_the_chosen_replies_token_mean_nll_to_dpo():
    from components.config import load_section
    from components.config.policy import PolicyConfig
    from components.models.policy.algorithms.base import Forward
    from components.models.policy.algorithms.dpo import DPO
    from components.models.policy.batch import RolloutBatch

    logp, _, ref, mask = rand_batch(B=6, R=5, seed=4)
    B, R = logp.shape
    ids = torch.zeros(B, R, dtype=torch.long)
    part = RolloutBatch(["p"] * B, ["r"] * B, ids, torch.ones(B, R), 0, ids, mask, torch.ones(B, dtype=torch.bool),
                        logp=logp, ref_logp=ref)  # fmt: skip
    weight = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0])  # the middle pair is a tie: no preference, no NLL

    def loss(alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = load_section(PolicyConfig, "policy", {"policy": {"algorithm": "dpo", "dpo": {"rpo_alpha": alpha}}})
        return DPO(cfg).loss(part, Forward(None, logp, None), {"weight": weight})

    plain, _ = loss(0.0)
    rpo, stats = loss(0.5)
    want_nll, n = 0.0, 0
    for i in (0, 4):  # chosen rows of the decisive pairs
        for t in range(R):
            if mask[i, t]:
                want_nll, n = want_nll - logp[i, t].item(), n + 1
    assert stats["loss/chosen_nll"].item() == pytest.approx(want_nll / n, rel=1e-5)
    assert rpo.item() == pytest.approx(plain.item() + 0.5 * want_nll / n, rel=1e-5)
    assert stats["loss/policy"].item() == pytest.approx(plain.item(), rel=1e-6)


def F_logsig(x: float) -> float:
    return math.log(1 / (1 + math.exp(-x)))


def test_preference_labels_and_best_of_group():
    scores = torch.tensor([0.2, 0.5, 1.0, -1.0, 0.3, 0.3])
    first, decisive = L.preference_labels(scores)
    assert first.tolist() == [False, True, True] and decisive.tolist() == [True, True, False]
    assert L.best_of_group(torch.tensor([0.1, 0.9, 0.3, 2.0, 2.0, -1.0]), 3).tolist() == [1, 3]


def test_sft_loss_is_the_mean_token_nll():
    logp, _, _, mask = rand_batch()
    nll = -sum(logp[i, t].item() for i in range(6) for t in range(int(mask[i].sum()))) / mask.sum().item()
    assert L.sft_loss(logp, mask).item() == pytest.approx(nll, rel=1e-6)
