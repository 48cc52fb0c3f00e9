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

        self._score = gold.score

    def scores(self, prompts: Sequence[Prompt], replies: Sequence[str]) -> list[float]:
        return [float(self._score(last_user_turn(p), r)) for p, r in zip(prompts, replies)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "annotator": "components.demo_task.gold (demo task only)"}
