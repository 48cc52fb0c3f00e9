"""The stage API: one function per stage of the loop, each taking its frozen config, the project paths and the
versions it consumes, and returning a small frozen, JSON-serialisable result (``json.dumps(asdict(r))``).

No live model crosses this boundary. Long stages take ``progress(done, total, note)``. The CLI, the Prefect
tasks, the DVC stage commands and the tests all call these same functions:

=========================  ==================================================================  ==================
stage                      function                                                            result
=========================  ==================================================================  ==================
seed: sample               ``sample_seed(DataConfig, paths, *, model, progress)``              ``SeedSample``
seed: label                ``label_seed(DataConfig, paths, *, sample, progress)``              ``SeedLabels``
seed: ingest               ``ingest_seed(DataConfig, paths, *, labels, report_dir, push)``     ``IngestSummary``
validate (+ store)         ``validate_and_store(DataConfig, paths, *, source, out, store)``    ``ValidateResult``
train reward model         ``train_reward_model(RewardConfig, paths, *, data_version, ...)``   ``RewardStageResult``
train policy (PPO)         ``train_policy(PPOConfig, paths, *, model, reward, parent, ...)``   ``PolicyResult``
evaluate                   ``evaluate(EvalConfig, paths, *, model, candidate, kl_target, ...)``  ``EvalResult``
gate                       ``gate(GateConfig, paths, *, evaluation)``                          ``GateResult``
register / promote         ``register_and_decide(paths, *, policy, evaluation, gate)``         ``PromotionResult``
=========================  ==================================================================  ==================

Importing this module imports torch and transformers (a few seconds); the registry's BentoML import stays lazy.
"""

from __future__ import annotations

from components.demo_task.seed import SeedLabels, SeedSample, ingest_seed, label_seed, sample_seed
from components.evaluation import EvalConfig, EvalResult, ModelEval, evaluate
from components.feedback.store import IngestSummary, ValidateResult, validate_and_store
from components.gate import GateCheck, GateConfig, GateResult, gate
from components.params import Params, load_params
from components.ppo.train import PolicyResult, train_policy
from components.progress import Progress
from components.registry import PromotionResult, register_and_decide
from components.reward.train import RewardStageResult, reward_result, train_reward_model

__all__ = [
    "EvalConfig",
    "EvalResult",
    "GateCheck",
    "GateConfig",
    "GateResult",
    "IngestSummary",
    "ModelEval",
    "Params",
    "PolicyResult",
    "Progress",
    "PromotionResult",
    "RewardStageResult",
    "SeedLabels",
    "SeedSample",
    "ValidateResult",
    "evaluate",
    "gate",
    "ingest_seed",
    "label_seed",
    "load_params",
    "register_and_decide",
    "reward_result",
    "sample_seed",
    "train_policy",
    "train_reward_model",
    "validate_and_store",
]
