"""The throttled progress callback the flow's tasks log stage progress with."""

from __future__ import annotations

from flows.progress import Throttled


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_one_line_per_tenth_or_per_interval_and_always_the_last():
    lines: list[str] = []
    clock = Clock()
    p = Throttled(lines.append, "seed-sample", every_fraction=0.1, every_s=15.0, clock=clock)
    for done in range(101):  # 101 calls, no time passing: the first, every 10th, and the last
        p(done, 100, "sampling")
    assert len(lines) == 11
    assert lines[0] == "seed-sample: sampling 0/100 (0 %), 0 s"
    assert lines[-1] == "seed-sample: sampling 100/100 (100 %), 0 s"
    assert [line.split()[2] for line in lines] == [f"{d}/100" for d in range(0, 101, 10)]

    lines.clear()
    p = Throttled(lines.append, "label", every_fraction=0.1, every_s=15.0, clock=clock)
    p(0, 1000, "slow")
    for done in range(1, 40):  # 1 of 1000 per 5 s: under 10 %, so a line only every 15 s
        clock.t += 5.0
        p(done, 1000, "slow")
    assert len(lines) == 1 + 39 // 3
    p(1000, 1000, "slow")
    p(1000, 1000, "slow")  # the last is logged once
    assert lines[-1].startswith("label: slow 1000/1000 (100 %)") and len(lines) == 2 + 39 // 3


def test_a_new_note_starts_its_own_count():
    lines: list[str] = []
    p = Throttled(lines.append, "ingest", clock=Clock())
    p(0, 1, "validating")
    p(0, 2, "versioning")
    p(2, 2, "versioning")
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines] == [
        "validating 0/1",
        "versioning 0/2",
        "versioning 2/2",
    ]
