"""Storage configuration, study identity and the trial <-> observation mapping."""

from __future__ import annotations

import time
import uuid

import optuna
import pytest

from tale_opt.coordination import study as st
from tale_opt.coordination.storage import (
    URL_ENV,
    StorageConfig,
    StorageNotReady,
    mask,
    open_storage,
)
from tale_opt.coordination.worker import WorkerStats, run_one
from tale_opt.errors import UsageError
from tale_opt.types import Candidate, DropSet, Observation, Status
from tests.fake_search import FakeEvaluate


def sqlite_cfg(tmp_path, **extra):
    return {"kind": "sqlite", "path": str(tmp_path / "t.db"), **extra}


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        ({"kind": "sqlit", "path": "x"}, "Did you mean 'sqlite'?"),
        ({"kind": "sqlite"}, "storage.path"),
        ({"kind": "sqlite", "path": "x", "heartbeat": 1}, "no key(s) ['heartbeat']"),
        ({"kind": "sqlite", "path": "x", "heartbeat_interval": 0}, "heartbeat_interval"),
        (
            {"kind": "sqlite", "path": "x", "heartbeat_interval": 5, "grace_period": 5},
            "grace_period > storage.heartbeat_interval",
        ),
        ({"kind": "postgres", "url": "mysql://u@h/db"}, "must start with postgresql://"),
    ],
)
def test_bad_storage_config_names_the_key(cfg, fragment):
    with pytest.raises(UsageError, match=None) as err:
        StorageConfig.from_mapping(cfg)
    assert fragment in str(err.value)


def test_postgres_url_comes_from_config_or_environment(monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    with pytest.raises(UsageError, match=URL_ENV):
        StorageConfig.from_mapping({"kind": "postgres"})
    monkeypatch.setenv(URL_ENV, "postgresql://u:secret@db:5432/x")
    cfg = StorageConfig.from_mapping({"kind": "postgres"})
    assert cfg.url == "postgresql://u:secret@db:5432/x"
    assert "secret" not in cfg.describe() and "secret" not in " ".join(cfg.join_args())
    assert mask("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_the_join_command_says_how_the_postgres_url_gets_to_the_worker(monkeypatch):
    """From the environment: the variable to set there; on the command line: storage.url;
    either way the password is never printed."""
    url = "postgresql://u:s3cret@db:5432/x"
    monkeypatch.setenv(URL_ENV, url)
    from_env = StorageConfig.from_mapping({"kind": "postgres"}).join_command("st")
    assert from_env == (
        f"export {URL_ENV}=postgresql://u:***@db:5432/x (*** = its password), then "
        "python -m tale_opt worker storage=postgres study=st"
    )
    monkeypatch.delenv(URL_ENV)
    on_line = StorageConfig.from_mapping({"kind": "postgres", "url": url}).join_command("st")
    assert on_line.startswith(
        "python -m tale_opt worker storage=postgres storage.url=postgresql://u:***@db:5432/x "
        "study=st (*** = the password of storage.url;"
    )
    assert URL_ENV in on_line and "s3cret" not in from_env + on_line
    trusted = "postgresql://u@db/x"  # no password: the command is complete as printed
    assert (
        StorageConfig.from_mapping({"kind": "postgres", "url": trusted}).join_command("st")
        == f"python -m tale_opt worker storage=postgres storage.url={trusted} study=st"
    )
    sqlite = StorageConfig.from_mapping({"kind": "sqlite", "path": "/tmp/t.db"})
    assert sqlite.join_command("st") == (
        "python -m tale_opt worker storage=sqlite storage.path=/tmp/t.db study=st"
    )


def test_unreachable_postgres_is_a_usage_error_within_seconds():
    started = time.monotonic()
    cfg = StorageConfig.from_mapping({"kind": "postgres", "url": "postgresql://u@127.0.0.1:1/x"})
    with pytest.raises(UsageError, match="cannot reach the postgres storage"):
        open_storage(cfg)
    assert time.monotonic() - started < 60  # refused at once; bounded against a slow machine


@pytest.mark.slow
def test_postgres_that_never_answers_times_out_within_seconds():
    # A non-routable address: packets are dropped, so only connect_timeout ends the wait.
    started = time.monotonic()
    cfg = StorageConfig.from_mapping(
        {"kind": "postgres", "url": "postgresql://u@10.255.255.1:5432/x", "connect_timeout": 2}
    )
    with pytest.raises(UsageError, match="cannot reach"):
        open_storage(cfg)
    # Without connect_timeout the kernel gives up after ~2 minutes of SYN retries.
    assert time.monotonic() - started < 60


def test_a_worker_does_not_create_a_storage(tmp_path):
    cfg = StorageConfig.from_mapping(sqlite_cfg(tmp_path))
    with pytest.raises(StorageNotReady, match="no sqlite storage at"):
        open_storage(cfg, create=False)
    # Neither does it create tables in an empty file (that is the coordinator's job).
    (tmp_path / "t.db").touch()
    with pytest.raises(StorageNotReady, match="no tale_opt tables yet"):
        open_storage(cfg, create=False)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_every_file_storage_has_heartbeats(kind, tmp_path):
    cfg = StorageConfig.from_mapping({"kind": kind, "path": str(tmp_path / "s")})
    storage = open_storage(cfg)
    assert optuna.storages._heartbeat.is_heartbeat_enabled(storage)


def test_fingerprint_mismatch_is_refused_with_the_differences(tmp_path):
    storage = open_storage(StorageConfig.from_mapping(sqlite_cfg(tmp_path)))
    fingerprint = {"model": {"path": "a"}, "seed": 0, "splits": "s1"}
    st.open_study(storage, "search", fingerprint, {})
    st.open_study(storage, "search", dict(fingerprint), {})  # same search: resumes
    with pytest.raises(UsageError) as err:
        st.open_study(storage, "search", {**fingerprint, "seed": 1, "model": {"path": "b"}}, {})
    message = str(err.value)
    assert "'search' belongs to a different search" in message
    assert "model.path: study has 'a', this run has 'b'" in message
    assert "seed: study has 0, this run has 1" in message


def test_default_study_name_is_readable_and_keyed_by_the_fingerprint():
    one = st.default_study_name(["arc_easy", "smollm2/135m", "tale", "s0"], {"a": 1})
    assert one.startswith("arc_easy-smollm2_135m-tale-s0-")
    assert one == st.default_study_name(["arc_easy", "smollm2/135m", "tale", "s0"], {"a": 1})
    assert one != st.default_study_name(["arc_easy", "smollm2/135m", "tale", "s0"], {"a": 2})


def test_observation_round_trips_through_a_trial(tmp_path):
    storage = open_storage(StorageConfig.from_mapping(sqlite_cfg(tmp_path)))
    study = st.open_study(storage, f"s-{uuid.uuid4().hex}", {"x": 1}, {})
    candidate = Candidate(DropSet((2, 5)))
    st.enqueue(study, candidate)

    def evaluate(c):
        return Observation(c, 0.625, {"accuracy": 0.625}, {"note": "x"})

    assert run_one(study, evaluate)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.625
    assert st.candidate_of(trial) == candidate
    # The candidate key is the one place the drop set and probe are stored; the round
    # (number of dropped layers) is derived from it, and the score is the trial's value.
    assert {k for k in trial.user_attrs if k.startswith("tale_opt.")} == {
        st.MARKER,
        st.WORKER,
        st.RESULT,
    }
    assert trial.user_attrs[st.MARKER] == "task_accuracy:2,5"
    assert "score" not in trial.user_attrs[st.RESULT]
    obs = st.observation_of(trial)
    assert obs == Observation(candidate, 0.625, {"accuracy": 0.625}, {"note": "x"})
    assert obs.status is Status.COMPLETE


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_claim_on_an_empty_queue_makes_up_no_trial(kind, tmp_path):
    cfg = {**sqlite_cfg(tmp_path), "kind": kind, "path": str(tmp_path / f"t.{kind}")}
    study = st.open_study(open_storage(StorageConfig.from_mapping(cfg)), "s", {"x": 1}, {})
    evaluate = FakeEvaluate(log_dir=str(tmp_path))
    # The queue is empty, as when another worker took the last trial between our check and
    # our claim: Optuna's study.ask() would create a sampler trial; tale_opt's storages refuse.
    stats = WorkerStats()
    assert not run_one(study, evaluate, stats)
    assert study.get_trials() == [] and stats.stray == 1
    assert not list(tmp_path.glob("*.log"))


def test_a_waiting_trial_that_is_no_coordinators_is_never_evaluated_or_counted(tmp_path):
    storage = open_storage(StorageConfig.from_mapping(sqlite_cfg(tmp_path)))
    study = st.open_study(storage, "s", {"x": 1}, {})
    study.enqueue_trial({})  # someone else's trial: no tale_opt marker
    evaluate = FakeEvaluate(log_dir=str(tmp_path))
    assert not run_one(study, evaluate)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs[st.STRAY] is True
    assert st.candidate_of(trial) is None and st.observation_of(trial) is None
    assert not list(tmp_path.glob("*.log"))


def test_a_failing_evaluation_records_its_error_and_raises(tmp_path):
    storage = open_storage(StorageConfig.from_mapping(sqlite_cfg(tmp_path)))
    study = st.open_study(storage, "s", {"x": 1}, {})
    st.enqueue(study, Candidate(DropSet((1,))))

    def evaluate(candidate):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_one(study, evaluate)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs[st.ERROR] == "RuntimeError: CUDA out of memory"


def test_processes_that_open_a_new_storage_at_the_same_moment_all_get_it(tmp_path):
    # A worker started before its coordinator, or two coordinators started together, write
    # the same tables and schema version row: the losers of that race look again.
    import threading

    for attempt in range(5):
        cfg = StorageConfig.from_mapping(sqlite_cfg(tmp_path / str(attempt)))
        errors: list[Exception] = []
        barrier = threading.Barrier(6)

        def open_it(cfg=cfg, errors=errors, barrier=barrier):
            barrier.wait()
            try:
                open_storage(cfg)
            except Exception as err:  # collected for the assertion
                errors.append(err)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors[0]
        study = st.open_study(open_storage(cfg), "s", {"x": 1}, {})
        assert study.get_trials() == []


def test_a_trial_recorded_by_an_earlier_version_reads_the_same():
    # Earlier versions stored the drop set, probe and round apart from the candidate key, and
    # the score and status inside the result too: a resumed study still counts such trials.
    study = st.open_study(optuna.storages.InMemoryStorage(), "old", {"x": 1}, {})
    result = {"score": 0.5, "status": "pruned", "metrics": {"n_seen": 4}, "extras": {}}
    attrs = {
        "tale_opt.candidate": "task_accuracy:2,5",
        "tale_opt.drop": "2,5",
        "tale_opt.probe": "task_accuracy",
        "tale_opt.round": 2,
        st.RESULT: result,
    }
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED, value=0.5, user_attrs=attrs
        )
    )
    (trial,) = study.get_trials()
    obs = st.observation_of(trial)
    assert obs == Observation(
        Candidate(DropSet((2, 5))), 0.5, {"n_seen": 4}, {}, status=Status.PRUNED
    )
