"""The reward model: a transformers backbone with a scalar head, read at the last real token.

Letters: B preference pairs, N = 2B sequences (chosen then rejected) in one forward pass, T tokens
(right padded to the longest sequence of the batch), H hidden size.

The text scored is the backbone's chat template applied to ``[user: prompt, assistant: response]``;
the score is the head applied to the hidden state of the reply's closing EOS token. The tokenizer's pad
token is its EOS token (SmolLM2), so the last real token is found from the attention mask by position.
transformers' own ``LlamaForSequenceClassification.forward`` (5.23) instead takes the rightmost token
whose id differs from ``pad_token_id``, which skips that closing EOS; we therefore run the backbone and
the ``score`` head ourselves (:func:`sequence_scores`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from components.data.prompt_pool import Prompt, as_messages
from components.models.base_model import TINY_SPEC, ModelLoadError, accelerator_device, resolve_model_dir
from components.models.generation import encode_chat, encode_text, position_ids_from_mask
from components.models.precision import fixed_precision, precision_name
from components.models.reward.losses import normalise
from components.models.shared_prefix import MIN_SHARED, common_prefix_length, prefix_cache, suffix_inputs

log = logging.getLogger(__name__)

NORMALIZATION_KEY = "reward_normalization"
"""Key in the saved ``config.json`` holding ``{"mean", "std", "max_length", "bf16"}``."""


# ---------------------------------------------------------------------------------------------
# Text and batches
# ---------------------------------------------------------------------------------------------


def reward_text(tok: PreTrainedTokenizerBase, prompt: Prompt, response: str) -> str:
    """The chat-template text of one prompt (a user message, or a conversation with its real roles) and its
    reply, ending at the reply's closing EOS token. For reading: the model is fed :func:`reward_ids`."""
    messages = [*as_messages(prompt), {"role": "assistant", "content": response}]
    text = tok.apply_chat_template(messages, tokenize=False)
    eos = tok.eos_token or ""
    if eos and text.endswith(eos + "\n"):
        text = text[:-1]  # ChatML adds "\n" after <|im_end|>: read the score at the EOS itself
    return text


def reward_ids(tok: PreTrainedTokenizerBase, prompt: Prompt, response: str) -> list[int]:
    """Token ids of :func:`reward_text`, with prompt and reply text encoded as text (:func:`encode_chat`): a
    prompt or reply that writes ``<|im_end|>`` or ``<|im_start|>`` cannot forge turns the model scores."""
    messages = [*as_messages(prompt), {"role": "assistant", "content": response}]
    return encode_chat(tok, messages, add_generation_prompt=False, end_at_eos=True)


@dataclass(frozen=True)
class Batch:
    """Token ids of N sequences, right padded, with their attention mask."""

    input_ids: torch.Tensor  # shape: (N, T)
    attention_mask: torch.Tensor  # shape: (N, T)
    truncated_rows: tuple[bool, ...]
    """Which of the N texts lost their start to ``max_length``."""

    @property
    def truncated(self) -> int:
        """How many of the N texts lost their start to ``max_length``."""
        return sum(self.truncated_rows)


def token_ids(
    tok: PreTrainedTokenizerBase, prompts: Sequence[Prompt], responses: Sequence[str], max_length: int
) -> tuple[list[list[int]], tuple[bool, ...]]:
    """Each prompt+response text's token ids, truncated to its *last* ``max_length`` tokens, and which were
    truncated (the reply and the token the score is read at always survive)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("nothing to encode: no prompts given")
    ids = [reward_ids(tok, p, r) for p, r in zip(prompts, responses)]
    truncated = tuple(len(x) > max_length for x in ids)
    return [list(x[-max_length:]) for x in ids], truncated


def truncation_stats(
    tok: PreTrainedTokenizerBase, prompts: Sequence[Prompt], responses: Sequence[str], max_length: int
) -> dict[str, float | int]:
    """How much ``max_length`` cuts from these texts. Texts keep their *last* ``max_length`` tokens, so what is
    cut is the far past of the conversation (the start of the prompt); ``replies_cut`` counts the texts whose
    reply alone is longer than ``max_length`` (their score misses the reply's start too)."""
    lengths = [len(reward_ids(tok, p, r)) for p, r in zip(prompts, responses)]
    reply_lengths = [len(encode_text(tok, r)) for r in responses]
    cut = [max(0, n - max_length) for n in lengths]
    truncated = [c for c in cut if c]
    return {
        "texts": len(lengths),
        "max_length": max_length,
        "truncated": len(truncated),
        "tokens_cut": int(sum(cut)),
        "mean_cut_of_truncated": round(sum(truncated) / len(truncated), 1) if truncated else 0.0,
        "max_cut": max(cut, default=0),
        "longest_text": max(lengths, default=0),
        "replies_cut": sum(n >= max_length for n in reply_lengths),
    }


def pad_right(ids: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists right padded to the longest: ``(input_ids, attention_mask)``, each (N, T)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)  # shape: (N, T)
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # shape: (N, T)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return input_ids, mask


def pad_id(tok: PreTrainedTokenizerBase) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def encode(
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
) -> Batch:
    """Tokenise prompt+response texts and right-pad them to the longest (dynamic padding).

    A text longer than ``max_length`` keeps its *last* ``max_length`` tokens, so the reply and the token
    the score is read at survive; the count of such texts is returned, never hidden.
    """
    ids, truncated = token_ids(tok, prompts, responses, max_length)
    input_ids, mask = pad_right(ids, pad_id(tok))
    return Batch(input_ids, mask, truncated)


def last_real_position(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last real token (the last 1 of its mask), for left or right padding alike.

    Not :func:`components.models.policy.ppo_math.last_token_index`, which counts a right-padded reply's tokens
    and refuses an empty one."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # shape: (T,)
    return (positions.unsqueeze(0) * attention_mask).argmax(dim=1)  # shape: (N,)


def score_at_last_token(model: PreTrainedModel, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The ``score`` head on each row's hidden state at its last real token: (N, T, H) and (N, T) -> (N,)."""
    last = last_real_position(attention_mask)  # shape: (N,)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # shape: (N, H)
    return model.score(pooled).squeeze(-1)  # shape: (N,)


def sequence_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw scalar rewards of N sequences: the ``score`` head at each row's last real token.

    Position ids come from the mask, so a sequence scores the same whatever padding surrounds it.
    """
    backbone = getattr(model, model.base_model_prefix)
    position_ids = position_ids_from_mask(attention_mask)  # shape: (N, T)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state  # shape: (N, T, H)
    return score_at_last_token(model, hidden, attention_mask)  # shape: (N,)


def token_scores(model: PreTrainedModel, ids: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    """:func:`sequence_scores` of token id lists: the opening they all share (the chat template's system
    turn) runs once, for one row, and the batch runs the rest of each text after its KV cache
    (:mod:`components.models.shared_prefix`); the same scores up to float rounding. Shape (N,)."""
    device = next(model.parameters()).device
    shared = common_prefix_length(ids)
    if shared < MIN_SHARED:
        input_ids, mask = pad_right(ids, pad)
        return sequence_scores(model, input_ids.to(device), mask.to(device))
    backbone = getattr(model, model.base_model_prefix)
    past = prefix_cache(backbone, ids[0][:shared], len(ids), device)
    input_ids, mask = pad_right([x[shared:] for x in ids], pad)  # shape: (N, S) each
    input_ids, mask = input_ids.to(device), mask.to(device)
    full_mask, positions = suffix_inputs(mask, shared)
    hidden = backbone(
        input_ids=input_ids, attention_mask=full_mask, position_ids=positions, past_key_values=past, use_cache=True
    ).last_hidden_state  # shape: (N, S, H)
    return score_at_last_token(model, hidden, mask)  # shape: (N,)


def pair_scores(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Score B chosen and B rejected replies in ONE forward pass of 2B sequences.

    Returns ``(r_chosen, r_rejected, truncated)`` with rewards of shape (B,).
    """
    b = len(prompts)
    batch = encode(tok, [*prompts, *prompts], [*chosen, *rejected], max_length)
    device = next(model.parameters()).device
    scores = sequence_scores(model, batch.input_ids.to(device), batch.attention_mask.to(device))  # shape: (2B,)
    return scores[:b], scores[b:], batch.truncated


# ---------------------------------------------------------------------------------------------
# Building the trainable model
# ---------------------------------------------------------------------------------------------


def _source(spec: str) -> str:
    """A local folder for model specs that have one, else the spec itself (a hub id)."""
    try:
        return str(resolve_model_dir(spec))
    except ModelLoadError:
        if spec == TINY_SPEC or Path(spec).expanduser().exists():
            raise
        return spec


def build_reward_model(backbone: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification model with one label on ``backbone``'s weights, head freshly initialised.

    The head is drawn from N(0, 1/(H+1)) as in OpenAI's lm-human-preferences reward head.
    """
    source = _source(backbone)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
            hidden = model.score.weight.shape[1]
            nn.init.normal_(model.score.weight, std=1.0 / math.sqrt(hidden + 1))
    except OSError as exc:
        raise ModelLoadError(f"could not load reward backbone {backbone!r}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def load_trained_weights(model: PreTrainedModel, folder: str | Path) -> None:
    """Put the weights of the reward model saved in ``folder`` (backbone and head) into ``model``, built by
    :func:`build_reward_model` on the same backbone: the start of a reward model trained on from an earlier one.
    A folder of another architecture is a :class:`ModelLoadError`."""
    try:
        saved = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32)
        model.load_state_dict(saved.state_dict())
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"{folder}: cannot start the reward model from these weights: {exc}") from exc


def transformer_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The backbone's stack of transformer blocks (Llama-style ``.layers``)."""
    backbone = getattr(model, model.base_model_prefix)
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(
            f"{type(model).__name__}: no .{model.base_model_prefix}.layers; use reward.trainable: all or lora"
        )
    return layers


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# The trained model, as PPO and evaluation use it
# ---------------------------------------------------------------------------------------------


class RewardModel:
    """A trained reward model: ``score(prompts, responses)`` gives normalised rewards (mean 0, std 1
    over the training prompts' responses when the model was saved with ``center_rewards``).

    ``bf16`` is the precision the model scores in, whoever calls it: bf16 autocast where the device computes
    bf16 natively, float32 otherwise, and float32 even inside a caller's bf16 region when false. The trainer
    computes the stored ``mean`` / ``std`` in that same precision (``reward.bf16``), so the scores are centred
    by construction rather than up to the rounding gap between two precisions."""

    def __init__(
        self,
        model: PreTrainedModel,
        tok: PreTrainedTokenizerBase,
        *,
        mean: float = 0.0,
        std: float = 1.0,
        max_length: int = 256,
        bf16: bool = False,
    ) -> None:
        self.model = model.eval()
        self.tok = tok
        self.mean = float(mean)
        self.std = float(std)
        self.max_length = int(max_length)
        self.bf16 = bool(bf16)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> RewardModel:
        """Load a folder written by :meth:`save` (a transformers folder with normalisation in config.json)
        onto ``device`` (default: the accelerator's device, see :func:`accelerator_device`)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: no reward model here (no config.json); run the train_reward stage first")
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
        model = model.to(device if device is not None else accelerator_device())
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        norm = getattr(model.config, NORMALIZATION_KEY, None) or {}
        return cls(
            model,
            tok,
            mean=norm.get("mean", 0.0),
            std=norm.get("std", 1.0),
            max_length=norm.get("max_length", 256),
            bf16=norm.get("bf16", False),
        )

    def save(self, path: str | Path) -> None:
        """Write a plain transformers folder; the normalisation goes into its config.json."""
        path = Path(path)
        norm = {"mean": self.mean, "std": self.std, "max_length": self.max_length, "bf16": self.bf16}
        setattr(self.model.config, NORMALIZATION_KEY, norm)
        self.model.save_pretrained(path)
        self.tok.save_pretrained(path)
        (path / "reward_normalization.json").write_text(json.dumps(norm, indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """``bfloat16`` or ``float32``: what :meth:`score` computes in on this model's device."""
        return precision_name(self.device, self.bf16)

    def to(self, device: str | torch.device) -> RewardModel:
        """Move the weights to ``device`` (PPO puts the scorer on its accelerator's device); returns self."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def raw_scores(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Un-normalised head outputs, shape (B,), on the CPU, in the model's precision (``bf16``)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out: list[torch.Tensor] = []
        with fixed_precision(self.device, self.bf16):
            for i in range(0, len(prompts), batch_size):
                part = slice(i, i + batch_size)
                ids, _ = token_ids(self.tok, prompts[part], responses[part], self.max_length)
                out.append(token_scores(self.model, ids, pad_id(self.tok)).float().cpu())  # shape: (b,)
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Normalised rewards of each (prompt, response), shape (B,): ``(raw − mean) / std``."""
        return normalise(self.raw_scores(prompts, responses, batch_size), self.mean, self.std)
