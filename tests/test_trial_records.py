"""One record per evaluated candidate, everywhere: the trial, the CSV row, the MLflow child run
and the heatmap cell of a candidate first stopped early and later evaluated in full all show
the full result; and the coordinator reads the study once per cycle, not several times per
candidate."""

from __future__ import annotations

import csv
import math

import optuna
import pytest
from optuna.trial import TrialState

from searchers.greedy import GreedyElimination
from tale_opt.coordination import study as st
from tale_opt.coordination.coordinator import run_coordinator
from tale_opt.coordination.worker import run_one, run_worker, waiting_candidates
from tale_opt.pipeline.outputs import RunWriter
from tale_opt.pipeline.tracking import SearchTracking
from tale_opt.reporting.heatmap import heatmap_matrix, read_candidates
from tale_opt.tracking.mlflow_tracker import MlflowTracker
from tale_opt.tracking.query import child_runs
from tale_opt.types import Candidate, DropSet, Status
from tests.fake_search import CountingEvaluate, FakeEvaluate, make_searcher, open_test_study

# Per-example outcomes of a 4-layer model on 8 examples (batches of 2).
OUTCOMES = {
    "": [True] * 6 + [False] * 2,  # baseline: 6 of 8
    "0": [True, False] * 4,  # 4 of 8
    "1": [True, True, True, True, True, False, True, False],  # 6 of 8
    "2": [False] * 8,  # 0 of 8: stopped against "1" after one batch, bound 6 of 8
    "3": [True] * 4 + [False] * 4,  # 4 of 8
}


def pruned_then_full(tmp_path, on_observation):
    """A search that finds pruned trials its own searcher cannot trust, and redoes them.

    Layer 1 is dropped by an earlier search on the same study, whose workers stopped "2"
    (and later "0" and "3") against it; this search protects layer 1, so those bounds prove
    nothing here and each of them is evaluated again, in full.
    """
    study = open_test_study({"kind": "sqlite", "path": str(tmp_path / "t.db")}, "shared")
    evaluate = CountingEvaluate(n=8, outcomes=OUTCOMES)
    for key in ("", "1", "2"):
        st.enqueue(study, Candidate(DropSet.parse(key)), prunable=True)
    while waiting_candidates(study):
        run_one(study, evaluate)
    searcher = GreedyElimination(4, epsilon=1.0, max_drop=1, protected=(1,))
    result = run_coordinator(
        study, searcher, evaluate=evaluate, early_stop=True, poll_interval=0.01,
        on_observation=on_observation,
    )  # fmt: skip
    return study, result


def test_a_pruned_trial_keeps_its_bound_in_its_result_and_its_curve_as_its_value(tmp_path):
    study, _ = pruned_then_full(tmp_path, lambda obs, trial: None)
    first = next(t for t in study.get_trials() if t.state == TrialState.PRUNED)
    obs = st.observation_of(first)
    # "2" got none of its first batch of 2 right: 0 + 6 left cannot beat "1"'s 6 (1 < 2).
    assert obs.status is Status.PRUNED and obs.score == 6 / 8
    assert first.user_attrs[st.RESULT]["metrics"]["upper_bound"] == 6 / 8  # its one place
    assert "score" not in first.user_attrs[st.RESULT]
    # Optuna's value of a pruned trial: its last intermediate value, the accuracy it saw.
    assert first.intermediate_values == {2: 0.0} and first.value == 0.0
    assert obs.extras["bounded_by"] == {"drop": "1", "n_correct": 6}
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    for trial in complete:  # a full curve: one point per batch of 2, the last one the score
        assert sorted(trial.intermediate_values) == [2, 4, 6, 8]
        assert trial.intermediate_values[8] == trial.value


def test_a_candidate_evaluated_in_full_after_pruning_shows_the_full_result_everywhere(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "records")
    parent = tracker.start_search({"seed": 0}, {"task": "tiny"})
    tracking = SearchTracking(tracker, parent)
    out = tmp_path / "run"
    seen: list[tuple[str, str]] = []
    with RunWriter(out) as writer:

        def record(obs, trial):
            seen.append((obs.drop.key, obs.status.value))
            writer.record_candidate(obs)
            tracking.log_configuration(obs)

        _, result = pruned_then_full(tmp_path, record)
    redone = {"0": 0.5, "2": 0.0, "3": 0.5}
    for key in redone:  # the scenario: each of them was reported pruned, then complete
        assert seen.index((key, "pruned")) < seen.index((key, "complete"))
    full = {o.drop.key: o.score for o in result.observations}
    assert full == {"": 0.75, **redone}

    # candidate_results.csv: one row per candidate, with the full result.
    with (out / "candidate_results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["drop_key"] for r in rows] == ["", "2", "0", "3"]  # first-recorded order
    for row in rows:
        assert row["status"] == "complete" and float(row["score"]) == full[row["drop_key"]]
        assert row["n_correct"] != "" and row["round"] == str(len(DropSet.parse(row["drop_key"])))

    # MLflow: the same child run, updated to the full result.
    children = {c.tags["tale_opt.drop_key"]: c for c in child_runs(uri, parent)}
    assert sorted(children) == ["", "0", "2", "3"]
    for key, child in children.items():
        assert child.tags["tale_opt.status"] == "complete"
        assert child.tags["tale_opt.candidate"] == f"task_accuracy:{key}"
        assert child.metrics["opt.n_correct"] == full[key] * 8
        if key in redone:  # what only the stopped evaluation had says nothing now
            assert math.isnan(child.metrics["opt.n_seen"])
            assert math.isnan(child.metrics["opt.n_correct_so_far"])

    # The heatmap's cells come from the CSV: full scores, none marked pruned.
    heatmap = heatmap_matrix(read_candidates(out / "candidate_results.csv"), num_layers=4)
    assert heatmap.rounds == [1]
    assert heatmap.values[0] == [0.5, None, 0.0, 0.5]
    assert heatmap.pruned[0] == [False] * 4


def test_a_resumed_run_replaying_a_pruned_result_does_not_undo_the_full_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "records")
    parent = tracker.start_search({"seed": 0}, {"task": "tiny"}, search_key="k")
    tracking = SearchTracking(tracker, parent)
    out = tmp_path / "run"
    observations = []
    with RunWriter(out) as writer:

        def record(obs, trial):
            observations.append(obs)
            writer.record_candidate(obs)
            tracking.log_configuration(obs)

        pruned_then_full(tmp_path, record)
    before = (out / "candidate_results.csv").read_text()
    # Another process resumes the same search and is handed the stale bounds again.
    again = MlflowTracker(uri, "records")
    assert again.start_search({"seed": 0}, {"task": "tiny"}, search_key="k") == parent
    resumed = SearchTracking(again, parent)
    with RunWriter(out) as writer:
        for obs in observations:
            writer.record_candidate(obs)
            resumed.log_configuration(obs)
    assert (out / "candidate_results.csv").read_text() == before
    children = child_runs(uri, parent)
    assert len(children) == 4
    assert {c.tags["tale_opt.status"] for c in children} == {"complete"}


class CountingStorage(optuna.storages.InMemoryStorage):
    """A real in-memory storage that counts the study-wide trial reads made through it."""

    def __init__(self) -> None:
        super().__init__()
        self.trial_reads = 0

    def get_all_trials(self, *args, **kwargs):
        self.trial_reads += 1
        return super().get_all_trials(*args, **kwargs)


@pytest.mark.parametrize("early_stop", [False, True])
def test_an_in_process_search_reads_the_trials_about_twice_per_candidate(early_stop):
    storage = CountingStorage()
    study = st.open_study(storage, "reads", {"fake": True}, {})
    evaluate = CountingEvaluate(seed=3, n=16, batch=2) if early_stop else FakeEvaluate()
    storage.trial_reads = 0
    run_coordinator(study, make_searcher(max_drop=3), evaluate=evaluate, early_stop=early_stop)
    reads, evaluated = storage.trial_reads, len(study.get_trials())
    assert evaluated > 20
    # Per candidate: the coordinator's one read per cycle, and Optuna's own read of the
    # queue when the worker claims the oldest waiting trial. Early termination takes its
    # first rival from the coordinator's read (a candidate evaluated in microseconds never
    # waits the seconds before the rival is read again).
    assert reads <= 2 * evaluated + 2, (reads, evaluated)


def test_a_worker_reads_the_trials_twice_per_candidate():
    storage = CountingStorage()
    study = st.open_study(storage, "worker-reads", {"fake": True}, {})
    keys = ["", "0", "1", "2", "3", "4", "5", "6", "7"]
    for key in keys:
        st.enqueue(study, Candidate(DropSet.parse(key)), prunable=True)
    storage.trial_reads = 0
    # Leaves as soon as the queue is empty (idle_timeout=0).
    stats = run_worker(study, CountingEvaluate(seed=3, n=16, batch=2), idle_timeout=0)
    assert stats.evaluated == len(keys) and stats.pruned > 0
    # Per candidate: the worker's one read per poll (is there work? who is the leader?) and
    # Optuna's read of the queue as it claims the oldest waiting trial; then the last poll.
    assert storage.trial_reads <= 2 * len(keys) + 1, storage.trial_reads
