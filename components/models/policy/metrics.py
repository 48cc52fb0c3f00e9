"""Policy step metrics (every optimiser): JSONL (one row per step, appended as it runs), CSV, and PNG plots
of score and KL.

Files under ``metrics/``: ``ppo_log.jsonl``, ``ppo_log.csv`` (for ``dvc plots``), ``ppo_score.png``,
``ppo_kl.png``; the summary ``ppo.json`` is written by the stage entry point.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

LOG_JSONL = "ppo_log.jsonl"
LOG_CSV = "ppo_log.csv"
PLOT_SCORE = "ppo_score.png"
PLOT_KL = "ppo_kl.png"


class MetricsWriter:
    """Writes per-step rows as they come; ``start`` first rewrites the log with the rows a run already has.

    A killed run may have logged steps after its last checkpoint; the resumed run repeats them, so
    ``start`` truncates the log to the checkpoint's rows and each step ends up in the log exactly once.
    """

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []

    def start(self, previous: list[dict[str, Any]]) -> None:
        """Begin the log with the rows a resumed run already has (none for a fresh run)."""
        self.rows = list(previous)
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.folder / LOG_JSONL, "".join(json.dumps(row) + "\n" for row in self.rows))
        self._write_csv()
        for name in (PLOT_SCORE, PLOT_KL):  # drawn again by finish(); until then no plot of other steps
            (self.folder / name).unlink(missing_ok=True)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        # A kill mid-append leaves at most a partial last line, which a resume rewrites (see start).
        with open(self.folder / LOG_JSONL, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self._write_csv()

    def finish(self) -> None:
        if self.enabled and self.rows:
            self._write_csv()
            plot(self.rows, self.folder)

    def _write_csv(self) -> None:
        if not self.rows:
            (self.folder / LOG_CSV).unlink(missing_ok=True)
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(self.rows)
        _write_atomic(self.folder / LOG_CSV, buf.getvalue())


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def plot(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """PNG plots of score and KL (with the controller's coefficient) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    out = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    nan = float("nan")
    if "objective/score" in rows[-1]:
        ax.plot(steps, [r.get("objective/score", nan) for r in rows], marker="o", label="score (mean)")
        ax.plot(steps, [r.get("objective/rlhf_reward", nan) for r in rows], marker=".", label="score - beta KL")
        ax.set_ylabel("reward")
    else:  # offline preference optimisation: no reward model in the loop, its loss instead
        ax.plot(steps, [r.get("loss/policy", nan) for r in rows], marker="o", label="loss")
        ax.set_ylabel("loss")
    ax.set_xlabel("step")
    ax.set_title("policy: reward")
    ax.legend()
    fig.tight_layout()
    out.append(folder / PLOT_SCORE)
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["objective/kl"] for r in rows], marker="o", color="tab:red", label="KL to reference (nats)")
    ax.set_xlabel("step")
    ax.set_ylabel("KL (nats / reply)")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["objective/kl_coef"] for r in rows], ls="--", color="tab:gray", label="beta")
    ax2.set_ylabel("beta")
    ax.set_title("policy: KL to the reference")
    fig.legend(loc="upper left")
    fig.tight_layout()
    out.append(folder / PLOT_KL)
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    return out


def steps_run(summary: dict[str, Any]) -> str | None:
    """The policy stage's steps in words, from its summary (``metrics/ppo.json``, a policy manifest's ``metrics``):
    how many ran and, where a KL bound stopped training, the KL it stopped at and the step it went back to."""
    if "steps" not in summary:
        return None
    stop = summary.get("stopped_at_step")
    if stop is None:
        last = summary.get("kl_sampled_last")
        return f"{summary['steps']}" + ("" if last is None else f" (last KL {last:.2f})")
    if summary.get("exported_step") is None:
        return f"{stop} (KL {summary['kl_at_stop']:.2f} > bound: stopped)"
    kl, kept = summary["kl_at_stop"], summary["exported_kl"]
    return f"{stop}, back to {summary['exported_step']} (KL {kl:.2f} > bound; {kept:.2f})"
