"""PPO math against hand-computed values and plain-python loop references."""

from __future__ import annotations

import math

import pytest
import torch

from components.models.policy import ppo_math

# ----------------------------------------------------------------------------- loop references


def loop_masked_mean(x, mask):
    vals = [x[i][j] for i in range(len(x)) for j in range(len(x[0])) if mask[i][j]]
    return sum(vals) / len(vals)


def loop_masked_var(x, mask):
    vals = [x[i][j] for i in range(len(x)) for j in range(len(x[0])) if mask[i][j]]
    mu = sum(vals) / len(vals)
    return sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)


def loop_gae(rewards, values, mask, gamma, lam):
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = sum(mask[b])  # right padded: tokens 0..n-1 are real
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b][t + 1] if t + 1 < n else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
    ret = [[(adv[b][t] + values[b][t]) if mask[b][t] else 0.0 for t in range(T)] for b in range(B)]
    return adv, ret


def loop_policy_loss(logp, old, adv, mask, clip):
    terms, clipped_n, n = [], 0, 0
    for b in range(len(logp)):
        for t in range(len(logp[0])):
            if not mask[b][t]:
                continue
            r = math.exp(logp[b][t] - old[b][t])
            u, c = -adv[b][t] * r, -adv[b][t] * min(max(r, 1 - clip), 1 + clip)
            terms.append(max(u, c))
            clipped_n += c > u
            n += 1
    return sum(terms) / n, clipped_n / n


def loop_value_loss(v, old, ret, mask, clip):
    terms = []
    for b in range(len(v)):
        for t in range(len(v[0])):
            if mask[b][t]:
                vc = old[b][t] + min(max(v[b][t] - old[b][t], -clip), clip)
                terms.append(max((v[b][t] - ret[b][t]) ** 2, (vc - ret[b][t]) ** 2))
    return 0.5 * sum(terms) / len(terms)


def T(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    B, L = 4, 6
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate([6, 3, 1, 4]):
        mask[b, :n] = 1
    return {
        "x": torch.randn(B, L, generator=g, dtype=torch.float64),
        "y": torch.randn(B, L, generator=g, dtype=torch.float64),
        "z": torch.randn(B, L, generator=g, dtype=torch.float64),
        "mask": mask,
    }


# ----------------------------------------------------------------------------- masked statistics


def test_masked_mean_var_hand_values():
    x, m = T([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert ppo_math.masked_mean(x, m).item() == pytest.approx(2.0)
    assert ppo_math.masked_var(x, m).item() == pytest.approx(1.0)  # values 1,2,3: unbiased var = 1
    assert ppo_math.masked_var(x, m, unbiased=False).item() == pytest.approx(2 / 3)
    assert ppo_math.masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 3.0])


def test_masked_stats_match_loop(batch):
    x, m = batch["x"], batch["mask"]
    assert ppo_math.masked_mean(x, m).item() == pytest.approx(loop_masked_mean(x.tolist(), m.tolist()))
    assert ppo_math.masked_var(x, m).item() == pytest.approx(loop_masked_var(x.tolist(), m.tolist()))


def test_masked_whiten_hand_and_loop(batch):
    w = ppo_math.masked_whiten(T([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert w.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    x, m = batch["x"], batch["mask"]
    w = ppo_math.masked_whiten(x, m)
    mu, var = loop_masked_mean(x.tolist(), m.tolist()), loop_masked_var(x.tolist(), m.tolist())
    expected = [[(x[b, t].item() - mu) / math.sqrt(var + 1e-8) if m[b, t] else 0.0 for t in range(6)] for b in range(4)]
    assert torch.allclose(w, T(expected))
    assert ppo_math.masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-9)
    kept = ppo_math.masked_whiten(x, m, shift_mean=False)
    assert ppo_math.masked_mean(kept, m).item() == pytest.approx(mu)


def test_masked_var_refuses_a_single_value():
    with pytest.raises(ValueError, match="at least 2"):
        ppo_math.masked_var(T([[1.0, 2.0]]), torch.tensor([[1, 0]]))


# ----------------------------------------------------------------------------- logprobs, entropy, KL


def test_logprobs_from_logits_hand_values_and_temperature():
    logits = T([[[0.0, math.log(3.0)]]])  # probs 1/4, 3/4
    assert ppo_math.logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # temperature 2 halves the logits: probs 1/(1+sqrt3), sqrt3/(1+sqrt3)
    lp = ppo_math.logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0).item()
    assert lp == pytest.approx(math.log(1 / (1 + math.sqrt(3))))
    with pytest.raises(ValueError):
        ppo_math.logprobs_from_logits(logits, torch.tensor([[0]]), temperature=0.0)


def test_entropy_hand_values_and_loop():
    assert ppo_math.entropy_from_logits(T([[[0.0, 0.0]]])).item() == pytest.approx(math.log(2))
    assert ppo_math.entropy_from_logits(T([[[5.0, 5.0, 5.0, 5.0]]])).item() == pytest.approx(math.log(4))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    ent = ppo_math.entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            z = logits[b, t].tolist()
            s = sum(math.exp(v) for v in z)
            assert ent[b, t].item() == pytest.approx(-sum(math.exp(v) / s * math.log(math.exp(v) / s) for v in z))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_elements", [1, 2 * 5 * 11, 1 << 22])  # one position per chunk, 5, all at once
def test_chunked_logprobs_equal_the_full_tensor_functions(dtype, max_elements):
    g = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(2, 13, 11, generator=g)).to(dtype)  # shape: (B, T, V)
    tokens = torch.randint(0, 11, (2, 13), generator=g)
    logp, ent = ppo_math.chunked_logprobs(logits, tokens, 0.7, with_entropy=True, max_elements=max_elements)
    # the same float32 values as today's functions (bf16 logits are converted to float32 by both first)
    assert torch.allclose(logp, ppo_math.logprobs_from_logits(logits, tokens, 0.7), atol=1e-5, rtol=0)
    assert torch.allclose(ent, ppo_math.entropy_from_logits(logits.float() / 0.7), atol=1e-5, rtol=0)
    assert logp.dtype == ent.dtype == torch.float32
    only, none = ppo_math.chunked_logprobs(logits, tokens, 0.7, max_elements=max_elements)
    assert none is None and torch.equal(only, logp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_elements", [1, 2 * 5 * 11, 1 << 22])  # one position per chunk, 5, all at once
def test_chunked_token_kl_is_the_exact_kl_of_the_tempered_distributions(dtype, max_elements):
    g = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(2, 13, 11, generator=g)).to(dtype)  # shape: (B, T, V)
    ref = (3 * torch.randn(2, 13, 11, generator=g)).to(dtype)
    kl = ppo_math.chunked_token_kl(logits, ref, 0.7, max_elements=max_elements)
    p = torch.distributions.Categorical(logits=logits.float() / 0.7)
    q = torch.distributions.Categorical(logits=ref.float() / 0.7)
    assert kl.shape == (2, 13) and kl.dtype == torch.float32
    assert torch.allclose(kl, torch.distributions.kl_divergence(p, q), atol=1e-5, rtol=1e-5)
    assert (kl >= 0).all() and kl.mean() > 0.5  # two random distributions: well apart
    assert torch.equal(ppo_math.chunked_token_kl(logits, logits, 0.7, max_elements=max_elements), torch.zeros(2, 13))
    mask = torch.ones(2, 13)
    mask[0, 9:] = 0  # a reply that ended at position 9: later positions do not count
    per_reply = ppo_math.reply_kl(logits, ref, mask, 0.7)  # shape: (B,)
    assert torch.allclose(per_reply, torch.stack([kl[0, :9].sum(), kl[1].sum()]), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="differ"):
        ppo_math.chunked_token_kl(logits, ref[:, :5], 0.7)
    with pytest.raises(ValueError, match="temperature"):
        ppo_math.chunked_token_kl(logits, ref, 0.0)


def test_chunked_token_kl_is_k1_averaged_over_the_sampled_token_with_less_spread():
    """The Rao-Blackwell relation the KL bound relies on: k1 at a position, averaged over the token the policy
    samples there, is the exact KL; k1 of one sampled token is spread around it, the exact KL is not."""
    g = torch.Generator().manual_seed(6)
    logits, ref = 2 * torch.randn(1, 4, 7, generator=g), 2 * torch.randn(1, 4, 7, generator=g)
    exact = ppo_math.chunked_token_kl(logits, ref, 1.0)[0]  # shape: (4,)
    tokens = torch.distributions.Categorical(logits=logits[0]).sample((200_000,))  # shape: (N, 4)
    logp = torch.log_softmax(logits[0], -1).gather(-1, tokens.T).T  # shape: (N, 4)
    logq = torch.log_softmax(ref[0], -1).gather(-1, tokens.T).T
    k1 = ppo_math.kl_per_token(logp, logq, "k1")  # shape: (N, 4)
    assert torch.allclose(k1.mean(0), exact, atol=0.03)
    assert (k1.std(0) > 0.3).all()


def test_chunked_logprobs_gradient_equals_the_full_tensor_function():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 6, 9, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 9, (3, 6), generator=g)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ppo_math.chunked_logprobs(a, tokens, 0.5, max_elements=9)[0].sum().backward()
    ppo_math.logprobs_from_logits(b, tokens, 0.5).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        ppo_math.chunked_logprobs(logits, tokens, 0.0)
    empty, _ = ppo_math.chunked_logprobs(logits[:, :0], tokens[:, :0])
    assert empty.shape == (3, 0)


def test_kl_estimators_hand_values():
    logp, ref = T([[math.log(0.5), math.log(0.2)]]), T([[math.log(0.25), math.log(0.2)]])
    k1 = ppo_math.kl_per_token(logp, ref, "k1")
    assert k1.tolist()[0] == pytest.approx([math.log(2), 0.0])
    k3 = ppo_math.kl_per_token(logp, ref, "k3")  # r = q/p = 0.5: (r - 1) - log r = -0.5 + log 2
    assert k3.tolist()[0] == pytest.approx([-0.5 + math.log(2), 0.0])
    with pytest.raises(ValueError):
        ppo_math.kl_per_token(logp, ref, "k2")  # type: ignore[arg-type]


def test_kl_estimators_loop_and_unbiased(batch):
    lp, rp = -batch["x"].abs(), -batch["y"].abs()
    k3 = ppo_math.kl_per_token(lp, rp, "k3")
    for b in range(4):
        for t in range(6):
            r = math.exp(rp[b, t].item() - lp[b, t].item())
            assert k3[b, t].item() == pytest.approx(r - 1 - math.log(r))
    assert (k3 >= 0).all()
    # Both are unbiased for the exact KL when tokens are sampled from the policy.
    g = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    exact = (p * (p / q).log()).sum().item()
    idx = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp_s, lq_s = p.log()[idx].unsqueeze(0), q.log()[idx].unsqueeze(0)
    assert ppo_math.kl_per_token(lp_s, lq_s, "k1").mean().item() == pytest.approx(exact, abs=0.01)
    assert ppo_math.kl_per_token(lp_s, lq_s, "k3").mean().item() == pytest.approx(exact, abs=0.01)


def test_missing_eos_penalty():
    out = ppo_math.apply_missing_eos_penalty(T([1.0, 2.0]), torch.tensor([True, False]), 1.5)
    assert out.tolist() == [1.0, 0.5]


def test_score_stats_and_normalise_scores_hand_values():
    mean, std = ppo_math.score_stats(T([1.0, 3.0]))
    assert (mean, std) == (2.0, 1.0)  # population std
    assert ppo_math.normalise_scores(T([1.0, 3.0, 4.0]), mean, std).tolist() == [-1.0, 1.0, 2.0]
    assert ppo_math.score_stats(T([5.0, 5.0]))[1] == 1e-6  # a constant scorer cannot divide by zero
    with pytest.raises(ValueError):
        ppo_math.score_stats(T([1.0]))


def test_kl_shaped_rewards_hand_values():
    logp = T([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    ref = T([[-1.5, -0.5, -1.0], [-2.0, -3.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = ppo_math.kl_shaped_rewards(T([10.0, 20.0]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, T([[0.5, -0.5, 0.0], [0.0, 1.0, 0.0]]))
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.05, 10.0])
    assert rewards.tolist()[1] == pytest.approx([0.0, 20.0 - 0.1, 0.0])  # score on last real token, pad zero


def test_kl_shaped_rewards_loop(batch):
    lp, rp, m = -batch["x"].abs(), -batch["y"].abs(), batch["mask"]
    scores = T([1.0, -2.0, 3.0, 0.5])
    rewards, _ = ppo_math.kl_shaped_rewards(scores, lp, rp, m, kl_coef=0.2, estimator="k3")
    for b in range(4):
        n = int(m[b].sum())
        for t in range(6):
            r = math.exp(rp[b, t].item() - lp[b, t].item())
            want = (-0.2 * (r - 1 - math.log(r)) + (scores[b].item() if t == n - 1 else 0.0)) if t < n else 0.0
            assert rewards[b, t].item() == pytest.approx(want)


def test_empty_response_row_is_an_error():
    with pytest.raises(ValueError, match="at least one token"):
        ppo_math.last_token_index(torch.tensor([[1, 0], [0, 0]]))


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_values():
    # one sequence, 3 tokens, gamma=1, lam=0.5; rewards (0, 0, 1), values (0.5, 0.5, 0.5)
    adv, ret = ppo_math.gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.5, 0.5]]), torch.tensor([[1, 1, 1]]), gamma=1.0, lam=0.5)
    # deltas: d0 = 0 + .5 - .5 = 0, d1 = 0, d2 = 1 - .5 = .5; A2 = .5, A1 = 0 + .5*.5 = .25, A0 = .125
    assert adv.tolist()[0] == pytest.approx([0.125, 0.25, 0.5])
    assert ret.tolist()[0] == pytest.approx([0.625, 0.75, 1.0])


def test_gae_lambda_one_gamma_one_is_monte_carlo_minus_value():
    r, v, m = T([[1.0, 2.0, 3.0, 99.0]]), T([[0.1, 0.2, 0.3, 99.0]]), torch.tensor([[1, 1, 1, 0]])
    adv, ret = ppo_math.gae(r, v, m, gamma=1.0, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([6 - 0.1, 5 - 0.2, 3 - 0.3, 0.0])
    assert ret.tolist()[0] == pytest.approx([6.0, 5.0, 3.0, 0.0])


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 0.0)])
def test_gae_matches_loop(batch, gamma, lam):
    r, v, m = batch["x"], batch["y"], batch["mask"]
    adv, ret = ppo_math.gae(r, v, m, gamma, lam)
    want_adv, want_ret = loop_gae(r.tolist(), v.tolist(), m.tolist(), gamma, lam)
    assert torch.allclose(adv, T(want_adv))
    assert torch.allclose(ret, T(want_ret))


# ----------------------------------------------------------------------------- losses


def test_policy_loss_hand_values():
    # ratios e^0 = 1 (adv 1), e^{ln 1.5} = 1.5 (adv 2, clipped to 1.2), e^{ln .5} = .5 (adv -1, clipped .8)
    logp = T([[0.0, math.log(1.5), math.log(0.5)]])
    out = ppo_math.clipped_policy_loss(
        logp, T([[0.0, 0.0, 0.0]]), T([[1.0, 2.0, -1.0]]), torch.tensor([[1, 1, 1]]), 0.2
    )
    # per token max(-A r, -A clip r): -1, max(-3, -2.4) = -2.4, max(.5, .8) = .8 -> mean = -2.6/3
    assert out.loss.item() == pytest.approx(-2.6 / 3)
    assert out.clipfrac.item() == pytest.approx(2 / 3)
    assert out.ratio_mean.item() == pytest.approx(1.0)
    assert out.approx_kl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)


def test_policy_loss_matches_loop_and_gradient_is_zero_when_clipped(batch):
    lp, old, adv, m = batch["x"] * 0.3, batch["y"] * 0.3, batch["z"], batch["mask"]
    out = ppo_math.clipped_policy_loss(lp, old, adv, m, 0.2)
    want, want_cf = loop_policy_loss(lp.tolist(), old.tolist(), adv.tolist(), m.tolist(), 0.2)
    assert out.loss.item() == pytest.approx(want)
    assert out.clipfrac.item() == pytest.approx(want_cf)
    x = T([[math.log(2.0)]]).requires_grad_()  # ratio 2 with positive advantage: clipped, no gradient
    ppo_math.clipped_policy_loss(x, T([[0.0]]), T([[1.0]]), torch.tensor([[1]]), 0.2).loss.backward()
    assert x.grad.item() == 0.0


def test_value_loss_hand_values_and_loop(batch):
    # v=2, old=1, ret=3, clip .2: unclipped (2-3)^2 = 1, clipped (1.2-3)^2 = 3.24 -> 0.5 * 3.24
    loss, cf = ppo_math.clipped_value_loss(T([[2.0]]), T([[1.0]]), T([[3.0]]), torch.tensor([[1]]), 0.2)
    assert loss.item() == pytest.approx(1.62)
    assert cf.item() == 1.0
    v, old, ret, m = batch["x"], batch["y"], batch["z"], batch["mask"]
    loss, _ = ppo_math.clipped_value_loss(v, old, ret, m, 0.3)
    assert loss.item() == pytest.approx(loop_value_loss(v.tolist(), old.tolist(), ret.tolist(), m.tolist(), 0.3))


def test_approx_kl_zero_when_equal_and_hand_value():
    m = torch.tensor([[1, 1, 0]])
    assert ppo_math.approx_kl(T([[0.1, 0.2, 5.0]]), T([[0.1, 0.2, 0.0]]), m).item() == 0.0
    assert ppo_math.approx_kl(T([[1.0, 0.0, 0.0]]), T([[0.0, 0.0, 0.0]]), m).item() == pytest.approx(0.25)


# ----------------------------------------------------------------------------- KL controllers, LR


def test_adaptive_kl_controller_hand_values():
    ctl = ppo_math.AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=100)  # error clip(0.5) = 0.2 -> beta * (1 + 0.2 * 0.01)
    assert ctl.value == pytest.approx(0.2 * 1.002)
    ctl.update(current_kl=5.4, n_steps=1000)  # error -0.1 -> * (1 - 0.01)
    assert ctl.value == pytest.approx(0.2 * 1.002 * 0.99)
    fresh = ppo_math.AdaptiveKLController(1.0, 6.0, 10_000)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.value == ctl.value


def test_adaptive_kl_controller_loop_reference():
    ctl, beta = ppo_math.AdaptiveKLController(0.1, 2.0, 500), 0.1
    for kl in [0.5, 1.0, 3.0, 10.0, 2.0, 1.9]:
        ctl.update(kl, 16)
        beta *= 1 + min(max(kl / 2.0 - 1, -0.2), 0.2) * 16 / 500
    assert ctl.value == pytest.approx(beta)


def test_fixed_kl_controller_stays():
    ctl = ppo_math.make_kl_controller(False, 0.05, 6.0, 100)
    ctl.update(100.0, 64)
    assert ctl.value == 0.05


def test_linear_decay():
    assert [ppo_math.linear_decay(s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
