"""The human judge: people's comparisons on canary counted, a decision on enough of them, none past the deadline."""

from __future__ import annotations

import pytest

from components.config.judges import HumanJudgeConfig
from components.data.served_store import ServedOutput, open_store
from components.decide import canary
from components.decide.judges.human import await_human_verdict, human_evaluation, tally
from components.project.paths import ProjectPaths


def test_tally_counts_ties_half_and_brackets_the_rate():
    t = tally(["win", "win", "tie", "loss"], ["ann", "bob", "ann", "cy"], resamples=500)
    assert (t.comparisons, t.wins, t.ties, t.losses, t.raters) == (4, 2, 1, 1, 3)
    assert t.win_rate == pytest.approx(2.5 / 4)
    assert 0.0 <= t.low <= t.win_rate <= t.high <= 1.0
    empty = tally([], [])
    assert (empty.comparisons, empty.win_rate, empty.low) == (0, None, None)


class FakeClock:
    """Time that moves only when the judge sleeps; ``on_sleep`` lets people compare meanwhile."""

    def __init__(self, on_sleep=None):
        self.now, self.on_sleep, self.sleeps = 1000.0, on_sleep, 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.sleeps += 1
        if self.on_sleep:
            self.on_sleep(self.sleeps)


def _compare(store, n: int, start: int = 0, outcome: str = "win") -> None:
    """``n`` raters' choices between a candidate reply and a champion reply to the same prompt."""
    for i in range(start, start + n):
        msgs = [{"role": "user", "content": f"q{i}"}]
        store.log_outputs([
            ServedOutput(id=f"c{i}", prompt=f"q{i}", reply="c", model_version="cand", messages=msgs),
            ServedOutput(id=f"h{i}", prompt=f"q{i}", reply="h", model_version="champ", messages=msgs),
        ])  # fmt: skip
        chosen, rejected = ("c", "h") if outcome == "win" else ("h", "c")
        store.record_pair(f"{chosen}{i}", f"{rejected}{i}", annotator=f"rater{i % 3}")


def test_waits_on_canary_until_enough_comparisons_then_decides_and_takes_it_off(tmp_path):
    paths = ProjectPaths(tmp_path)
    url = str(tmp_path / "live" / "served.sqlite")
    store = open_store(url)
    cfg = HumanJudgeConfig(comparisons=6, deadline_s=3600, poll_s=60, canary_share=0.3)
    seen = []

    def people(n_sleeps: int) -> None:  # 3 comparisons arrive during each wait; the candidate is on canary
        seen.append(canary.read_assignment(paths))
        _compare(store, 3, start=3 * (n_sleeps - 1))

    clock = FakeClock(people)
    v = await_human_verdict(cfg, paths, candidate="cand", champion="champ", store_url=url, clock=clock,
                            sleep=clock.sleep, resamples=200)  # fmt: skip
    assert v.decided and v.tally.comparisons == 6 and v.tally.win_rate == 1.0 and clock.sleeps == 2
    assert seen[0].version == "cand" and seen[0].share == 0.3 and seen[0].deadline == 1000.0 + 3600
    assert canary.read_assignment(paths) is None  # off canary once decided
    assert (paths.reports / "human_judge.json").is_file()
    store.close()


def test_past_the_deadline_with_too_few_there_is_no_decision(tmp_path):
    paths = ProjectPaths(tmp_path)
    url = str(tmp_path / "live" / "served.sqlite")
    store = open_store(url)
    _compare(store, 2)
    cfg = HumanJudgeConfig(comparisons=5, deadline_s=100, poll_s=30)
    clock = FakeClock()
    v = await_human_verdict(cfg, paths, candidate="cand", champion="champ", store_url=url, clock=clock,
                            sleep=clock.sleep, resamples=200)  # fmt: skip
    assert not v.decided and v.tally.comparisons == 2
    assert "2 of 5" in v.reason and "champion stays" in v.reason
    assert clock.now == pytest.approx(1100.0)  # waited up to the deadline, not past it
    assert canary.read_assignment(paths) is None
    with pytest.raises(ValueError, match="no human decision"):
        human_evaluation(None, v)  # type: ignore[arg-type]
    store.close()


def test_a_restarted_wait_keeps_the_first_deadline_and_the_comparisons_made(tmp_path):
    paths = ProjectPaths(tmp_path)
    url = str(tmp_path / "live" / "served.sqlite")
    store = open_store(url)
    _compare(store, 4)  # made before the flow was restarted
    canary.assign(paths, "cand", 0.1, reason="human judge", deadline=1050.0)
    cfg = HumanJudgeConfig(comparisons=5, deadline_s=10_000, poll_s=20)
    clock = FakeClock(lambda n: _compare(store, 1, start=4) if n == 1 else None)
    v = await_human_verdict(cfg, paths, candidate="cand", champion="champ", store_url=url, clock=clock,
                            sleep=clock.sleep, resamples=200)  # fmt: skip
    assert v.decided and v.tally.comparisons == 5 and v.deadline == 1050.0
    store.close()


def test_the_assignment_file_wins_over_params_and_clear_only_takes_off_the_named_version(tmp_path):
    paths = ProjectPaths(tmp_path)
    assert canary.effective(paths, None, 0.0, False) is None
    assert canary.effective(paths, "v2", 0.0, True).shadow
    canary.assign(paths, "v3", 0.25)
    assert canary.effective(paths, "v2", 0.5, False).version == "v3"
    assert not canary.clear(paths, "v2") and canary.clear(paths, "v3")
    assert canary.read_assignment(paths) is None
