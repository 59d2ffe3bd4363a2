"""The console's round progress: one line per round, the candidates' detail at DEBUG.

Fed with real observations and searcher proposals, on a fake clock (no timing assertions).
"""

from __future__ import annotations

import io
import logging

import pytest

from searchers.greedy import GreedyElimination
from tale_opt.pipeline.progress import RoundProgress
from tale_opt.types import Candidate, DropSet, Observation, Status


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def scored(candidate: Candidate, score: float, pruned: bool = False) -> Observation:
    status = Status.PRUNED if pruned else Status.COMPLETE
    return Observation(candidate, score, {}, {}, status)


def run_rounds(progress: RoundProgress, clock: Clock, step: float = 10.0) -> None:
    """A greedy search over 4 layers, 2 rounds: each candidate takes `step` seconds; in
    round 1 the layer-2 candidate stops early."""
    searcher = GreedyElimination(4, epsilon=0.5, max_drop=2)
    while not searcher.done:
        for candidate in searcher.propose():
            clock.now += step
            pruned = candidate.drop == DropSet((2,))
            obs = scored(candidate, 0.5 - 0.01 * sum(candidate.drop), pruned=pruned)
            searcher.observe([obs])
            progress.observed(obs, searcher.propose())


def records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tale_opt"]


def test_one_record_per_round_off_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="tale_opt")
    clock = Clock()
    progress = RoundProgress(io.StringIO(), interval=1e9, clock=clock)
    run_rounds(progress, clock)
    progress.close()
    assert records(caplog) == [
        "round 0: 1 candidate in 10 s",
        "round 1: 4 candidates in 40 s, 1 stopped early",
        "round 2: 3 candidates in 30 s",
    ]


def test_a_long_round_reports_progress_with_eta_every_interval(caplog):
    caplog.set_level(logging.INFO, logger="tale_opt")
    clock = Clock()
    run_rounds(RoundProgress(io.StringIO(), interval=25.0, clock=clock), clock)
    lines = records(caplog)
    # Round 1: after 3 of 4 candidates (30 s >= 25 s since the round began), 10 s per
    # candidate so far, 1 left.
    assert "round 1: 3/4 candidates, 30 s, ETA 10 s, 1 stopped early" in lines
    assert lines.index("round 1: 3/4 candidates, 30 s, ETA 10 s, 1 stopped early") < (
        lines.index("round 1: 4 candidates in 40 s, 1 stopped early")
    )


def test_a_terminal_gets_a_live_line_that_the_round_record_replaces(caplog):
    caplog.set_level(logging.INFO, logger="tale_opt")
    clock = Clock()
    terminal = Terminal()
    progress = RoundProgress(terminal, interval=1.0, clock=clock)
    assert progress.live
    run_rounds(progress, clock)
    drawn = terminal.getvalue()
    assert "round 1: 1/4 candidates" in drawn and "round 1: 3/4 candidates" in drawn
    assert "1 stopped early" in drawn
    # No periodic records on a terminal: the live line is the progress.
    assert all(" in " in line for line in records(caplog))
    assert len(records(caplog)) == 3


def test_a_round_counts_each_candidate_once_and_ends_on_interrupt(caplog):
    caplog.set_level(logging.INFO, logger="tale_opt")
    clock = Clock()
    progress = RoundProgress(io.StringIO(), interval=1e9, clock=clock)
    first, second = Candidate(DropSet((0,))), Candidate(DropSet((1,)))
    pending = [first, second]
    clock.now += 5
    progress.observed(scored(first, 0.4, pruned=True), pending[1:])
    clock.now += 5
    progress.observed(scored(first, 0.4), pending[1:])  # the full evaluation of a pruned one
    assert progress.line() == "round 1: 1/2 candidates, 10 s, ETA 10 s, 1 stopped early"
    progress.close()  # Ctrl-C: how far the round got is recorded, not lost
    assert records(caplog) == ["round 1: stopped after 1/2 candidates, 10 s, 1 stopped early"]
