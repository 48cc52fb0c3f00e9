"""A round's tournament and ``rlhf sweep``: several candidate recipes, one judge, at most one promotion.

A *recipe* (:class:`~components.config.flow.CandidateRecipe`) is the ``policy`` section with some keys changed.
The ``policy`` section's own candidate is trained by the ``ppo`` DVC stage as before; every other recipe is
trained by :func:`train_candidate` into ``models/candidates/<name>/`` (its policy versions, checkpoints, metrics
and reports: not DVC outputs, so ``dvc status`` stays clean) and evaluated by :func:`evaluate_candidate` against
the same champion, with the same judge, prompts and seeds as the ``evaluate`` stage.

Choosing the best of m candidates by their win rates favours the luckiest draw, so the win-rate test of each
candidate ("win rate > ``gate.min_win_rate``", one-sided) is corrected for the m candidates with Holm's step-down
procedure (Holm 1979): :func:`bootstrap_p_value` gives each candidate's p-value from the same cluster bootstrap
over prompts the evaluation's interval uses, :func:`holm_bonferroni` adjusts them. :func:`decide` adds that check
and a "best of the tournament" check to every candidate's gate result, so at most one passes.

Letters: P held-out prompts, K samples per prompt, m candidates.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.config import ConfigError, from_dict, to_dict
from components.config.flow import POLICY_CANDIDATE, CandidateRecipe
from components.config.policy import PolicyConfig
from components.project.paths import ProjectPaths

if TYPE_CHECKING:
    from components.common.progress import Progress
    from components.config.evaluation import EvalConfig
    from components.config.gate import GateConfig
    from components.config.model import ModelConfig
    from components.decide.evaluation import EvalResult
    from components.decide.gate import GateCheck, GateResult
    from components.models.policy.train import PolicyResult

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Statistics: one-sided bootstrap p-values, Holm's step-down correction
# ---------------------------------------------------------------------------------------------


def bootstrap_p_value(outcomes: np.ndarray, threshold: float, *, resamples: int = 2000, seed: int = 0) -> float:
    """One-sided p-value of "win rate <= ``threshold``": the share of cluster-bootstrap win rates at or below it.

    ``outcomes`` has shape (P, K) (1 win, 0.5 tie, 0 loss). Prompts are resampled with the same generator and seed
    as :func:`components.decide.eval_stats.win_rate_interval`, so ``p <= alpha`` exactly when the ``alpha`` quantile of
    the bootstrap (the lower end of the 1 - 2 alpha percentile interval) is above ``threshold`` (Efron & Tibshirani
    1993, ch. 16: the test that inverts the percentile interval).
    """
    outcomes = np.asarray(outcomes, dtype=float)
    if outcomes.ndim == 1:
        outcomes = outcomes[:, None]
    if outcomes.size == 0:
        raise ValueError("no outcomes to test")
    per_prompt = outcomes.mean(axis=1)  # shape: (P,)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_prompt), size=(resamples, len(per_prompt)))  # shape: (resamples, P)
    means = per_prompt[idx].mean(axis=1)  # shape: (resamples,)
    return float((means <= threshold).mean())


def holm_bonferroni(p_values: Sequence[float], alpha: float) -> tuple[list[float], list[bool]]:
    """Holm's step-down procedure (Holm 1979) over m hypotheses: ``(adjusted p-values, rejected)`` in input order.

    Sorted ascending, the i-th smallest p (i = 1..m) is compared with alpha / (m - i + 1) and the procedure stops
    at the first that is larger; equivalently the adjusted p-value max_{j<=i} min(1, (m - j + 1) p_(j)) is <= alpha.
    It controls the family-wise error rate at ``alpha`` under any dependence between the tests, and rejects at
    least what Bonferroni (every p against alpha / m) rejects.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted, [a <= alpha for a in adjusted]


def outcomes_from_verdicts(path: Path) -> np.ndarray:
    """The candidate-vs-champion outcomes of an evaluation from its verdicts file, shape (P, K)."""
    from components.decide.judges.base import VALUE

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "candidate_vs_champion"]
    if not rows:
        raise ValueError(f"{path}: no candidate_vs_champion verdicts; rerun the evaluation")
    prompts = 1 + max(int(r["prompt_index"]) for r in rows)
    samples = 1 + max(int(r["sample_a"]) for r in rows)
    out = np.full((prompts, samples), np.nan)  # shape: (P, K)
    for r in rows:
        out[int(r["prompt_index"]), int(r["sample_a"])] = VALUE[r["outcome"]]
    if np.isnan(out).any():
        raise ValueError(f"{path}: verdicts missing for some (prompt, sample); rerun the evaluation")
    return out


# ---------------------------------------------------------------------------------------------
# Recipes: the policy section with overrides; a sweep's grid
# ---------------------------------------------------------------------------------------------


def recipe_policy(policy: PolicyConfig, recipe: CandidateRecipe, folder: str) -> PolicyConfig:
    """The ``policy`` config of ``recipe``: the section with its algorithm and overrides, its output and
    checkpoints under ``folder`` (relative to the project root). Unknown keys raise ``ConfigError``."""
    raw = apply_recipe(to_dict(policy), recipe)
    raw["output_dir"], raw["checkpoint_dir"] = f"{folder}/policy", f"{folder}/checkpoints"
    return from_dict(PolicyConfig, raw, prefix=f"flow.candidates[{recipe.name}].policy.")


_POLICY_SECTIONS = frozenset(
    f.name
    for f in dataclasses.fields(PolicyConfig)
    if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory())
)
"""The nested sections of ``policy`` (``rloo``, ``grpo``, ...)."""


def apply_recipe(section: dict[str, Any], recipe: CandidateRecipe) -> dict[str, Any]:
    """A copy of a ``policy`` section (a plain dict, as params.yaml holds it) with the recipe's algorithm and
    overrides set."""
    raw = json.loads(json.dumps(section))
    if recipe.algorithm is not None:
        raw["algorithm"] = recipe.algorithm
    for key, value in recipe.overrides.items():
        *parents, leaf = key.split(".")[1:]
        node = raw
        for part in parents:
            if node is raw and part not in raw and part in _POLICY_SECTIONS:
                raw[part] = {}  # a params file may leave a nested section at its defaults
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"candidate {recipe.name}: override {key}: policy has no section {part!r}")
            node = node[part]
        node[leaf] = value
    return raw


def parse_value(text: str) -> Any:
    """One value of a ``KEY=V1,V2`` argument: an int, a float (``1e-4`` too), true/false/null, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _slug(key: str, value: Any) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", f"{key.split('.')[-1]}-{value}".lower()).strip("-")


def sweep_recipes(axes: Sequence[str], *, zip_axes: bool = False) -> list[CandidateRecipe]:
    """Recipes from ``policy.KEY=V1,V2,...`` arguments: their grid (every combination), or with ``zip_axes`` a
    list (the i-th value of every axis together; the axes must be equally long). ``policy.algorithm`` sets the
    recipe's algorithm. Names say the values (``learning-rate-0.0001_algorithm-rloo``)."""
    parsed: list[tuple[str, list[Any]]] = []
    for arg in axes:
        key, sep, values = arg.partition("=")
        key = key.strip()
        if not sep or not key.startswith("policy.") or not values.strip():
            raise ConfigError(f"sweep axis {arg!r}: write policy.KEY=V1,V2 (e.g. policy.learning_rate=1e-4,5e-4)")
        parsed.append((key, [parse_value(v) for v in values.split(",")]))
    if not parsed:
        raise ConfigError("sweep: give at least one axis, e.g. policy.learning_rate=1e-4,5e-4")
    if zip_axes:
        lengths = {len(v) for _, v in parsed}
        if len(lengths) != 1:
            raise ConfigError(f"sweep --list: every axis needs as many values, got {sorted(lengths)}")
        points = list(zip(*(v for _, v in parsed)))
    else:
        points = list(itertools.product(*(v for _, v in parsed)))
    recipes = []
    for point in points:
        settings = dict(zip((k for k, _ in parsed), point))
        algorithm = settings.pop("policy.algorithm", None)
        name = "_".join(_slug(k, v) for k, v in zip((k for k, _ in parsed), point))[:48].strip("-_") or "recipe"
        recipes.append(from_dict(CandidateRecipe, {"name": name, "algorithm": algorithm, "overrides": settings}))
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        recipes = [dataclasses.replace(r, name=f"{i:02d}-{r.name}"[:48]) for i, r in enumerate(recipes)]
    return recipes


def recipe_dict(recipe: CandidateRecipe) -> dict[str, Any]:
    """A recipe as a ``flow.candidates`` entry (what ``params.yaml`` holds)."""
    out: dict[str, Any] = {"name": recipe.name}
    if recipe.algorithm is not None:
        out["algorithm"] = recipe.algorithm
    out["overrides"] = dict(recipe.overrides)
    return out


# ---------------------------------------------------------------------------------------------
# Stages: train and evaluate one extra candidate, in its own folders
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidatePaths(ProjectPaths):
    """The project's paths, with metrics and reports in the candidate's folder ``models/candidates/<name>/``:
    the training metrics, ``ppo.json``, the evaluation and the gate report land there, never on the files the
    DVC stages own."""

    name: str = POLICY_CANDIDATE

    @property
    def folder(self) -> Path:
        return self.candidates / self.name

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics"

    @property
    def reports(self) -> Path:
        return self.folder / "reports"


def _reusable(cfg: PolicyConfig, model: ModelConfig, cpaths: CandidatePaths) -> PolicyResult | None:
    """The candidate's last export when it was trained with this config from the same parent, reward model and
    data (a rerun after a crash, or a round with nothing new), else None."""
    from components.models.policy.train import _policy_result, initial_policy
    from components.records.lineage import data_version

    summary = cpaths.metrics / "ppo.json"
    if not summary.is_file():
        return None
    folder = cpaths.root / json.loads(summary.read_text(encoding="utf-8"))["policy_dir"]
    if not (folder / "manifest.json").is_file():
        return None
    m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    reward = cpaths.root / cfg.reward_model / "manifest.json"
    reward_version = json.loads(reward.read_text(encoding="utf-8")).get("version") if reward.is_file() else None
    same = (
        m.get("params", {}).get("policy") == to_dict(cfg)
        and m.get("parent") == initial_policy(cfg, model, cpaths)[0]
        and m.get("data_version") == data_version(cpaths.root)
        and (m.get("reward_model") or {}).get("version") == reward_version
    )
    return _policy_result(folder) if same else None


def train_candidate(
    policy: PolicyConfig,
    recipe: CandidateRecipe,
    paths: ProjectPaths,
    *,
    model: ModelConfig,
    progress: Progress | None = None,
) -> PolicyResult:
    """Train one extra candidate (the ``policy`` section with ``recipe``) into ``models/candidates/<name>/``.

    Starts from the same parent as the ``ppo`` stage (``registry/ppo_parent.json``) against the same reward model.
    A finished export with the same config, parent, reward model and data is returned as it is; an unfinished run
    with the same config continues from its last checkpoint."""
    from components.models.policy.train import train_policy

    cpaths = CandidatePaths(paths.root, recipe.name)
    cfg = recipe_policy(policy, recipe, str(cpaths.folder.relative_to(paths.root)))
    done = _reusable(cfg, model, cpaths)
    if done is not None:
        log.info("candidate %s: %s was trained with this recipe on these inputs; reused", recipe.name, done.version)
        return done
    result = train_policy(cfg, cpaths, model=model, progress=progress)
    if result is None:  # only the main process returns a result, and this is one process
        raise RuntimeError(f"candidate {recipe.name}: training returned no policy")
    return result


def evaluate_candidate(
    cfg: EvalConfig,
    paths: ProjectPaths,
    *,
    name: str,
    model: ModelConfig,
    candidate: str | Path,
    kl_target: float | None = None,
    demo_task: bool = False,
    progress: Progress | None = None,
) -> EvalResult:
    """The evaluate stage for an extra candidate: the same judge, prompts and seeds against the champion; its
    ``eval.json``, report and verdicts go to ``models/candidates/<name>/``."""
    from components.decide.evaluation import evaluate

    return evaluate(cfg, CandidatePaths(paths.root, name), model=model, candidate=candidate, kl_target=kl_target,
                    demo_task=demo_task, progress=progress)  # fmt: skip


def candidate_paths(paths: ProjectPaths, name: str) -> ProjectPaths:
    """Where candidate ``name`` keeps its evaluation and gate report (the project's own for ``policy``)."""
    return paths if name == POLICY_CANDIDATE else CandidatePaths(paths.root, name)


# ---------------------------------------------------------------------------------------------
# The decision: every candidate's gate plus the corrected test; the best passing one wins
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entrant:
    """One candidate going into the decision: its name, evaluation, own gate result and p-value."""

    name: str
    evaluation: EvalResult
    gate: GateResult
    p_value: float


def _check(name: str, value: Any, threshold: Any, passed: bool, reason: str) -> GateCheck:
    from components.decide.gate import GateCheck

    return GateCheck(name, value, threshold, passed, reason)


def decide(entrants: Sequence[Entrant], *, min_win_rate: float, alpha: float) -> list[GateResult]:
    """Every entrant's gate result with two checks added (one candidate alone: unchanged): its win-rate test
    Holm-corrected over the m entrants at one-sided ``alpha``, and whether it is the tournament's best. The
    best is the highest win rate among those that pass everything else (ties: lower KL, then name); so at most
    one result has ``passed``."""
    if len(entrants) < 2:
        return [e.gate for e in entrants]
    m = len(entrants)
    adjusted, rejected = holm_bonferroni([e.p_value for e in entrants], alpha)
    with_holm = []
    for e, adj, ok in zip(entrants, adjusted, rejected):
        reason = (
            f"win rate {e.evaluation.win_rate:.1%} > {min_win_rate:.1%}, one-sided bootstrap p {e.p_value:.4f}, "
            f"Holm-adjusted over {m} candidates {adj:.4f} {'<=' if ok else '>'} alpha {alpha:g}"
        )
        check = _check(f"win rate > minimum, Holm over {m} candidates (adjusted p)", adj, alpha, ok, reason)
        with_holm.append(dataclasses.replace(e.gate, checks=[*e.gate.checks, check], passed=e.gate.passed and ok))
    passing = [i for i, g in enumerate(with_holm) if g.passed]
    rank = lambda i: (-entrants[i].evaluation.win_rate, _kl(entrants[i]), entrants[i].name)  # noqa: E731
    best = min(passing, key=rank, default=None)
    out = []
    for i, (e, g) in enumerate(zip(entrants, with_holm)):
        if best is None:
            reason, ok = "no candidate passed every check", False
        elif i == best:
            reason, ok = f"best of {len(passing)} passing candidate(s) by win rate", True
        elif g.passed:
            winner = entrants[best]
            reason, ok = f"passed, but {winner.name} won with {winner.evaluation.win_rate:.1%}", False
        else:
            reason, ok = f"{entrants[best].name} won the tournament", False
        check = _check("best candidate of the tournament", e.evaluation.win_rate, None, ok, reason)
        out.append(dataclasses.replace(g, checks=[*g.checks, check], passed=g.passed and ok))
    return out


def decide_tournament(
    eval_cfg: EvalConfig,
    gate_cfg: GateConfig,
    paths: ProjectPaths,
    *,
    entrants: Sequence[tuple[str, EvalResult, GateResult]],
) -> list[GateResult]:
    """The tournament stage: each ``(name, evaluation, gate result)`` gets its one-sided bootstrap p-value of
    "win rate > ``gate.min_win_rate``" from its verdicts, then :func:`decide` (Holm at alpha = (1 -
    ``eval.confidence``) / 2, the one-sided level of the lower end of the gate's two-sided interval)."""
    alpha = (1.0 - eval_cfg.confidence) / 2.0
    found = []
    for name, ev, gate in entrants:
        outcomes = outcomes_from_verdicts(candidate_paths(paths, name).judge_verdicts)  # shape: (P, K)
        p = bootstrap_p_value(
            outcomes, gate_cfg.min_win_rate, resamples=eval_cfg.bootstrap_resamples, seed=eval_cfg.seed
        )
        found.append(Entrant(name, ev, gate, p))
    return decide(found, min_win_rate=gate_cfg.min_win_rate, alpha=alpha)


def _kl(e: Entrant) -> float:
    kl = e.evaluation.candidate.kl
    return float("inf") if kl is None else kl


def row(name: str, recipe: dict[str, Any], policy: dict[str, Any], ev: dict[str, Any], gate: dict[str, Any],
        decision: str) -> dict[str, Any]:  # fmt: skip
    """One candidate's row of the round's table and artifact (JSON-serialisable)."""
    holm = next((c for c in gate.get("checks", []) if c["name"].startswith("win rate > minimum, Holm")), None)
    return {
        "name": name,
        "version": policy.get("version"),
        "algorithm": recipe.get("algorithm") or "",
        "overrides": recipe.get("overrides") or {},
        "win_rate": ev.get("win_rate"),
        "win_rate_low": ev.get("win_rate_low"),
        "win_rate_high": ev.get("win_rate_high"),
        "p_adjusted": holm["value"] if holm else None,
        "kl": (ev.get("candidate") or {}).get("kl"),
        "train_seconds": policy.get("seconds"),
        "eval_seconds": ev.get("seconds"),
        "passed": bool(gate.get("passed")),
        "decision": decision,
        "reasons": [c["reason"] for c in gate.get("checks", []) if not c["passed"]],
    }


def markdown(rows: Sequence[dict[str, Any]], title: str) -> str:
    """The candidates side by side (the Prefect artifact and ``reports/tournament.md``)."""
    pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
    num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    lines = [
        f"# {title}",
        "",
        "| candidate | version | algorithm | overrides | win rate [interval] | Holm p | KL | train s | eval s | "
        "decision |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        overrides = ", ".join(f"{k.removeprefix('policy.')}={v}" for k, v in r["overrides"].items()) or "-"
        lines.append(
            f"| {r['name']} | {r['version'] or '-'} | {r['algorithm'] or '-'} | {overrides} | "
            f"{pct(r['win_rate'])} [{pct(r['win_rate_low'])}, {pct(r['win_rate_high'])}] | "
            f"{num(r['p_adjusted'], '.4f')} | {num(r['kl'], '.3f')} | {num(r['train_seconds'], '.0f')} | "
            f"{num(r['eval_seconds'], '.0f')} | {r['decision']} |"
        )
    failed = [r for r in rows if r["reasons"]]
    if failed:
        lines += ["", "Why not promoted:", ""]
        lines += [f"- **{r['name']}**: " + "; ".join(r["reasons"]) for r in failed]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# A sweep's report: the table, the best recipe as a params file the next retrain can take
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    """What ``rlhf sweep`` measured and wrote (JSON-serialisable)."""

    rows: list[dict[str, Any]]
    """One row per recipe (:func:`row`), in the order they ran."""
    best: str | None
    """The best recipe's name: the tournament winner among the recipes (gate passed, Holm-corrected), else the
    highest win rate (``best_passes`` false); None when nothing was evaluated."""
    best_passes: bool
    report_path: str
    """``reports/sweep/sweep.md``: the table; ``sweep.json`` beside it holds the rows."""
    best_params_path: str | None
    """``reports/sweep/best-params.yaml``: the project's params with the best recipe in the ``policy`` section
    (``rlhf retrain --params`` takes it); its header holds the recipe as a ``flow.candidates`` entry."""


def write_sweep(paths: ProjectPaths, recipes: Sequence[CandidateRecipe], rows: list[dict[str, Any]]) -> SweepResult:
    """Write the sweep's table and, for its best recipe, a params file the next retrain can use."""
    import yaml

    from components.common.fsutil import atomic_write_text
    from components.config import read_params

    out = paths.reports / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    winner = next((r for r in rows if r["passed"]), None)
    best = winner or max(rows, key=lambda r: r["win_rate"] or 0.0, default=None)
    best_params = None
    if best is not None:
        recipe = next(r for r in recipes if r.name == best["name"])
        params = read_params(paths.params)
        params["policy"] = apply_recipe(params.get("policy") or {}, recipe)
        entry = yaml.safe_dump({"candidates": [recipe_dict(recipe)]}, sort_keys=False, default_flow_style=None)
        header = (
            f"# `rlhf sweep`'s best recipe ({recipe.name}) in the policy section: `rlhf retrain --params` this file\n"
            "# makes it the project's params.yaml. To race it against the policy section instead, add it to flow:\n"
            + "".join(f"#   {line}\n" for line in entry.splitlines())
        )
        best_params = out / "best-params.yaml"
        atomic_write_text(best_params, header + yaml.safe_dump(params, sort_keys=False))
    title = f"Sweep: {len(rows)} recipes against the champion"
    atomic_write_text(out / "sweep.md", markdown(rows, title))
    atomic_write_text(out / "sweep.json", json.dumps(rows, indent=2) + "\n")
    return SweepResult(rows, best["name"] if best else None, winner is not None, str(out / "sweep.md"),
                       str(best_params) if best_params else None)  # fmt: skip
