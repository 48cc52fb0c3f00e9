"""Virtual environments for the anchor libraries (TRL), never a product dependency.

Each anchor gets its own environment under ``bench/.venv-anchors/<name>`` (ignored by git) with the SAME
torch / transformers / peft / accelerate versions as the project's environment: torch is installed
first on its own (so pip takes the CPU wheel and never pulls a CUDA build), then the anchor with the
project's versions as constraints.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent / ".venv-anchors"
SHARED = ("transformers", "peft", "accelerate", "tokenizers", "safetensors", "huggingface_hub", "numpy")
"""Packages pinned to the project environment's versions inside every anchor environment."""


def ensure_env(name: str, requirement: str) -> Path:
    """The python of anchor environment ``name`` holding ``requirement`` (created on first use)."""
    env = ROOT / name
    python = env / "bin" / "python"
    marker = env / ".installed"
    torch_version = md.version("torch").split("+")[0]
    want = f"torch=={torch_version} {requirement}"
    if marker.is_file() and marker.read_text() == want:
        return python
    log.info("creating %s (%s); this downloads torch once", env, want)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        for pkg in SHARED:
            fh.write(f"{pkg}=={md.version(pkg)}\n")
        pins = fh.name
    subprocess.run([*pip, requirement, f"peft=={md.version('peft')}", "-c", pins], check=True)
    marker.write_text(want)
    return python
