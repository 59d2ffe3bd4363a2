"""A fake evaluator and process entry points for coordination tests (no model, no torch).

Scores come from `searchers.testing.fake_score`, so they are deterministic per drop set;
each evaluation can append a line to a log file so tests can count evaluations per candidate
across processes, and can sleep to keep a trial in flight long enough to kill its worker.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchers.greedy import GreedyElimination
from searchers.testing import fake_score
from tale_opt.outcomes import OUTCOMES_KEY, Race, RaceState, outcome_record
from tale_opt.types import Candidate, Observation, Status

NUM_LAYERS = 8


@dataclass
class FakeEvaluate:
    """Deterministic score per drop set; optional delay and evaluation log."""

    seed: int = 0
    sleep: float = 0.0
    log_dir: str | None = None

    def __call__(self, candidate: Candidate) -> Observation:
        if self.log_dir is not None:
            with open(Path(self.log_dir) / f"{os.getpid()}.log", "a") as handle:
                handle.write(f"start {candidate.drop.key}\n")
        if self.sleep:
            time.sleep(self.sleep)
        score = fake_score(candidate, NUM_LAYERS, self.seed)
        if self.log_dir is not None:
            with open(Path(self.log_dir) / f"{os.getpid()}.log", "a") as handle:
                handle.write(f"done {candidate.drop.key}\n")
        return Observation(candidate, score, {"accuracy": score}, {"worker_pid": os.getpid()})


def make_searcher(**options: Any) -> GreedyElimination:
    return GreedyElimination(NUM_LAYERS, **{"epsilon": 0.08, **options})


def evaluations(log_dir: Path) -> dict[str, int]:
    """How often each drop set was evaluated to the end, over every process's log."""
    counts: dict[str, int] = {}
    for path in Path(log_dir).glob("*.log"):
        for line in path.read_text().splitlines():
            kind, _, key = line.partition(" ")
            if kind == "done":
                counts[key] = counts.get(key, 0) + 1
    return counts


def open_test_study(storage_cfg: Mapping[str, Any], name: str, *, create: bool = True):
    from tale_opt.coordination.storage import StorageConfig, open_storage
    from tale_opt.coordination.study import load_study, open_study

    storage = open_storage(StorageConfig.from_mapping(storage_cfg), create=create)
    if create:
        return open_study(storage, name, {"fake": True}, {"fake": True})
    return load_study(storage, name)


def worker_process(
    storage_cfg: Mapping[str, Any],
    name: str,
    evaluate: FakeEvaluate,
    idle_timeout: float = 600,
    barrier: str | None = None,
) -> None:
    """Entry point of a spawned fake worker.

    With `barrier` (a directory), the worker writes ``ready-<pid>`` there once connected and
    starts only when a ``go`` file appears, so that every worker races for the same trials.
    """
    from tale_opt.coordination.worker import run_worker

    study = None
    deadline = time.monotonic() + idle_timeout
    while study is None and time.monotonic() < deadline:
        study = open_test_study(storage_cfg, name, create=False)
        time.sleep(0.05)
    if barrier is not None:
        (Path(barrier) / f"ready-{os.getpid()}").touch()
        while not (Path(barrier) / "go").exists():
            time.sleep(0.01)
    run_worker(study, evaluate, poll_interval=0.02, idle_timeout=idle_timeout)


def coordinator_process(
    storage_cfg: Mapping[str, Any], name: str, evaluate: FakeEvaluate | None, out: str
) -> None:
    """Entry point of a spawned fake coordinator; writes the result's scores to `out`."""
    import json

    from tale_opt.coordination.coordinator import run_coordinator

    study = open_test_study(storage_cfg, name)
    result = run_coordinator(
        study, make_searcher(), evaluate=evaluate, poll_interval=0.05, lost_after=30
    )
    Path(out).write_text(json.dumps(result_digest(result)))


def result_digest(result: Any) -> dict[str, Any]:
    """Everything in a SearchResult except timings: what must not depend on the workers."""

    def obs(o: Observation) -> list[Any]:
        return [o.drop.key, o.score, o.status.value]

    return {
        "trajectory": [obs(o) for o in result.trajectory],
        "best": obs(result.best),
        "bsba": obs(result.bsba),
        "threshold": result.threshold,
        "stop_reason": result.stop_reason,
        "observations": [obs(o) for o in result.observations],
    }


def exit_with(code: int, threads: int, parent_pid: int) -> None:
    """A worker that dies at once (spawn target for LocalWorkers tests)."""
    raise SystemExit(code)


@dataclass
class CountingEvaluate:
    """Scores drop sets by counting correct examples, `batch` at a time, and takes a race hook
    like `CandidateEvaluator` (``evaluate(candidate, race=...)``): the learning curve, exact
    early termination and racing see the same per-example outcomes as with a model.

    Per-example outcomes come from `outcomes` (drop key -> list of bools) or, when None, are
    drawn deterministically per drop set (any process draws the same) with `fake_score` as
    the chance of being right.
    """

    seed: int = 0
    n: int = 16
    batch: int = 2
    outcomes: dict[str, list[bool]] | None = None
    supports_race = True

    def correct(self, candidate: Candidate) -> list[bool]:
        if self.outcomes is not None:
            return self.outcomes[candidate.drop.key]
        rng = random.Random(f"{self.seed}:{candidate.drop.key}")
        chance = fake_score(candidate, NUM_LAYERS, self.seed)
        return [rng.random() < chance for _ in range(self.n)]

    def __call__(self, candidate: Candidate, *, race: Race | None = None) -> Observation:
        right_or_wrong = self.correct(candidate)
        n, right = len(right_or_wrong), 0
        seen: dict[int, bool] = {}
        go_on = race is None or race(RaceState(n, seen, 0))
        for start in range(0, n, self.batch):
            if not go_on:
                break
            for i in range(start, min(start + self.batch, n)):
                seen[i] = right_or_wrong[i]
                right += right_or_wrong[i]
            go_on = race is None or race(RaceState(n, seen, right))
        record = outcome_record(n, seen)
        if len(seen) < n:
            bound = right + n - len(seen)
            metrics = {"n_examples": n, "n_seen": len(seen), "n_correct_so_far": right,
                       "upper_bound": bound / n}  # fmt: skip
            extras = {OUTCOMES_KEY: record}
            return Observation(candidate, bound / n, metrics, extras, status=Status.PRUNED)
        metrics = {"n_examples": n, "n_correct": right}
        return Observation(candidate, right / n, metrics, {OUTCOMES_KEY: record})
