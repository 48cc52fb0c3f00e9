"""The ``demo`` judge: the demo task's annotator (``components/demo_task/gold.py``).

It knows one task, customer-support replies; on anything else it is a lexicon scorer that agrees with human
labels no better than a coin. So it judges only a project that has the demo task switched on
(``seeding.demo_task: true``); the evaluation reaches the demo task through this module and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from components.config.judges import DEMO_JUDGE_REFUSAL
from components.decide.judges.base import JudgeError, Prompt, ScoringJudge, last_user_turn


class DemoJudge(ScoringJudge):
    """The demo annotator's score of each reply; the higher score wins."""

    name = "demo"

    def __init__(self, *, demo_task: bool) -> None:
        if not demo_task:
            raise JudgeError(DEMO_JUDGE_REFUSAL)
        from components.demo_task import gold

        self._score, self._explain = gold.score, gold.explain
        self._weights = {**gold.PART_WEIGHTS, "empty": gold.EMPTY_SCORE}

    @property
    def part_weights(self) -> dict[str, float]:
        return dict(self._weights)

    def scores(self, prompts: Sequence[Prompt], replies: Sequence[str]) -> list[float]:
        return [float(self._score(last_user_turn(p), r)) for p, r in zip(prompts, replies)]

    def parts(self, prompts: Sequence[Prompt], replies: Sequence[str]) -> list[dict[str, float]]:
        """The annotator's parts of each score: sentiment, topic, finished, length and repetition penalties, and
        ``empty`` (1 for an empty reply, whose score is the annotator's fixed ``EMPTY_SCORE``)."""
        out = []
        for p, r in zip(prompts, replies):
            g = self._explain(last_user_turn(p), r)
            parts = {k: float(getattr(g, k)) for k in self._weights if k != "empty"}
            out.append(parts | {"empty": 0.0 if r.split() else 1.0})
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "annotator": "components.demo_task.gold (demo task only)"}
