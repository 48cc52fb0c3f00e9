"""Configuration of the serving stage (``serve:`` in ``params.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.config import load_section
from components.project.paths import ProjectPaths


@dataclass(frozen=True)
class ServeConfig:
    """How the BentoML service batches, limits and records requests."""

    host: str = "127.0.0.1"
    """Address `rlhf serve` binds; anything but loopback needs ``RLHF_API_TOKEN`` set."""
    port: int = 3000
    """Port `rlhf serve` listens on."""
    shutdown_grace_s: int = 30
    """Seconds the requests in flight get to finish after `rlhf serve` receives SIGTERM or SIGINT: from the
    signal on no new connection is served; a request still running when the grace period ends is cut (its
    connection closed), then every process of the service exits."""
    max_batch_size: int = 16
    """Most replies sampled together (rows of the running batch); a request joins at the next decode step."""
    max_queued: int = 64
    """Most replies waiting for a place in the running batch; more get 503 with ``Retry-After``."""
    deadline_s: float = 300.0
    """Per-request deadline in seconds: a request still waiting then gets 503, a reply still running is cut
    there (``finish_reason`` ``length``)."""
    default_max_new_tokens: int = 64
    """Reply length when a request does not say."""
    max_new_tokens_limit: int = 512
    """Largest ``max_new_tokens`` / ``max_tokens`` a request may ask for (more is a 4xx)."""
    max_prompt_chars: int = 8000
    """Longest prompt or message accepted, in characters (more is a 4xx)."""
    max_messages: int = 64
    """Most messages in one chat request."""
    max_n: int = 8
    """Most replies one chat request may ask for (``n``)."""
    max_body_bytes: int = 1_048_576
    """Largest request body in bytes; bigger bodies get 413 before they are parsed."""
    open_feedback: bool = False
    """false (the default): ``/feedback`` needs a rater's token (``rlhf raters add``) and the review queue the
    admin token (``rlhf raters admin``), even on loopback. true, and only without ``RLHF_API_TOKEN`` (loopback
    only): both accept requests without a token, as rater ``local``."""
    rate_limit_per_minute: int = 300
    """Requests a minute each rater token may send, on any route (0 = no limit); more get 429 with
    ``Retry-After``. The admin token and ``RLHF_API_TOKEN`` are not limited."""
    rate_limit_burst: int = 60
    """Requests a rater token may send at once before the per-minute rate applies (the bucket's size)."""
    store_url: str | None = None
    """SQLAlchemy URL of the served-output store; null = SQLite at ``live/served.sqlite``."""
    reload_poll_seconds: float = 5.0
    """How often the service checks whether the champion changed (0 = never)."""
    torch_threads: int = 0
    """torch intra-op threads per worker; 0 = torch's default (every core). 1 keeps latency steadier on CPUs
    shared with other work (the load test in ``bench/`` sets it)."""
    bf16: bool = True
    """Generate under bf16 autocast where the device computes bf16 natively (``components/models/precision.py``)."""
    prefix_cache: bool = True
    """Run the prompt opening every chat request shares (the chat template's system turn with ``model.system_prompt``
    and the user turn's header, derived from the tokenizer) through the model once per served model and keep its
    KV cache: a request whose prompt starts with it prefills only the rest. The same replies up to float rounding;
    false prefills every prompt whole (for A/B runs)."""
    prefill_rows: int = 4
    """Most prompts prefilled in one forward pass. Requests arriving together (a burst) are prefilled in passes of
    this many, back to back before the running batch's next decode step, and each pass's requests get their first
    token as soon as their pass ends; 0 = all admitted prompts in one pass (at most ``max_batch_size``). A pass is
    compute-bound on a CPU, so small passes let the first requests of a burst start early for a few percent more
    prefill time in all (each pass has a fixed cost); on a GPU, where prefilling 16 short prompts costs about as
    much as one, 0 suits."""
    canary_version: str | None = None
    """A registered model version served beside the champion to ``canary_share`` of the conversations
    (null = the champion only). Read when the service starts."""
    canary_share: float = 0.0
    """Share of conversations (0..1) the canary answers; sticky: a conversation (its first user message and
    the request's ``user``) always goes to the same model. Every output names its ``model_version``."""
    shadow: bool = False
    """The candidate (``canary_version``) also answers every request the champion answers, unseen by the user;
    its reply is logged with its version (``params.arm: shadow``, ``params.shadow_of``: the reply the user got)."""

    def __post_init__(self) -> None:
        if self.torch_threads < 0:
            raise ValueError("torch_threads must be >= 0 (0 = torch's default)")
        if self.max_batch_size < 1 or self.max_queued < 1:
            raise ValueError("max_batch_size and max_queued must be at least 1")
        if self.prefill_rows < 0:
            raise ValueError("prefill_rows must be >= 0 (0 = all admitted prompts in one pass)")
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError("canary_share must be from 0 to 1 (a share of conversations)")
        if (self.canary_share > 0 or self.shadow) and not self.canary_version:
            raise ValueError("canary_share > 0 or shadow: true needs canary_version (a registered model version)")
        if self.rate_limit_per_minute < 0 or self.rate_limit_burst < 1:
            raise ValueError("rate_limit_per_minute must be >= 0 (0 = no limit) and rate_limit_burst >= 1")
        if self.shutdown_grace_s < 1:
            raise ValueError("shutdown_grace_s must be at least 1 (seconds)")
        if self.deadline_s <= 0:
            raise ValueError("deadline_s must be positive (seconds)")
        if self.max_new_tokens_limit < 1 or not 1 <= self.default_max_new_tokens <= self.max_new_tokens_limit:
            raise ValueError("need 1 <= default_max_new_tokens <= max_new_tokens_limit")


def load_serve_config(paths: ProjectPaths, params: Path | None = None) -> ServeConfig:
    return load_section(ServeConfig, "serve", params or paths.params)
