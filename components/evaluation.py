"""Evaluate a policy on held-out prompts: reward-model score, gold-annotator score, KL to the reference.

Letters: B batch, P prompt tokens (left padded), R response tokens, V vocabulary.

The gold annotator stands in for human raters; it is used here (and to label feedback) only, never by
the reward model or PPO.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.generation import generate, position_ids_from_mask
from components.ppo import core

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyEval:
    """Means over the held-out prompts (one sampled reply each)."""

    reward_score: float
    gold_score: float
    kl: float
    """Mean over replies of the summed per-token log-ratio log π(y|x) − log π_ref(y|x) (k1 estimator)."""
    eos_fraction: float
    mean_tokens: float
    n: int
    examples: list[tuple[str, str]] = field(default_factory=list)


def _logits(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    return out.logits  # shape: (B, P+R, V)


@torch.no_grad()
def sequence_kl(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Summed k1 log-ratio of each sampled response under policy vs reference; shape (B,)."""
    ids = torch.cat([query_ids, response_ids], dim=1)  # shape: (B, P+R)
    mask = torch.cat([query_mask, response_mask], dim=1)  # shape: (B, P+R)
    p = query_ids.shape[1]
    # logits at position t predict token t+1: the response's logits are positions P-1 .. P+R-2
    pol = _logits(policy, ids, mask)[:, p - 1 : -1]  # shape: (B, R, V)
    ref = _logits(reference, ids, mask)[:, p - 1 : -1]  # shape: (B, R, V)
    logp = core.logprobs_from_logits(pol, response_ids, temperature)  # shape: (B, R)
    ref_logp = core.logprobs_from_logits(ref, response_ids, temperature)  # shape: (B, R)
    return (core.kl_per_token(logp, ref_logp, "k1") * response_mask).sum(dim=1)  # shape: (B,)


def evaluate_policy(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    reward: Callable[[list[str], list[str]], torch.Tensor],
    gold: Callable[[str, str], float],
    *,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 16,
    seed: int = 0,
) -> PolicyEval:
    """Sample one reply per prompt (seeded), then score it with the reward model and the gold annotator."""
    rewards, golds, kls, ended, lengths, examples = [], [], [], [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        out = generate(
            policy,
            tok,
            chunk,
            system=system,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            generator_seed=seed + start,
        )
        rewards.append(reward(chunk, out.texts).float().cpu())
        golds.extend(gold(p, r) for p, r in zip(chunk, out.texts))
        kls.append(
            sequence_kl(
                policy, reference, out.query_ids, out.query_mask, out.response_ids, out.response_mask, temperature
            )
        )
        ended.append(out.ended.float())
        lengths.append(out.response_mask.sum(dim=1).float())
        examples.extend(zip(chunk, out.texts))
    return PolicyEval(
        reward_score=torch.cat(rewards).mean().item(),
        gold_score=float(sum(golds) / len(golds)),
        kl=torch.cat(kls).mean().item(),
        eos_fraction=torch.cat(ended).mean().item(),
        mean_tokens=torch.cat(lengths).mean().item(),
        n=len(golds),
        examples=examples[:3],
    )
