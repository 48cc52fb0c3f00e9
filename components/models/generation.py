"""Chat formatting and batched sampling shared by seeding, evaluation, PPO rollouts and serving.

Letters: B batch, P prompt tokens (left padded), R response tokens.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import Cache, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import StaticLayer

from components.data.prompt_pool import Prompt, as_messages

log = logging.getLogger(__name__)


def chat_text(tok: PreTrainedTokenizerBase, prompt: Prompt, system: str | None = None) -> str:
    """The model's chat template applied to a prompt (one user message, or a conversation's messages with their
    real roles), ending with the assistant header. For reading: what a model is fed is :func:`encode_chat`'s
    ids, in which message text cannot become special tokens."""
    return tok.apply_chat_template(prompt_messages(prompt, system), tokenize=False, add_generation_prompt=True)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so left padding does not shift positions; shape (B, T)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def reply_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, reply_len: int
) -> torch.Tensor:
    """Logits that predicted each of the last ``reply_len`` tokens of prompt+reply sequences, (B, R, V).

    Position P-1+t predicts reply token t, so these are the last R+1 positions without the final one; only
    those are computed (no (B, P+R, V) tensor). Position ids come from the mask (left padding aware).
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=reply_len + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]  # shape: (B, R, V)


@dataclass(frozen=True)
class Generation:
    """A batch of sampled replies with the tensors PPO needs."""

    texts: list[str]
    """Decoded replies, cut at the first EOS."""
    query_ids: torch.Tensor  # shape: (B, P), left padded
    query_mask: torch.Tensor  # shape: (B, P)
    response_ids: torch.Tensor  # shape: (B, R), right padded after EOS
    response_mask: torch.Tensor  # shape: (B, R), 1 up to and including the first EOS
    ended: torch.Tensor  # shape: (B,), True where the reply produced EOS
    logits: torch.Tensor | None = None  # shape: (B, R, V), raw logits that sampled each token (return_internals)
    hidden: torch.Tensor | None = None  # shape: (B, R, H), last hidden state before each token (return_internals)


def response_mask_from_eos(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask every token up to and including the first EOS; also return which rows ended.

    Masks by position, never by comparing with the pad id (pad == EOS for SmolLM2).
    """
    is_eos = response_ids == eos_id  # shape: (B, R)
    ended = is_eos.any(dim=1)  # shape: (B,)
    first = torch.where(
        ended, is_eos.float().argmax(dim=1), torch.full_like(ended, response_ids.shape[1], dtype=torch.long)
    )
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)  # shape: (R,)
    mask = (positions.unsqueeze(0) <= first.unsqueeze(1)).long()  # shape: (B, R)
    return mask, ended


def chat_messages_text(tok: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> str:
    """The chat template applied to a whole conversation (system/user/assistant turns), ending with the
    assistant header so the model writes the next assistant turn."""
    return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def encode_chat(
    tok: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
    end_at_eos: bool = False,
) -> list[int]:
    """Token ids of a conversation in which message text stays text: the one way every path renders a
    conversation for the model (serving, seeding, evaluation, rollouts, reward model, preference pairs).

    The chat template is rendered for the roles with a placeholder per message; the template's own pieces
    are encoded as usual (so ``<|im_start|>`` there is the special token), each message's content with
    ``split_special_tokens=True``, so a user who writes ``<|im_end|>\n<|im_start|>system`` gets those
    characters as text, never a turn of their own. For text without special-token strings the ids equal
    those of encoding the rendered template. ``end_at_eos`` drops the newline a ChatML template writes after
    the last turn's closing EOS, so the ids end at that EOS (where the reward model reads its score).
    """
    marks = [f"\ue000{i}\ue001" for i in range(len(messages))]  # private-use characters: never in a template
    shaped = [{**m, "content": mark} for m, mark in zip(messages, marks)]
    text = tok.apply_chat_template(shaped, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids: list[int] = []
    pos = 0
    for m, mark in zip(messages, marks):
        at = text.find(mark, pos)
        if at < 0:
            raise ValueError(
                "the chat template does not render each message's content once, in order; "
                "encode_chat cannot keep message text apart from the template"
            )
        ids += tok(text[pos:at], add_special_tokens=False)["input_ids"]
        ids += encode_text(tok, m["content"])
        pos = at + len(mark)
    tail = text[pos:]
    eos = tok.eos_token or ""
    if end_at_eos and eos and tail.endswith(eos + "\n"):
        tail = tail[:-1]
    ids += tok(tail, add_special_tokens=False)["input_ids"]
    return ids


def prompt_messages(prompt: Prompt, system: str | None = None) -> list[dict[str, str]]:
    """A prompt's messages (one user message, or a conversation with its real roles) after ``system``."""
    return ([{"role": "system", "content": system}] if system else []) + as_messages(prompt)


def encode_text(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of message text outside a template (a reply on its own): special-token strings stay text."""
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask of token-id rows; shapes (B, P) each."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def encode_prompts(
    tok: PreTrainedTokenizerBase, prompts: Sequence[Prompt], system: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated prompts (one user message, or a conversation with its roles, after ``system``) as
    left-padded ids and mask, (B, P) each; message text is encoded as text (:func:`encode_chat`), so a prompt
    cannot forge turns in training. For plain text the ids equal those of :func:`chat_text`'s text."""
    rows = [encode_chat(tok, prompt_messages(p, system)) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return left_pad(rows, pad)


def encode_left_padded(tok: PreTrainedTokenizerBase, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``texts``, left padded; the tokenizer itself is not changed.

    Padding side is passed per call (never set on the shared tokenizer), so concurrent callers are safe.
    """
    enc = tok(list(texts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]  # shape: (B, P) each


@dataclass(frozen=True)
class RowParams:
    """Sampling parameters of one row of a batch (each row may differ)."""

    max_new_tokens: int = 48
    temperature: float = 0.7
    """0 means greedy (argmax)."""
    top_p: float = 1.0
    seed: int | None = None
    """Seed of this row's own ``torch.Generator``; None draws from torch's default generator."""
    stop: tuple[str, ...] = ()
    """Strings that end the reply; the reply is cut before the first one found."""


def filter_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: int, top_p: torch.Tensor) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering, as transformers' logits warpers order them.

    logits (B, V); temperature and top_p (B,). Filtered-out entries become -inf; the most likely token of
    each row always survives. Rows with temperature 0 are left unscaled (the caller takes their argmax).
    """
    scale = torch.where(temperature > 0, temperature, torch.ones_like(temperature))  # shape: (B,)
    logits = logits / scale.unsqueeze(1)  # shape: (B, V)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # shape: (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if bool((top_p < 1.0).any()):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # shape: (B, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # shape: (B, V): probability mass ranked above each token
        drop = mass_before > top_p.unsqueeze(1)
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def _pick(
    logits: torch.Tensor, temperature: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """One token per row: argmax where temperature is 0, else a sample with the row's own generator.

    Sampling is by inverse CDF: one uniform number per row (drawn from that row's generator, in row order),
    then one batched search in the rows' cumulative probabilities. That is exact categorical sampling and
    costs one tiny draw per row, where ``torch.multinomial`` row by row pays a full pass over the vocabulary
    per row.
    """
    greedy = logits.argmax(dim=-1)  # shape: (B,)
    cdf = logits.float().softmax(dim=-1).cumsum(dim=-1)  # shape: (B, V)
    if all(g is None for g in generators):
        u = torch.rand(len(generators), device=logits.device)  # shape: (B,)
    elif all(g is generators[0] for g in generators):
        u = torch.rand(len(generators), device=logits.device, generator=generators[0])
    else:
        u = torch.cat([torch.rand(1, device=logits.device, generator=g) for g in generators])
    target = (u * cdf[:, -1]).unsqueeze(1)  # shape: (B, 1): scaled by the row's total (float rounding)
    sampled = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)  # shape: (B,)
    return torch.where(temperature > 0, sampled, greedy)


StaticCacheMode = Literal["auto", "on", "off"]
"""How decoding keeps its KV cache: ``off`` the growing cache of the eager loop; ``on`` a static cache of
fixed (bucketed) shapes whose decode step is, on CUDA, compiled with CUDA graphs; ``auto`` = ``on`` on CUDA,
``off`` elsewhere (on the CPU the eager loop is the fast path)."""

BATCH_BUCKET_MIN = 8
"""Smallest batch bucket of the static cache; buckets are powers of two from here (8, 16, 32, ...)."""
LENGTH_BUCKET = 64
"""The static cache's length (prompt + reply tokens) is rounded up to a multiple of this."""


def static_cache_on(mode: StaticCacheMode | bool, device: torch.device | str) -> bool:
    """Whether decoding on ``device`` uses the static cache (``mode`` as :data:`StaticCacheMode`, or a bool)."""
    if isinstance(mode, bool):
        return mode
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"static_cache must be auto, on or off, got {mode!r}")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


def bucket_shape(rows: int, length: int) -> tuple[int, int]:
    """The static cache's (batch, length) for ``rows`` rows of ``length`` tokens: the batch rounded up to a power
    of two (at least :data:`BATCH_BUCKET_MIN`), the length to a multiple of :data:`LENGTH_BUCKET`, so that batches
    of nearby sizes share one compiled decode step (a CUDA graph per shape) instead of compiling their own."""
    batch = BATCH_BUCKET_MIN
    while batch < rows:
        batch *= 2
    return batch, -(-max(length, 1) // LENGTH_BUCKET) * LENGTH_BUCKET


def _decode_step(
    model: PreTrainedModel,
    token: torch.Tensor,
    position: torch.Tensor,
    mask: torch.Tensor,
    cache: Cache,
    keep_internals: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One decode step: token and position (Bb, 1), mask (Bb, Lb); the cache (the eager loop's growing one, or a
    static one of fixed shapes) is updated in place. Returns the next-token logits (Bb, V) and, with
    ``keep_internals``, the last hidden state (Bb, H)."""
    out = model(
        input_ids=token,
        attention_mask=mask,
        position_ids=position,
        past_key_values=cache,
        use_cache=True,
        output_hidden_states=keep_internals,
    )
    hidden = out.hidden_states[-1][:, -1, :] if keep_internals else None
    return out.logits[:, -1, :], hidden


_compiled_step: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None = None


def _graph_step() -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """:func:`_decode_step` under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), compiled once per
    process and shape bucket (transformers' own recipe for static-cache decoding)."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_decode_step, mode="reduce-overhead", dynamic=False)
    return _compiled_step


class PrefilledStaticLayer(StaticLayer):
    """A static cache layer whose first columns hold a prompt's keys and values from a growing cache.

    Its tensors are allocated at the first decode step (transformers' lazy initialisation), in the dtypes that
    step's keys and values have: under autocast those can differ from each other and from the growing cache's
    (which promotes the bf16 values to its float32 keys' dtype, losslessly); the prompt is copied in then.
    Once allocated, :meth:`refill` puts the next batch's prompt into the same tensors (same addresses, so a
    captured CUDA graph replays over them); columns after the prompt are written before they are read, and the
    causal mask hides the ones not written yet.
    """

    def __init__(self, max_cache_len: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__(max_cache_len=max_cache_len)
        self.cumulative_length = torch.zeros((), dtype=torch.long, device=keys.device)
        self.refill(keys, values)

    def refill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold this prompt's keys and values (B, heads, P, head_dim) in the first rows and columns."""
        self.cumulative_length.fill_(keys.shape[2])
        if not self.is_initialized:
            self.prompt_keys, self.prompt_values = keys, values
            return
        rows, width = keys.shape[0], keys.shape[2]
        self.keys[:rows, :, :width].copy_(keys)
        self.values[:rows, :, :width].copy_(values)

    def get_seq_length(self) -> torch.Tensor:
        """Tokens held, the prompt's included also before the first step allocates the tensors (the causal mask
        of that step reads it)."""
        return self.cumulative_length

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        filled = self.cumulative_length.clone()
        super().lazy_initialization(key_states, value_states)
        if self.values.dtype != value_states.dtype:  # the parent allocates both in the keys' dtype
            self.values = torch.zeros_like(self.values, dtype=value_states.dtype)
            torch._dynamo.mark_static_address(self.values)
        self.cumulative_length.copy_(filled)
        self.refill(self.prompt_keys, self.prompt_values)
        self.prompt_keys = self.prompt_values = None


_kept_caches: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, StaticCache]] = weakref.WeakKeyDictionary()
"""Static caches kept for the CUDA-graph path, per model and (bucket, autocast state, thread): every rollout of a
bucket reuses one, so the graph captured over its tensors replays instead of being captured again."""


def _kept_cache(model: PreTrainedModel, key: tuple, make: Callable[[], StaticCache]) -> tuple[StaticCache, bool]:
    """The cache kept for ``model`` under ``key`` (made with ``make`` the first time); True when it was kept."""
    kept = _kept_caches.setdefault(model, {})
    if key in kept:
        return kept[key], True
    kept[key] = make()
    return kept[key], False


class StaticDecoder:
    """Decode steps over a preallocated KV cache of bucketed shape (:func:`bucket_shape`).

    The prompt is encoded once by the caller into a growing cache (its shape varies with the prompts, and it runs
    once per batch); its keys and values go into the first columns of the static cache
    (:class:`PrefilledStaticLayer`), rows beyond the batch are padding. The attention mask is fixed for the whole
    reply: the prompt's padding mask, then ones (the causal mask hides the columns not written yet), so a step's
    inputs have the same shapes and addresses every time. ``graph=True`` runs the steps compiled with CUDA graphs
    (the very first step of a new cache, which allocates it, eagerly) over a cache kept per model, bucket,
    autocast state and thread (``keep``, default: with ``graph``), so later batches of the same bucket replay the
    captured graph; else eagerly over a fresh cache (the same numbers up to float rounding, which is what the CPU
    tests compare with the growing-cache loop). Models whose cache layers are not all plain static layers
    (sliding-window attention) are refused with ``ValueError``; :func:`sample` then keeps the eager loop.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        prefill: DynamicCache,
        prompt_mask: torch.Tensor,
        max_new_tokens: int,
        *,
        graph: bool,
        keep_internals: bool,
        keep: bool | None = None,
    ) -> None:
        rows, width = prompt_mask.shape  # shape: (B, P)
        self.rows, self.graph, self.keep_internals, self.model = rows, graph, keep_internals, model
        batch, length = bucket_shape(rows, width + max_new_tokens)
        device = prompt_mask.device

        def make() -> StaticCache:
            cache = StaticCache(config=model.config, max_cache_len=length)
            if any(type(layer) is not StaticLayer for layer in cache.layers):
                raise ValueError(f"{type(model).__name__} has sliding-window or other special cache layers")
            cache.layers = [PrefilledStaticLayer(length, f.keys, f.values) for f in prefill.layers]
            return cache

        if graph if keep is None else keep:
            autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
            key = (batch, length, *autocast, threading.get_ident())
            self.cache, kept = _kept_cache(model, key, make)
            if kept:
                for layer, filled in zip(self.cache.layers, prefill.layers):
                    layer.refill(filled.keys, filled.values)
        else:
            self.cache = make()
        self.allocated = all(layer.is_initialized for layer in self.cache.layers)
        self.mask = torch.ones((batch, length), dtype=prompt_mask.dtype, device=device)  # shape: (Bb, Lb)
        self.mask[:rows, :width] = prompt_mask
        self.token = torch.zeros((batch, 1), dtype=torch.long, device=device)  # shape: (Bb, 1)
        self.position = torch.zeros((batch, 1), dtype=torch.long, device=device)  # shape: (Bb, 1)

    def step(self, token: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed one token per row at ``position`` (both (B,)); the next logits (B, V) and hidden state (B, H)."""
        self.token[: self.rows, 0] = token
        self.position[: self.rows, 0] = position
        fn = _decode_step
        if self.graph and self.allocated:
            fn = _graph_step()
            torch.compiler.cudagraph_mark_step_begin()
        self.allocated = True
        logits, hidden = fn(self.model, self.token, self.position, self.mask, self.cache, self.keep_internals)
        # a CUDA graph's outputs are overwritten by its next replay: keep copies of the real rows
        logits = logits[: self.rows].clone()  # shape: (B, V)
        hidden = hidden[: self.rows].clone() if hidden is not None else None  # shape: (B, H)
        return logits, hidden


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    eos_id: int,
    max_new_tokens: Sequence[int],
    temperature: Sequence[float],
    top_p: Sequence[float],
    top_k: int = 0,
    generators: Sequence[torch.Generator | None] | None = None,
    stopped: Callable[[int, torch.Tensor], bool] | None = None,
    keep_internals: bool = False,
    repeats: int = 1,
    static_cache: StaticCacheMode | bool = "off",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Sample replies with the KV cache; every row has its own limits, temperature, top-p and generator.

    Returns ``(response_ids, ended, logits, hidden)``: (B, R) right padded with EOS after a row finishes,
    (B,) True where the row produced EOS, and with ``keep_internals`` the raw logits that sampled each token
    (B, R, V) and the last layer's hidden state at the position before it (B, R, H), so PPO needs no second
    policy forward for its rollout log-probs and values (else None, None). ``stopped(row, ids_so_far)`` may
    end a row early (stop strings). Nothing global is touched: no seeding, no tokenizer state.

    ``repeats`` > 1 samples that many replies per query row (rows ``i * repeats .. i * repeats + repeats - 1``
    of the result belong to query ``i``): the prompt is encoded once and its KV cache copied, so B is
    ``len(query_ids) * repeats`` and the per-row sequences have that length. The prompt forward keeps only
    the last position's logits (the (B, P, V) tensor of all positions is never built).

    ``static_cache`` (:data:`StaticCacheMode`): decode over a preallocated cache of bucketed shape
    (:class:`StaticDecoder`; a CUDA graph on CUDA) instead of a growing one. Sampling, stop checks and the kept
    logits are the same code either way, outside the decode step, so per-row control is unchanged.
    """
    device = query_ids.device
    b = query_ids.shape[0] * repeats
    limits = torch.tensor(list(max_new_tokens), device=device)  # shape: (B,)
    temp = torch.tensor(list(temperature), device=device, dtype=torch.float32)  # shape: (B,)
    nucleus = torch.tensor(list(top_p), device=device, dtype=torch.float32)  # shape: (B,)
    if not len(limits) == len(temp) == len(nucleus) == b:
        raise ValueError(f"per-row parameters must have {b} entries (queries x repeats)")
    gens = list(generators) if generators is not None else [None] * b
    positions = position_ids_from_mask(query_mask)  # shape: (B/repeats, P)
    out = model(
        input_ids=query_ids,
        attention_mask=query_mask,
        position_ids=positions,
        use_cache=True,
        output_hidden_states=keep_internals,
        logits_to_keep=1,
    )
    past = out.past_key_values
    logits = out.logits[:, -1, :]  # shape: (B/repeats, V)
    hidden = out.hidden_states[-1][:, -1, :] if keep_internals else None  # shape: (B/repeats, H)
    mask = query_mask  # shape: (B, P+t) once repeated
    if repeats > 1:
        past.batch_repeat_interleave(repeats)
        logits = logits.repeat_interleave(repeats, dim=0)  # shape: (B, V)
        hidden = hidden.repeat_interleave(repeats, dim=0) if hidden is not None else None  # shape: (B, H)
        mask = mask.repeat_interleave(repeats, dim=0)
        positions = positions.repeat_interleave(repeats, dim=0)
    kept_logits: list[torch.Tensor] = []
    kept_hidden: list[torch.Tensor] = []
    done = torch.zeros(b, dtype=torch.bool, device=device)
    ended = torch.zeros(b, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    next_pos = positions[:, -1]  # shape: (B,)
    steps = int(limits.max().item()) if b else 0
    decoder = None
    if b and static_cache_on(static_cache, device):
        graph = device.type == "cuda"
        try:
            decoder = StaticDecoder(model, past, mask, steps, graph=graph, keep_internals=keep_internals)
            past = None  # the static cache holds the prompt's keys and values now
        except ValueError as exc:
            log.warning("static cache off for this model (%s): decoding with the eager loop", exc)
    for step in range(steps):
        if keep_internals:
            kept_logits.append(logits)
            kept_hidden.append(hidden)  # shape: (B, H): the position that predicts
        filtered = filter_logits(logits.float(), temp, top_k, nucleus)
        token = _pick(filtered, temp, gens)  # shape: (B,)
        token = torch.where(done, torch.full_like(token, eos_id), token)
        tokens.append(token)
        ended |= ~done & (token == eos_id)
        done |= token == eos_id
        done |= limits <= step + 1
        if stopped is not None:
            so_far = torch.stack(tokens, dim=1)  # shape: (B, t)
            for i in range(b):
                if not done[i] and stopped(i, so_far[i]):
                    done[i] = True
        if bool(done.all()):
            break
        next_pos = next_pos + 1
        if decoder is not None:
            logits, hidden = decoder.step(token, next_pos)  # shapes: (B, V), (B, H) or None
            continue
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # shape: (B, P+t+1)
        # the growing cache is extended in place by the step
        logits, hidden = _decode_step(model, token.unsqueeze(1), next_pos.unsqueeze(1), mask, past, keep_internals)
    if not tokens:
        return torch.zeros((b, 0), dtype=query_ids.dtype, device=device), ended, None, None
    if keep_internals:  # shapes: (B, R), (B,), (B, R, V), (B, R, H)
        return torch.stack(tokens, 1), ended, torch.stack(kept_logits, 1), torch.stack(kept_hidden, 1)
    return torch.stack(tokens, dim=1), ended, None, None  # shape: (B, R)


def decode_reply(tok: PreTrainedTokenizerBase, row: torch.Tensor, mask: torch.Tensor) -> str:
    """The text of one response row: tokens under the mask, without the final EOS."""
    kept = row[mask.bool()]
    if len(kept) and kept[-1].item() == tok.eos_token_id:
        kept = kept[:-1]
    return tok.decode(kept, skip_special_tokens=True).strip()


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    system: str | None = None,
    max_new_tokens: int = 48,
    temperature: float = 0.7,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator_seed: int | None = None,
    return_internals: bool = False,
    samples_per_prompt: int = 1,
    static_cache: StaticCacheMode = "auto",
) -> Generation:
    """Sample ``samples_per_prompt`` replies per prompt in a single left-padded batch with the KV cache.

    Replies come prompt by prompt (``texts[i * k + j]`` is prompt ``i``'s reply ``j``); a prompt's samples
    share one encoding of the prompt. ``generator_seed`` seeds a private ``torch.Generator`` for this call
    (the global RNG is not touched); without it, sampling draws from torch's default generator.
    ``return_internals`` also keeps the logits and last hidden states the sampling computed anyway, so PPO
    needs no second policy forward pass for its rollout log-probs and values. ``static_cache``: see
    :data:`StaticCacheMode` (``auto``: the static cache and a CUDA graph on CUDA, the eager loop elsewhere).
    """
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    ids, attn = encode_prompts(tok, prompts, system)
    ids, attn = ids.to(model.device), attn.to(model.device)
    gen = None
    if generator_seed is not None:
        gen = torch.Generator(device=model.device).manual_seed(generator_seed)
    n = len(prompts) * samples_per_prompt
    response, _, logits, hidden = sample(
        model,
        ids,
        attn,
        eos_id=tok.eos_token_id,
        max_new_tokens=[max_new_tokens] * n,
        temperature=[0.0 if greedy else temperature] * n,
        top_p=[top_p] * n,
        top_k=0 if greedy else top_k,
        generators=None if gen is None else _shared(gen, n),
        keep_internals=return_internals,
        repeats=samples_per_prompt,
        static_cache=static_cache,
    )
    mask, ended = response_mask_from_eos(response, tok.eos_token_id)
    replies = [decode_reply(tok, row, m) for row, m in zip(response, mask)]
    if samples_per_prompt > 1:
        ids = ids.repeat_interleave(samples_per_prompt, dim=0)
        attn = attn.repeat_interleave(samples_per_prompt, dim=0)
    return Generation(replies, ids, attn, response, mask, ended, logits, hidden)


def _shared(gen: torch.Generator, n: int) -> list[torch.Generator | None]:
    """One generator drawn from by all rows (rows sample in order, so results are reproducible)."""
    return [gen] * n


@dataclass(frozen=True)
class RowResult:
    """One served reply with OpenAI-style accounting."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """``stop`` (EOS or a stop string) or ``length`` (hit max_new_tokens)."""


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@torch.no_grad()
def generate_rows(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    params: Sequence[RowParams],
    *,
    static_cache: StaticCacheMode = "auto",
) -> list[RowResult]:
    """Sample one reply for each already-templated prompt (text, or token ids from :func:`encode_chat`),
    each row with its own parameters and seed (``static_cache``: see :data:`StaticCacheMode`).

    Safe to call from several threads on the same model and tokenizer (nothing shared is mutated).
    """
    if prompts and not isinstance(prompts[0], str):
        ids, attn = left_pad(prompts, tok.pad_token_id)  # type: ignore[arg-type]
    else:
        ids, attn = encode_left_padded(tok, prompts)  # type: ignore[arg-type]
    ids, attn = ids.to(model.device), attn.to(model.device)
    gens = [None if p.seed is None else torch.Generator(device=model.device).manual_seed(p.seed) for p in params]

    hit: set[int] = set()  # rows a stop string ended (the final text may lose it to whitespace stripping)

    def stopped(i: int, so_far: torch.Tensor) -> bool:
        stop = params[i].stop
        if bool(stop) and _cut_at_stop(tok.decode(so_far, skip_special_tokens=True), stop)[1]:
            hit.add(i)
            return True
        return False

    response, _, *_ = sample(
        model,
        ids,
        attn,
        eos_id=tok.eos_token_id,
        max_new_tokens=[p.max_new_tokens for p in params],
        temperature=[p.temperature for p in params],
        top_p=[p.top_p for p in params],
        generators=gens,
        stopped=stopped if any(p.stop for p in params) else None,
        static_cache=static_cache,
    )
    mask, ended = response_mask_from_eos(response, tok.eos_token_id)
    results = []
    for i, p in enumerate(params):
        completion = response[i][mask[i].bool()][: p.max_new_tokens]
        text, hit_stop = _cut_at_stop(decode_reply(tok, response[i], mask[i]), p.stop)
        reason = "stop" if bool(ended[i]) or hit_stop or i in hit else "length"
        results.append(RowResult(text.strip(), int(attn[i].sum()), len(completion), reason))
    return results
