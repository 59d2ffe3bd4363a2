"""A dropped PostgreSQL connection costs a retry, not the search.

Against the real server: each test gets a database of its own, so terminating every
connection to it (`pg_terminate_backend`, what a server restart or a failover does to
clients) touches nothing else on the shared test server.
"""

from __future__ import annotations

import logging
import threading
import uuid

import optuna
import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError

from searchers.greedy import GreedyElimination
from tale_opt.coordination import study as st
from tale_opt.coordination.coordinator import run_coordinator
from tale_opt.coordination.optuna_adapter import ReconnectingRDBStorage
from tale_opt.coordination.reconnect import Reconnect, connection_lost
from tale_opt.coordination.storage import StorageConfig, open_storage
from tale_opt.coordination.worker import run_worker
from tale_opt.types import Candidate, DropSet
from tests.fake_search import result_digest

TERMINATE = (
    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = %s AND pid <> pg_backend_pid()) AS t"
)


@pytest.fixture
def database(postgres_url):
    """(url of a fresh database, a function that drops every connection to it)."""
    import psycopg2

    name = f"tale_opt_reconnect_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(postgres_url, connect_timeout=3)
    admin.autocommit = True
    lock = threading.Lock()  # one psycopg2 connection, used by the test and its killer

    def terminate() -> int:
        with lock, admin.cursor() as cur:
            cur.execute(TERMINATE, (name,))
            return cur.fetchone()[0]

    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}", terminate
    finally:
        with lock, admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


# -- the policy -------------------------------------------------------------------------------
def test_retry_settings_are_validated_and_the_backoff_is_bounded():
    with pytest.raises(ValueError, match=r"`attempts >= 1` must hold, but got attempts=0"):
        Reconnect(attempts=0)
    with pytest.raises(ValueError, match="first_delay <= max_delay"):
        Reconnect(first_delay=2.0, max_delay=1.0)
    policy = Reconnect(attempts=6, first_delay=0.5, max_delay=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_an_error_that_is_not_a_lost_connection_is_raised_at_once():
    engine = sqlalchemy.create_engine("sqlite://")
    calls = []

    def bad_query():
        calls.append(1)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT * FROM no_such_table")

    with pytest.raises(OperationalError, match="no such table") as err:
        Reconnect(first_delay=0.0).call(bad_query, engine.dispose, "a query")
    assert not connection_lost(err.value) and calls == [1]


def test_a_connection_dropped_on_every_attempt_fails_after_the_last_one(database):
    url, terminate = database
    engine = sqlalchemy.create_engine(sqlalchemy_url(url))
    calls = []

    def doomed():
        calls.append(1)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
            terminate()
            connection.exec_driver_sql("SELECT 1")

    with pytest.raises(OperationalError) as err:
        Reconnect(attempts=3, first_delay=0.0).call(doomed, engine.dispose, "a query")
    assert connection_lost(err.value) and len(calls) == 3
    engine.dispose()


# -- the storage --------------------------------------------------------------------------------
OPERATIONS = {
    "read the trials": lambda study: study.get_trials(deepcopy=False),
    "enqueue a trial": lambda study: st.enqueue(study, Candidate(DropSet((1,)))),
    "read the study": lambda study: st.is_finished(study),
    "write the study": lambda study: st.set_finished(study, True),
    "claim and tell": lambda study: study.tell(study.ask(), 0.5),
}


def storage_without_pre_ping(storage_class, url: str, **extra):
    # Without pre-ping the pooled connection is used as it is: a drop hits the operation.
    storage = storage_class(sqlalchemy_url(url), engine_kwargs={}, **extra)
    study = st.open_study(storage, "s", {"fake": True}, {})
    for layer in (0, 2):  # "claim and tell" runs twice
        st.enqueue(study, Candidate(DropSet((layer,))))
    study.get_trials(deepcopy=False)
    return storage, study


@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_a_storage_operation_survives_a_dropped_connection(database, operation):
    url, terminate = database
    storage, study = storage_without_pre_ping(
        ReconnectingRDBStorage, url, reconnect=Reconnect(first_delay=0.0)
    )
    for _ in range(2):  # the second drop hits the connection the first retry opened
        assert terminate() >= 1
        OPERATIONS[operation](study)
    storage.engine.dispose()


def test_without_reconnecting_one_dropped_connection_ends_a_read_of_the_trials(database):
    # The failure the reconnecting storage exists for (reported as an OperationalError in
    # Optuna's trial read, or the PendingRollbackError of its second query on the dead
    # session, depending on where the drop lands).
    url, terminate = database
    storage, study = storage_without_pre_ping(optuna.storages.RDBStorage, url)
    assert terminate() >= 1
    with pytest.raises(optuna.exceptions.StorageInternalError) as err:
        study.get_trials(deepcopy=False)
    assert connection_lost(err.value)
    storage.engine.dispose()


# -- a search -------------------------------------------------------------------------------
class Reconnections(logging.Handler):
    """Counts the storage's "reconnecting" warnings, from every thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "reconnecting in" in record.getMessage()


@pytest.fixture
def reconnections():
    handler, logger = Reconnections(), logging.getLogger("tale_opt.storage")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def searcher() -> GreedyElimination:
    return GreedyElimination(6, epsilon=0.1, max_drop=3)


@pytest.mark.slow
def test_a_search_whose_connections_are_dropped_again_and_again_gives_the_same_result(
    database, monkeypatch, reconnections, one_thread
):
    from tests.test_early_termination import candidate_evaluator

    url, terminate = database
    # Real evaluations of a tiny random model: one evaluator for this thread, one for the
    # worker's (layer surgery changes the model it evaluates).
    here = candidate_evaluator(monkeypatch, 5, "letters", 0)
    there = candidate_evaluator(monkeypatch, 5, "letters", 0)
    reference_study = st.open_study(optuna.storages.InMemoryStorage(), "ref", {"fake": True}, {})
    reference = result_digest(run_coordinator(reference_study, searcher(), evaluate=here))
    cfg = {"kind": "postgres", "url": url, "heartbeat_interval": 1, "grace_period": 20}
    dropped, searches = 0, 0
    # A coordinator and a worker search while every connection to the database is dropped
    # every 0.2 s, until the drops have hit operations in flight a few times (then the search
    # finishes undisturbed); again, until that has happened 4 times in all (5 searches at most).
    while reconnections.count < 4 and searches < 5:
        searches += 1
        name = f"search-{searches}"
        study = st.open_study(open_storage(StorageConfig.from_mapping(cfg)), name, {}, {})
        errors: list[BaseException] = []
        stop = threading.Event()
        enough = reconnections.count + 4

        def work(name=name, errors=errors):
            try:  # joining a search while its connections drop, too
                storage = open_storage(StorageConfig.from_mapping(cfg), create=False)
                run_worker(st.load_study(storage, name), there, poll_interval=0.05)
            except BaseException as err:  # reported below
                errors.append(err)

        def drop_connections(stop=stop, enough=enough):
            nonlocal dropped
            while not stop.wait(0.2) and reconnections.count < enough:
                dropped += terminate()

        threads = [threading.Thread(target=f, daemon=True) for f in (work, drop_connections)]
        for thread in threads:
            thread.start()
        try:
            result = run_coordinator(
                study, searcher(), evaluate=here, poll_interval=0.05, lost_after=10
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not errors, f"the worker failed: {errors[0]!r}"
        assert result_digest(result) == reference
    assert reconnections.count >= 4, (
        f"{searches} searches, {dropped} connections dropped, yet only "
        f"{reconnections.count} operations in flight were hit: the test proved little"
    )
