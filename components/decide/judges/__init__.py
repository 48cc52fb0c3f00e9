"""Judges for the evaluation (``eval.judge``): small classes with one pairwise method,
``compare(prompt, reply_a, reply_b) -> Verdict`` (win / tie / loss for ``reply_a``, with a reason).

- ``demo``: the demo task's annotator (only in a project with ``seeding.demo_task: true``);
- ``reward_model``: a judge reward model trained on a prompt-disjoint slice of the human pairs that the
  training reward model never sees (:mod:`components.decide.judges.reward_model`);
- ``llm``: a pairwise LLM judge over an OpenAI-compatible endpoint (:mod:`components.decide.judges.llm`);
- ``human``: people compare the candidate, served on canary, with the champion on the rater page
  (:mod:`components.decide.judges.human`; the retrain flow waits for their choices).

:func:`make_judge` builds the configured one. See ``docs/judges.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from components.config.judges import HumanJudgeConfig, JudgeRewardConfig, LLMJudgeConfig
from components.decide.judges.base import Comparison, Judge, JudgeError, Outcome, Prompt, ScoringJudge, Verdict

JudgeName = Literal["demo", "reward_model", "llm", "human"]

__all__ = [
    "Comparison",
    "Judge",
    "JudgeError",
    "JudgeName",
    "JudgeRewardConfig",
    "LLMJudgeConfig",
    "Outcome",
    "Prompt",
    "ScoringJudge",
    "Verdict",
    "make_judge",
]


def make_judge(
    name: str,
    *,
    root: Path,
    demo_task: bool,
    judge_reward: JudgeRewardConfig | None = None,
    llm_judge: LLMJudgeConfig | None = None,
    human_judge: HumanJudgeConfig | None = None,
    training_manifest: Path | None = None,
) -> Judge:
    """The judge named by ``eval.judge`` for the project at ``root``.

    ``demo_task`` is the project's ``seeding.demo_task`` (the demo judge refuses a project without it);
    ``training_manifest`` is the training reward model's manifest (the judge reward model checks that it
    skipped the judge's slice)."""
    if name == "demo":
        from components.decide.judges.demo import DemoJudge

        return DemoJudge(demo_task=demo_task)
    if name == "reward_model":
        from components.decide.judges.reward_model import RewardModelJudge

        cfg = judge_reward or JudgeRewardConfig()
        return RewardModelJudge(Path(root) / cfg.path, training_manifest=training_manifest)
    if name == "llm":
        from components.decide.judges.llm import LLMJudge

        return LLMJudge(llm_judge or LLMJudgeConfig(), cache_dir=Path(root))
    if name == "human":
        from components.decide.judges.human import HumanJudge

        return HumanJudge(human_judge)
    raise JudgeError(f"eval.judge {name!r}: unknown judge (demo, reward_model, llm or human)")
