"""What every judge is: one pairwise method, ``compare(prompt, reply_a, reply_b) -> Verdict``.

A prompt is a string (one user turn) or a list of chat messages (``{"role", "content"}``, a multi-turn
conversation ending with the user turn being answered).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["win", "tie", "loss"]
Prompt = str | Sequence[dict[str, str]] | tuple[tuple[str, str], ...]
"""A conversation may also come as ``((role, content), ...)`` (the prompt pool's hashable form)."""

VALUE: dict[str, float] = {"win": 1.0, "tie": 0.5, "loss": 0.0}
"""An outcome as a win-rate contribution (ties count half)."""


class JudgeError(RuntimeError):
    """A judge that cannot decide (unreachable endpoint, junk answers, an unreliable or misconfigured judge),
    with what to do about it. The evaluation fails; nothing is promoted."""


@dataclass(frozen=True)
class Verdict:
    """The outcome for ``reply_a`` against ``reply_b`` and the judge's reason in words."""

    outcome: Outcome
    reason: str

    @property
    def value(self) -> float:
        return VALUE[self.outcome]


@dataclass(frozen=True)
class Comparison:
    """One question for a judge."""

    prompt: Prompt
    reply_a: str
    reply_b: str


def prompt_text(prompt: Prompt) -> str:
    """A prompt as one string: itself, or a conversation's turns as ``role: content`` lines."""
    from components.data.prompt_pool import as_messages

    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in as_messages(prompt))


def last_user_turn(prompt: Prompt) -> str:
    """The user turn being answered (the whole prompt when it is a string)."""
    from components.data.prompt_pool import as_messages

    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in as_messages(prompt) if m.get("role") == "user"]
    return users[-1] if users else prompt_text(prompt)


def outcome_from_scores(a: float, b: float, tolerance: float = 1e-6) -> Outcome:
    """``win`` when ``a`` beats ``b`` by more than ``tolerance``, ``loss`` when it trails by more, else ``tie``."""
    if a - b > tolerance:
        return "win"
    if b - a > tolerance:
        return "loss"
    return "tie"


def judge_label(judge: dict[str, Any]) -> str:
    """A judge's name with what identifies it (the judge model's version, the LLM and its endpoint)."""
    name = judge.get("name") or "judge"
    if name == "reward_model" and judge.get("version"):
        return f"reward_model {judge['version']}"
    if name == "llm":
        return f"llm {judge.get('model')} @ {judge.get('base_url')} ({judge.get('template')})"
    return name


class Judge:
    """A pairwise judge. Subclasses set ``name`` and implement :meth:`compare` (or :meth:`compare_many`)."""

    name: str = "judge"

    def compare(self, prompt: Prompt, reply_a: str, reply_b: str) -> Verdict:
        return self.compare_many([Comparison(prompt, reply_a, reply_b)])[0]

    def compare_many(self, items: Sequence[Comparison], on_done: Callable[[int], None] | None = None) -> list[Verdict]:
        """Every comparison's verdict, in order (judges that batch or run requests in parallel override this)."""
        out = []
        for it in items:
            out.append(self.compare(it.prompt, it.reply_a, it.reply_b))
            if on_done:
                on_done(1)
        return out

    def preflight(self) -> None:
        """Fail now, with a :class:`JudgeError`, if the judge cannot be reached (before the evaluation samples)."""

    def describe(self) -> dict[str, Any]:
        """Name and settings, recorded with every evaluation this judge decided."""
        return {"name": self.name}

    @property
    def accuracy(self) -> float | None:
        """Held-out agreement with human labels, where the judge has one (the judge reward model)."""
        return None

    def parts(self, prompts: Sequence[Prompt], replies: Sequence[str]) -> list[dict[str, float]] | None:
        """Each reply's score split into its named parts, for judges whose score is a weighted sum of parts
        (``part_weights``); None for the others (a reward model, an LLM, people)."""
        return None

    @property
    def part_weights(self) -> dict[str, float]:
        """Weight of each part of :meth:`parts` in the score (score = sum of weight x part); empty without parts."""
        return {}


class ScoringJudge(Judge):
    """A judge that scores each reply on its own; a comparison is the score difference."""

    def scores(self, prompts: Sequence[Prompt], replies: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def compare(self, prompt: Prompt, reply_a: str, reply_b: str) -> Verdict:
        return self.compare_many([Comparison(prompt, reply_a, reply_b)])[0]

    def compare_many(self, items: Sequence[Comparison], on_done: Callable[[int], None] | None = None) -> list[Verdict]:
        n = len(items)
        s = self.scores([*(i.prompt for i in items), *(i.prompt for i in items)],
                        [*(i.reply_a for i in items), *(i.reply_b for i in items)])  # fmt: skip
        if on_done:
            on_done(n)
        return [
            Verdict(outcome_from_scores(a, b), f"{self.name} scores {a:.3f} vs {b:.3f}") for a, b in zip(s[:n], s[n:])
        ]
