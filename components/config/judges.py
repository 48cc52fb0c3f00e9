"""The judges' settings (nested in ``params.yaml`` section ``eval``): torch-free, like every config dataclass."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeRewardConfig:
    """The judge reward model (``eval.judge: reward_model``): a second reward model trained only on the slice of
    the human pairs the training reward model never sees (``reward.judge_fraction``; Gao et al. 2022's "gold RM")."""

    path: str = "models/judge_reward"
    """Its folder (a DVC output of the ``train_judge`` stage), relative to the project root."""
    backbone: str | None = None
    """Model spec it is initialised from; null = ``reward.backbone``. Its other training settings are the
    ``reward`` section's."""

    def __post_init__(self) -> None:
        if not self.path.strip():
            raise ValueError("judge_reward.path must name a folder")


@dataclass(frozen=True)
class LLMJudgeConfig:
    """A pairwise LLM judge over an OpenAI-compatible ``/chat/completions`` endpoint (``eval.judge: llm``)."""

    base_url: str = "http://127.0.0.1:3000/v1"
    """The endpoint's base URL (``/chat/completions`` is appended): OpenAI, vLLM, llama.cpp, ``rlhf serve``, ..."""
    model: str = ""
    """The judge model's name as the endpoint knows it (part of the cache key); required with ``judge: llm``."""
    api_key_env: str | None = "RLHF_JUDGE_API_KEY"
    """Environment variable holding the API key (sent as ``Authorization: Bearer``); unset or null = no key."""
    template: str = "pairwise-v1"
    """Prompt template: a file name in ``components/decide/judges/templates/`` (without ``.txt``) or a path to one. Its
    version (name + content hash) is part of the cache key and of every stored verdict."""
    max_tokens: int = 256
    """Answer length limit (the rationale, then the verdict)."""
    temperature: float = 0.0
    """Sampling temperature of the first ask (0 = the endpoint's most likely answer)."""
    seed: int = 0
    """Sampling seed sent with each request (endpoints that honour it answer reproducibly)."""
    timeout_s: float = 60.0
    """Per-request timeout in seconds."""
    retries: int = 3
    """Re-sends of a request after a connection error, a timeout, HTTP 429 or 5xx (exponential backoff)."""
    backoff_s: float = 1.0
    """First backoff in seconds; doubled after each failed try."""
    junk_retries: int = 2
    """Re-asks (temperature 1, another seed) when an answer holds no verdict; then the evaluation fails."""
    concurrency: int = 4
    """Requests in flight at once."""
    cache: str = "staging/judge-cache.sqlite"
    """On-disk cache of answers (relative to the project root), keyed by judge model + template version +
    prompt + replies: a rerun of the same evaluation sends no request."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"llm_judge.base_url must be an http(s) URL, got {self.base_url!r}")
        if self.max_tokens < 1 or self.concurrency < 1 or self.retries < 0 or self.junk_retries < 0:
            raise ValueError("llm_judge: max_tokens and concurrency must be >= 1, retries and junk_retries >= 0")
        if self.timeout_s <= 0 or self.backoff_s < 0 or not 0.0 <= self.temperature <= 2.0:
            raise ValueError("llm_judge: timeout_s must be > 0, backoff_s >= 0, temperature in [0, 2]")


@dataclass(frozen=True)
class HumanJudgeConfig:
    """People decide (``eval.judge: human``): the candidate is served on canary and the raters' blind comparisons
    of its replies with the champion's (the rater page's compare tab) decide, through the same gate."""

    comparisons: int = 50
    """Human comparisons (candidate vs champion, ties half) needed before the gate decides on their win rate's
    interval; the half-width of a 95 % interval at 50 is about +-0.14 around 0.5."""
    deadline_s: float = 86400.0
    """Seconds from when the candidate went on canary; past it without ``comparisons`` choices there is no
    decision: the champion stays and the candidate leaves canary. A restarted flow keeps the first deadline."""
    poll_s: float = 30.0
    """How often the flow counts the comparisons in the served-output store while it waits."""
    canary_share: float = 0.1
    """Share of conversations the candidate answers while on canary (sticky per conversation)."""

    def __post_init__(self) -> None:
        if self.comparisons < 1:
            raise ValueError("human_judge.comparisons must be >= 1")
        if self.deadline_s <= 0 or self.poll_s <= 0:
            raise ValueError("human_judge.deadline_s and human_judge.poll_s must be > 0 (seconds)")
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError("human_judge.canary_share must be from 0 to 1 (a share of conversations)")


DEMO_JUDGE_REFUSAL = (
    "eval.judge is 'demo' (the demo task's annotator, which scores customer-support replies with a sentiment "
    "lexicon) but this project does not have the demo task switched on (seeding.demo_task: false). Set eval.judge "
    "to 'reward_model' (a judge reward model trained on a slice of your human pairs the training reward model "
    "never sees; with reward.judge_fraction > 0) or 'llm' (an LLM over an OpenAI-compatible endpoint, "
    "eval.llm_judge); see docs/judges.md"
)


def judge_settings_problem(judge: str, *, demo_task: bool, judge_fraction: float, llm_model: str) -> str | None:
    """What is wrong with the judge's settings across sections (checked when params load, before any work)."""
    if judge == "demo" and not demo_task:
        return DEMO_JUDGE_REFUSAL
    if judge == "reward_model" and judge_fraction <= 0:
        return (
            "eval.judge is 'reward_model' but reward.judge_fraction is 0: the judge reward model needs its own slice "
            "of the human pairs, which the training reward model then never sees; set it (e.g. 0.25)"
        )
    if judge == "llm" and not llm_model.strip():
        return "eval.judge is 'llm' but eval.llm_judge.model is empty: name the judge model the endpoint serves"
    return None
