"""``PromptsConfig`` (params.yaml section ``prompts``): the prompt pool's split, checks and extra prompt files
(:mod:`components.data.prompt_pool`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptsConfig:
    """The prompt pool (params.yaml section ``prompts``): split, checks and extra prompt files."""

    heldout_fraction: float = 0.1
    """Share of prompts held out for the evaluation (by a hash of the normalised prompt; never trained on)."""
    min_chars: int = 2
    """Shortest accepted prompt (characters of its text form, after normalising)."""
    max_chars: int = 8000
    """Longest accepted prompt (characters of its text form); longer ones are quarantined."""
    max_turns: int = 32
    """Most messages in a conversation prompt; longer ones are quarantined."""
    files: tuple[str, ...] = ()
    """Extra prompt files (JSONL ``{"prompt": ...}`` / ``{"messages": [...]}`` or plain text, one per line),
    relative to the project; ``data/prompts/sources/`` is always read."""

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise ValueError(f"need 1 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
