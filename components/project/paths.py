"""One source of truth for where things live.

Two roots:
- the *project root* (the git + DVC repository): ``data/``, ``models/``, ``metrics/``, ``reports/``;
- the *home* (``$RLHF_HOME``, default ``~/.cache/rlhf-loop``): prepared base models and the local
  DVC remote, which are shared between checkouts and never committed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def rlhf_home() -> Path:
    """Cache folder for prepared base models and the default DVC remote (``$RLHF_HOME``)."""
    env = os.environ.get("RLHF_HOME")
    home = Path(env) if env else Path.home() / ".cache" / "rlhf-loop"
    return home.expanduser().resolve()


def models_cache() -> Path:
    return rlhf_home() / "models"


def dvc_remote_dir() -> Path:
    """Default local DVC remote; override with ``$RLHF_DVC_REMOTE`` or ``dvc remote modify``."""
    env = os.environ.get("RLHF_DVC_REMOTE")
    return Path(env).expanduser().resolve() if env else rlhf_home() / "dvc-remote"


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` that holds ``params.yaml`` (else ``start``)."""
    env = os.environ.get("RLHF_PROJECT")
    if env:
        return Path(env).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


@dataclass(frozen=True)
class ProjectPaths:
    """Every path inside a project checkout, derived from its root."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str root works too

    @classmethod
    def discover(cls, start: Path | None = None) -> ProjectPaths:
        return cls(find_project_root(start))

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def feedback(self) -> Path:
        """Versioned, accepted feedback (tracked by ``data.dvc``)."""
        return self.data / "feedback"

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine"

    @property
    def prompts(self) -> Path:
        return self.data / "prompts"

    @property
    def data_dvc(self) -> Path:
        """The DVC file that tracks ``data/``; its ``md5`` is the data version."""
        return self.root / "data.dvc"

    @property
    def data_versions(self) -> Path:
        """Small, committable log of feedback data versions (one JSON line per DVC version made)."""
        return self.metrics / "data_versions.jsonl"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def pairs(self) -> Path:
        """Accepted preference pairs (Parquet), what the reward model trains on."""
        return self.feedback / "pairs.parquet"

    @property
    def reward_model(self) -> Path:
        """The trained reward model: a transformers folder plus manifest.json (DVC out)."""
        return self.models / "reward"

    @property
    def policies(self) -> Path:
        """Policy versions written by PPO: ``models/policy/<version>/`` (transformers folder + manifest.json);
        each version folder is written once and never replaced."""
        return self.models / "policy"

    @property
    def candidates(self) -> Path:
        """A tournament's extra candidates and a sweep's recipes, one folder each: ``models/candidates/<name>/``
        (``policy/<version>/``, ``checkpoints/``, ``metrics/``, ``reports/``); not DVC outputs, the registry keeps
        the candidates a round decides on."""
        return self.models / "candidates"

    @property
    def seed_work(self) -> Path:
        """Intermediate seed files (sampled replies, labelled pairs) so a retried step never resamples."""
        return self.root / "staging" / "seed"

    @property
    def sample_cache(self) -> Path:
        """Replies the evaluation sampled, by a fingerprint of model files, prompts and sampling settings, so a
        comparison of the same model reads them instead of sampling again (``components/decide/sample_cache.py``)."""
        return self.root / "staging" / "samples"

    @property
    def reward_features(self) -> Path:
        """The reward model's frozen-block output per text, kept between runs (``reward.disk_cache_gib``)."""
        return self.root / "staging" / "reward-features"

    @property
    def registry(self) -> Path:
        """The registry's own status record (status per version, champion pointer) and its lock.

        The model files themselves live in BentoML's model store under ``$BENTOML_HOME``."""
        return self.root / "registry"

    @property
    def live(self) -> Path:
        """Live, not DVC-tracked state of a running service."""
        return self.root / "live"

    @property
    def served_store(self) -> Path:
        """Served outputs and their feedback (SQLite), written by the service; not DVC-tracked."""
        return self.live / "served.sqlite"

    @property
    def eval_metrics(self) -> Path:
        """The latest evaluation of a candidate against the champion (JSON)."""
        return self.metrics / "eval.json"

    @property
    def eval_report(self) -> Path:
        """The latest evaluation as a short Markdown report."""
        return self.reports / "eval.md"

    @property
    def judge_verdicts(self) -> Path:
        """Every verdict of the latest evaluation's judge, with its reason (JSON lines)."""
        return self.reports / "judge_verdicts.jsonl"

    @property
    def compare_reports(self) -> Path:
        """``rlhf compare A B``'s results (``<A>-vs-<B>.json``, ``.md``, ``.verdicts.jsonl``): under ``reports/``
        (git-ignored), no DVC stage's output, so a comparison never changes what the gate reads."""
        return self.reports / "compare"

    @property
    def gate_report(self) -> Path:
        """The latest gate decision with every check (JSON)."""
        return self.metrics / "gate.json"
