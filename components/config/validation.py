"""``ValidationConfig`` (params.yaml section ``validation``): the limits every feedback row is checked against."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ValidationConfig:
    """Feedback validation limits (a row over a limit is quarantined with the reason, never dropped)."""

    max_prompt_chars: int = 8000
    """Longest accepted prompt in characters (longer is 'absurdly long' and quarantined). HH-RLHF multi-turn
    prompts stay well under this."""
    max_reply_chars: int = 4000
    """Longest accepted reply (chosen / rejected / response) in characters."""

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_reply_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
