"""What the benchmarks against TRL 1.12's trainers share (``ppo_vs_trl``, ``optimisers_vs_trl``).

- :func:`prepare` (our environment): the policy, reward-model and prompt files both trainers read;
- :func:`trl_tokenizer`, :func:`chat_prompt`, :func:`prompt_ids`, :func:`lora_config` (the TRL worker's
  environment): the same tokenizer settings, chat-templated prompts and LoRA on TRL's side;
- :class:`PhaseTimer` (either environment): seconds per phase, by wrapping the functions a trainer calls.

Only the standard library is imported at the top: the TRL worker (its own virtual environment) imports this module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.prompts import PROMPTS, SYSTEM

TRL_ENV = "trl-1.12"
TRL_REQUIREMENT = "trl==1.12.0 requests"
"""TRL 1.12 and ``requests``, which its GRPO / RLOO trainers import (their vLLM client) without declaring it."""


def prepare(work: Path, model: str, **extra: Any) -> dict:
    """Policy folder, reward-model folder and prompts, shared by both trainers; ``spec.json`` holds the policy
    spec, its folder and ``extra`` (e.g. the configuration both sides read)."""
    from transformers import AutoModelForSequenceClassification

    from components.models.base_model import resolve_model_dir
    from components.models.reward.model import RewardModel, build_reward_model

    policy_dir = resolve_model_dir(model)
    rm, tok = build_reward_model(model, seed=0)  # the backbone with a fresh scalar head (N(0, 1/(H+1)))
    RewardModel(rm, tok, mean=0.0, std=1.0, max_length=256).save(work / "reward")
    # The folder must load as a plain sequence classifier, as TRL loads it.
    check = AutoModelForSequenceClassification.from_pretrained(str(work / "reward"), num_labels=1)
    if check.num_labels != 1:
        raise RuntimeError(f"{work / 'reward'}: expected one label, got {check.num_labels}")
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    spec = {"policy": model, "policy_dir": str(policy_dir), **extra}
    (work / "spec.json").write_text(json.dumps(spec))
    return spec


def read_spec(work: Path) -> dict:
    return json.loads((work / "spec.json").read_text())


def read_prompts(work: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in (work / "prompts.jsonl").read_text().splitlines()]


def lora_config(c: dict):
    """TRL's side of the policy's LoRA: ``c``'s rank, alpha and target modules (as ours), no dropout."""
    from peft import LoraConfig

    return LoraConfig(
        r=c["lora_r"],
        lora_alpha=c["lora_alpha"],
        lora_dropout=0.0,
        target_modules=c["lora_target_modules"],
        task_type="CAUSAL_LM",
    )


def trl_tokenizer(policy_dir: str):
    """The policy's tokenizer as TRL's side uses it: left padding, and a pad token that never occurs in the text.

    TRL masks by ``token != pad_token_id`` in places; SmolLM2's pad is its EOS, which also closes every chat turn
    of the prompt. The unused ``<|endoftext|>`` (its unk token) keeps the prompt intact."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir, padding_side="left")
    tok.pad_token = tok.unk_token
    return tok


def chat_prompt(prompt: str) -> list[dict[str, str]]:
    """A prompt as TRL's conversational datasets hold it: our system prompt, then the user turn."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def prompt_ids(tok, prompts: list[str]) -> list[list[int]]:
    """Chat-templated prompt token ids, ending with the assistant turn's opening."""
    ids = [
        tok.apply_chat_template(chat_prompt(p), add_generation_prompt=True, tokenize=True, return_dict=False)
        for p in prompts
    ]
    return [x["input_ids"] if isinstance(x, dict) else list(x) for x in ids]


class PhaseTimer:
    """Seconds spent per phase since the last :meth:`take`, by wrapping the functions that do each phase."""

    def __init__(self, phases: tuple[str, ...], cuda: bool = False) -> None:
        self.cuda = cuda
        self.spent = dict.fromkeys(phases, 0.0)

    def now(self) -> float:
        """A clock reading after the device's queued work is done (CUDA runs asynchronously)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, fn: Callable, phase_of: Callable[..., str | None]) -> Callable:
        """``fn`` timed; ``phase_of(*args, **kwargs)`` says which phase a call belongs to (None: not timed)."""

        def wrapper(*a, **kw):
            t = self.now()
            try:
                return fn(*a, **kw)
            finally:
                phase = phase_of(*a, **kw)
                if phase:
                    self.spent[phase] += self.now() - t

        return wrapper

    def take(self) -> dict[str, float]:
        """The seconds per phase so far, and a fresh start."""
        out = dict(self.spent)
        for p in self.spent:
            self.spent[p] = 0.0
        return out
