"""The benchmarks' shared harness: the docs table row update, the entry point's list, percentiles."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness
from bench.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]
NOT_BENCHMARKS = {"harness.py", "__main__.py", "prompts.py", "align_common.py", "trl_anchor.py"}


def _doc(tmp_path: Path, rows: list[str]) -> Path:
    doc = tmp_path / "b.md"
    table = "\n".join([*harness.HEADER, *rows])
    doc.write_text(f"# B\n\nprose\n\n{harness.START}\n{table}\n{harness.END}\n\nmore prose\n", encoding="utf-8")
    return doc


def test_update_row_replaces_its_own_row_and_appends_a_new_one(tmp_path):
    doc = _doc(tmp_path, ["| A | old | 1 | 2 | 3 | x | y |", "| B | keep | 1 | 2 | 3 | x | y |"])
    harness.update_row("A", ["new", "1", "2", "3x", "`python -m bench a`", "`r.json`"], doc)
    harness.update_row("C", ["c|d", "1", "2", "3", "x", "y"], doc)
    text = doc.read_text(encoding="utf-8")
    assert "| A | new | 1 | 2 | 3x | `python -m bench a` | `r.json` |" in text
    assert "old" not in text
    assert "| B | keep |" in text
    assert "| C | c/d |" in text  # a pipe inside a cell would split the row
    assert text.startswith("# B\n\nprose\n\n") and text.endswith("\n\nmore prose\n")


def test_update_row_leaves_the_table_alone_for_raw_figures_outside_the_repository(tmp_path, capsys):
    doc = _doc(tmp_path, ["| A | old | 1 | 2 | 3 | x | `bench/results/a.json` |"])
    before = doc.read_text()
    harness.update_row("A", ["new", "1", "2", "3x", "`python -m bench a`", "`/elsewhere/a.json`"], doc)
    assert doc.read_text() == before and "outside the repository" in capsys.readouterr().out
    harness.update_row("A", ["new", "1", "2", "3x", "`python -m bench a`", "`bench/results/a.json`"], doc)
    assert "| A | new |" in doc.read_text()


def test_update_row_refuses_a_page_without_the_table_markers(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# no table\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no results table"):
        harness.update_row("A", ["x"] * 6, doc)


def test_every_benchmark_module_is_listed_and_every_entry_exists():
    listed = set()
    for name, (target, what) in BENCHMARKS.items():
        assert what, name
        if target.endswith(".py"):
            assert (ROOT / target).is_file(), target
            listed.add(Path(target).name)
            continue
        module, _, function = target.partition(":")
        path = ROOT / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, target
        listed.add(path.name)
    modules = {p.name for p in (ROOT / "bench").glob("*.py")} - NOT_BENCHMARKS
    assert modules == listed, f"bench modules not in python -m bench's list: {sorted(modules - listed)}"


def test_the_entry_point_lists_the_benchmarks_and_refuses_an_unknown_name():
    run = [sys.executable, "-m", "bench"]
    out = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in BENCHMARKS)
    bad = subprocess.run([*run, "no_such_bench"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown benchmark 'no_such_bench'" in bad.stderr


def test_percentile_nearest_rank():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert [harness.percentile(values, q) for q in (0, 50, 100)] == [1.0, 3.0, 5.0]
    assert harness.percentile([7.0], 95) == 7.0


def test_results_record_where_they_ran(tmp_path):
    path = harness.write_results(tmp_path / "r.json", {"benchmark": "x", "figure": 1.5})
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["figure"] == 1.5
    assert record["machine"]["cpu_count"] >= 1 and record["versions"]["ours"]["torch"]
    assert len(record["load_average_at_end"]) == 3


def test_hh_round_stage_seconds_are_never_negative_and_add_up_to_the_wall_time(tmp_path):
    from bench.hh_round import STAGE_ENDS, stage_seconds

    t0 = 1_000_000.0
    # ppo_parent.json kept from an earlier run (same champion: not rewritten), the rest written in this one
    ends = [t0 - 2600.0, t0 + 500.0, t0 + 900.0, t0 + 1000.0, t0 + 1100.0, t0 + 1103.0]
    for (_, rel), end in zip(STAGE_ENDS, ends, strict=True):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}", encoding="utf-8")
        os.utime(path, (end, end))
    got = stage_seconds(tmp_path, t0, 1110.0)
    first, reward = STAGE_ENDS[0][0], STAGE_ENDS[1][0]
    assert got[f"{first} + {reward}"] == 500.0  # the stage that wrote nothing is counted with the next
    assert list(got.values()) == [500.0, 400.0, 100.0, 100.0, 3.0, 7.0]
    assert min(got.values()) >= 0 and sum(got.values()) == 1110.0
    # a round stopped before the evaluation: the time after the last file written is the rest of the wall time
    (tmp_path / STAGE_ENDS[4][1]).unlink()
    stopped = stage_seconds(tmp_path, t0, 1050.0)
    assert stopped == {
        f"{first} + {reward}": 500.0,
        "ppo": 400.0,
        "train_judge": 100.0,
        "evaluate (did not finish) + to exit (the round's summary)": 50.0,
    }
