"""The coordinator and workers over every storage, with a fake evaluator (no model).

The specification: however many workers there are, whichever of them dies mid-trial and
however often the coordinator is restarted, a search gives exactly the result of one
uninterrupted single-process run, and no candidate is evaluated twice.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections import Counter

import optuna
import pytest

from tale_opt.coordination import study as st
from tale_opt.coordination.coordinator import run_coordinator
from tale_opt.coordination.worker import WorkerStats, run_one, run_worker
from tale_opt.errors import SearchFailed
from tale_opt.types import Candidate, DropSet
from tests.fake_search import (
    FakeEvaluate,
    coordinator_process,
    evaluations,
    make_searcher,
    open_test_study,
    result_digest,
    worker_process,
)

STORAGES = ["sqlite", "journal", "postgres"]
# Short liveness settings so a dead worker's trial is re-run within seconds.
LIVENESS = {"heartbeat_interval": 1, "grace_period": 2, "poll_interval": 0.05}
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(params=STORAGES)
def storage_cfg(request, tmp_path):
    """A storage config of each kind; PostgreSQL studies are deleted afterwards."""
    kind = request.param
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        cfg = {"kind": "postgres", "url": url, **LIVENESS}
    else:
        cfg = {"kind": kind, "path": str(tmp_path / f"trials.{kind}"), **LIVENESS}
    yield cfg
    if kind == "postgres":
        storage = optuna.storages.RDBStorage(url.replace("://", "+psycopg2://", 1))
        for summary in optuna.get_all_study_summaries(storage):
            if summary.study_name.startswith(request.node.name[:20]):
                optuna.delete_study(study_name=summary.study_name, storage=storage)


def unique_name(request) -> str:
    return f"{request.node.name[:20]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def reference() -> dict:
    """The result of one uninterrupted in-process search (in-memory storage)."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(st.FINGERPRINT, {"fake": True})
    return result_digest(run_coordinator(study, make_searcher(), evaluate=FakeEvaluate()))


def complete_keys(study) -> Counter:
    return Counter(
        st.candidate_of(t).drop.key
        for t in study.get_trials(deepcopy=False)
        if st.observation_of(t) is not None
    )


def test_in_process_search_through_storage_equals_the_reference(storage_cfg, request, reference):
    study = open_test_study(storage_cfg, unique_name(request))
    result = run_coordinator(study, make_searcher(), evaluate=FakeEvaluate(), poll_interval=0.05)
    assert result_digest(result) == reference
    assert st.is_finished(study)


def test_three_workers_give_the_result_of_one(storage_cfg, request, reference, tmp_path):
    name = unique_name(request)
    study = open_test_study(storage_cfg, name)
    evaluate = FakeEvaluate(sleep=0.01, log_dir=str(tmp_path))
    workers = [
        threading.Thread(
            target=lambda: run_worker(
                open_test_study(storage_cfg, name, create=False),
                evaluate,
                poll_interval=0.02,
                idle_timeout=600,
            )
        )
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    result = run_coordinator(study, make_searcher(), poll_interval=0.02)
    for worker in workers:
        worker.join(30)
    assert not any(worker.is_alive() for worker in workers), "workers leave when it ends"
    assert result_digest(result) == reference
    counts = evaluations(tmp_path)
    assert set(counts.values()) == {1}, f"evaluated twice: {counts}"
    assert set(complete_keys(study).values()) == {1}


def test_a_resumed_coordinator_reevaluates_nothing(tmp_path, request, reference):
    cfg = {"kind": "sqlite", "path": str(tmp_path / "t.db"), **LIVENESS}
    name = unique_name(request)
    calls = []

    def crashing(candidate):
        if len(calls) == 12:
            raise KeyboardInterrupt  # the coordinator process dies in the middle of a trial
        calls.append(candidate.drop.key)
        return FakeEvaluate()(candidate)

    with pytest.raises(KeyboardInterrupt):
        run_coordinator(open_test_study(cfg, name), make_searcher(), evaluate=crashing)
    resumed: list[str] = []

    def counting(candidate):
        resumed.append(candidate.drop.key)
        return FakeEvaluate()(candidate)

    result = run_coordinator(open_test_study(cfg, name), make_searcher(), evaluate=counting)
    assert result_digest(result) == reference
    assert not set(resumed) & set(calls), "a completed candidate was evaluated again"
    assert len(calls) + len(resumed) == len(reference["observations"])


def test_an_evaluation_error_in_a_worker_fails_the_search_with_its_message(tmp_path, request):
    cfg = {"kind": "sqlite", "path": str(tmp_path / "t.db"), **LIVENESS}

    def broken(candidate):
        raise RuntimeError("CUDA out of memory")

    study = open_test_study(cfg, unique_name(request))
    # Evaluated in-process (workers=0): the same one-line failure a worker's error gives,
    # with the evaluation's own exception as the cause (debug=true shows its traceback).
    with pytest.raises(
        SearchFailed,
        match=r"evaluating drop set \{\} failed in worker .* \(trial 0\): "
        r"RuntimeError: CUDA out of memory",
    ) as failed:
        run_coordinator(study, make_searcher(), evaluate=broken)
    assert isinstance(failed.value.__cause__, RuntimeError)
    # A coordinator that only waits for workers reports the worker's error instead.
    name = study.study_name
    raised: list[BaseException] = []  # what the worker thread raised, checked in this thread

    def work() -> None:
        try:
            run_worker(open_test_study(cfg, name, create=False), broken, poll_interval=0.02)
        except BaseException as err:
            raised.append(err)

    worker = threading.Thread(target=work)
    worker.start()
    with pytest.raises(SearchFailed, match="CUDA out of memory"):
        run_coordinator(study, make_searcher(), poll_interval=0.02)
    worker.join(60)
    assert not worker.is_alive(), "the worker did not leave after its evaluation raised"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert "CUDA out of memory" in str(raised[0])


def test_a_slow_worker_whose_trial_was_declared_stale_discards_its_result(tmp_path, request):
    cfg = {"kind": "sqlite", "path": str(tmp_path / "t.db"), **LIVENESS}
    study = open_test_study(cfg, unique_name(request))
    st.enqueue(study, Candidate(DropSet((3,))))
    stats = WorkerStats()
    worker = threading.Thread(
        target=lambda: outcome.append(run_one(study, FakeEvaluate(sleep=1.0), stats))
    )
    outcome: list[bool] = []
    worker.start()
    running = optuna.trial.TrialState.RUNNING
    wait_for(lambda: study.get_trials(states=(running,)), 1800, "the trial to start")
    (trial,) = study.get_trials(states=(running,))
    # What fail_stale_trials does to a worker that did not beat in time (e.g. a long GC pause).
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    worker.join(10)
    assert outcome == [False] and stats.superseded == 1 and stats.evaluated == 0
    assert st.observation_of(study.get_trials()[0]) is None


def spawn(target, *args):
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_replaced_and_the_result_is_unchanged(
    storage_cfg, request, reference, tmp_path
):
    name = unique_name(request)
    study = open_test_study(storage_cfg, name)
    victim_log, healthy_log = tmp_path / "victim", tmp_path / "healthy"
    victim_log.mkdir(), healthy_log.mkdir()
    # The victim takes the first trial (the baseline) and sleeps in it; nothing else can start
    # before the baseline is known, so the kill certainly lands mid-trial.
    victim = spawn(
        worker_process, storage_cfg, name, FakeEvaluate(sleep=60, log_dir=str(victim_log))
    )
    coordinator = threading.Thread(
        target=lambda: results.append(run_coordinator(study, make_searcher(), poll_interval=0.05))
    )
    results: list = []
    coordinator.start()
    wait_for(lambda: list(victim_log.glob("*.log")), 1800, "the victim to start a trial")
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    healthy = spawn(worker_process, storage_cfg, name, FakeEvaluate(log_dir=str(healthy_log)))
    coordinator.join(120)
    healthy.join(30)
    assert results and result_digest(results[0]) == reference
    assert evaluations(victim_log) == {}  # it never finished anything
    counts = evaluations(healthy_log)
    assert set(counts.values()) == {1} and counts[""] == 1  # the baseline was re-run once
    assert set(complete_keys(study).values()) == {1}
    killed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1 and st.candidate_of(killed[0]).drop.key == ""


@pytest.mark.slow
def test_many_workers_never_claim_the_same_trial(storage_cfg, request, tmp_path):
    # Claims only: a 2 s grace period lets a worker starved of CPU on a loaded machine go
    # stale, and its trial's retry is a second evaluation by design (the stale tests cover it).
    storage_cfg = {**storage_cfg, "grace_period": 600}
    name = unique_name(request)
    study = open_test_study(storage_cfg, name)
    # 48 distinct drop sets of the fake 8-layer model.
    keys = [",".join(map(str, c)) for n in (1, 2, 3) for c in itertools.combinations(range(8), n)]
    keys = keys[:48]
    for key in keys:
        st.enqueue(study, Candidate(DropSet.parse(key)))
    logs, barrier = tmp_path / "logs", tmp_path / "barrier"
    logs.mkdir(), barrier.mkdir()
    evaluate = FakeEvaluate(sleep=0.005, log_dir=str(logs))
    workers = [
        spawn(worker_process, storage_cfg, name, evaluate, 2.0, str(barrier)) for _ in range(6)
    ]
    wait_for(lambda: len(list(barrier.glob("ready-*"))) == 6, 1800, "6 connected workers")
    (barrier / "go").touch()
    for worker in workers:
        worker.join(120)
    counts = evaluations(logs)
    assert counts == {key: 1 for key in keys}, "a trial was evaluated by two workers"
    assert complete_keys(study) == {key: 1 for key in keys}
    assert len(list(logs.glob("*.log"))) > 1, "the work was shared"


@pytest.mark.slow
def test_a_killed_coordinator_resumes_without_reevaluating(tmp_path, request, reference):
    cfg = {"kind": "sqlite", "path": str(tmp_path / "t.db"), **LIVENESS}
    name = unique_name(request)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    out = tmp_path / "result.json"
    process = spawn(
        coordinator_process, cfg, name, FakeEvaluate(sleep=0.1, log_dir=str(first)), str(out)
    )
    # Wait for 8 trials completed in the storage (an evaluation logged but not yet told is
    # no finished result: killing then left 7 on a loaded machine).
    wait_for(lambda: len(complete_keys(open_test_study(cfg, name))) >= 8, 1800, "8 completed")
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    done_before = set(complete_keys(open_test_study(cfg, name)))
    coordinator_process(cfg, name, FakeEvaluate(log_dir=str(second)), str(out))
    assert json.loads(out.read_text()) == json.loads(json.dumps(reference))
    assert not set(evaluations(second)) & done_before, "a completed candidate was re-run"
    assert set(complete_keys(open_test_study(cfg, name)).values()) == {1}
    assert len(done_before) >= 8


def test_round_base_is_what_a_greedy_round_shares_and_nothing_else():
    from tale_opt.coordination.study import round_base
    from tale_opt.types import Candidate, DropSet

    def batch(*drops):
        return [Candidate(DropSet(d)) for d in drops]

    assert round_base(batch((0,), (1,), (2,))) == DropSet()
    assert round_base(batch((3, 0), (3, 1), (3, 5))) == DropSet((3,))
    assert round_base(batch((3,))) is None  # one candidate reveals no round
    assert round_base(batch((), ())) is None  # round 0: a probe and the baseline
    assert round_base(batch((1,), (1, 2))) is None  # nested one-shot drop sets
    assert round_base(batch((0, 1), (2, 3))) is None  # nothing shared
