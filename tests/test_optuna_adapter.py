"""Canary: the private Optuna interfaces tale_opt/coordination/optuna_adapter.py relies on.

Each test names what an Optuna release changed when it fails; the fix belongs in the adapter
(and nowhere else: tests/test_optuna_public_api.py keeps the rest of tale_opt public-only).
"""

from __future__ import annotations

import inspect
import re

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tale_opt.coordination import optuna_adapter as adapter

HEARTBEAT_METHODS = {
    "record_heartbeat": ["self", "trial_id"],
    "_get_stale_trial_ids": ["self", "study_id"],
    "get_heartbeat_interval": ["self"],
    "get_heartbeat_stale_trial_callback": ["self"],
}


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_heartbeat_interface_is_where_and_what_the_journal_storage_implements():
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    assert BaseHeartbeat.__abstractmethods__ == set(HEARTBEAT_METHODS), (
        "Optuna changed the heartbeat interface HeartbeatJournalStorage implements"
    )
    for name, expected in HEARTBEAT_METHODS.items():
        assert parameters(getattr(BaseHeartbeat, name)) == expected, name
        assert parameters(getattr(adapter.HeartbeatJournalStorage, name)) == expected, name
    # Optuna decides whether to beat, and finds stale trials, through exactly these.
    assert "BaseHeartbeat" in inspect.getsource(is_heartbeat_enabled)
    stale = inspect.getsource(optuna.storages.fail_stale_trials)
    assert "_get_stale_trial_ids(" in stale and "get_heartbeat_stale_trial_callback" in stale


def test_the_journal_storage_beats_and_reports_stale_trials(tmp_path):
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = adapter.HeartbeatJournalStorage(
        str(tmp_path / "journal.log"), heartbeat_interval=1, grace_period=2
    )
    assert is_heartbeat_enabled(storage)
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({})
    with pytest.warns(UserWarning, match="supposed to be used with Study.optimize"):
        study.ask()  # a trial in flight, as a worker's
    (frozen,) = study.get_trials()
    assert frozen._trial_id is not None  # FrozenTrial keeps the storage's id there
    storage.record_heartbeat(frozen._trial_id)
    (beating,) = study.get_trials()
    beat = beating.system_attrs[adapter.BEAT]
    assert beat[0] == frozen._trial_id
    # Pretend the beat is old: the trial is stale, and fail_stale_trials fails it.
    storage.set_trial_system_attr(frozen._trial_id, adapter.BEAT, [beat[0], beat[1] - 60])
    assert storage._get_stale_trial_ids(study._study_id) == [frozen._trial_id]
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL


def test_every_database_operation_of_rdb_storage_is_retried():
    opens_a_session = {
        name
        for name, member in vars(RDBStorage).items()
        if callable(member) and "_create_scoped_session" in inspect.getsource(member)
    }
    retried = set(adapter.PUBLIC_RDB_OPERATIONS) | set(adapter.PRIVATE_RDB_OPERATIONS)
    retried.add("set_trial_state_values")  # retried by its own override
    missing = opens_a_session - retried
    assert not missing, f"RDBStorage has new database operations to retry: {sorted(missing)}"
    for name in retried:
        ours, theirs = getattr(adapter.ReconnectingRDBStorage, name), getattr(RDBStorage, name)
        assert ours is not theirs, f"{name} is not retried"
        assert parameters(ours) == parameters(theirs), f"Optuna changed {name}'s signature"


def test_optunas_trial_cache_calls_only_storage_methods_that_are_retried():
    from optuna.storages import _cached_storage

    assert isinstance(
        optuna.storages.get_storage(RDBStorage("sqlite://")), _cached_storage._CachedStorage
    )
    called = set(re.findall(r"self\._backend\.(\w+)", inspect.getsource(_cached_storage)))
    retried = set(adapter.PUBLIC_RDB_OPERATIONS) | set(adapter.PRIVATE_RDB_OPERATIONS)
    retried |= {"set_trial_state_values", "get_heartbeat_interval"}
    retried.add("get_heartbeat_stale_trial_callback")  # no database access
    unknown = called - retried
    assert not unknown, f"Optuna's trial cache calls storage methods not retried: {unknown}"
    assert set(adapter.PRIVATE_RDB_OPERATIONS) <= called | {"_get_stale_trial_ids"}


def test_optunas_pruners_reach_the_trials_through_what_round_view_restricts():
    """`round_view` restricts what Successive Halving and Hyperband compare by filtering the
    storage under a study: they must read trials through the study (or a bracket study built
    on its ``_storage``) and record rungs through ``study._storage``."""
    from optuna.pruners import _hyperband, _successive_halving

    halving = inspect.getsource(_successive_halving.SuccessiveHalvingPruner.prune)
    assert "study.get_trials(" in halving and "study._storage.set_trial_system_attr(" in halving
    assert _successive_halving._completed_rung_key(2) == f"{adapter.RUNG_PREFIX}2"
    bracket = inspect.getsource(_hyperband.HyperbandPruner._create_bracket_study)
    assert "storage=study._storage" in bracket and "super()._get_trials(" in bracket


def test_a_round_view_shows_only_the_kept_trials_and_writes_through():
    study = optuna.create_study(direction="maximize")
    for value in (0.1, 0.9, 0.5):
        trial = study.ask()
        trial.set_user_attr("keep", value != 0.9)
        study.tell(trial, value)
    running = study.ask()  # in flight, as the trial a pruner judges
    running.set_user_attr("keep", True)
    view = adapter.round_view(study, lambda t: t.user_attrs["keep"])
    assert [t.value for t in view.get_trials()] == [0.1, 0.5, None]
    assert view.study_name == study.study_name and view.direction == study.direction
    # What a pruner writes through the view lands on the study's own trial.
    kept = view.get_trials()[-1]
    view._storage.set_trial_system_attr(kept._trial_id, f"{adapter.RUNG_PREFIX}0", 0.1)
    (again,) = [t for t in study.get_trials() if t.number == running.number]
    assert adapter.completed_rungs(again) == 1


def test_a_claim_is_the_write_optunas_pop_makes_on_the_table_the_adapter_claims_in():
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session  # noqa: F401

    pop = inspect.getsource(optuna.Study._pop_waiting_trial_id)
    assert "set_trial_state_values(" in pop and "TrialState.RUNNING" in pop, (
        "Optuna no longer claims a waiting trial through set_trial_state_values(RUNNING)"
    )
    # On an empty queue ask() creates a trial without a template: what the adapter refuses.
    assert "create_new_trial(self._study_id)" in inspect.getsource(optuna.Study.ask)
    columns = set(models.TrialModel.__table__.columns.keys())
    assert {"trial_id", "state", "datetime_start"} <= columns
    ours = inspect.getsource(RDBStorage.set_trial_state_values)
    assert "datetime_start = datetime.now()" in ours, "Optuna changed what a claim writes"


def test_on_postgres_a_trial_another_worker_is_claiming_is_passed_over_not_waited_for(
    postgres_url,
):
    import threading

    import psycopg2

    from tale_opt.coordination.storage import StorageConfig, open_storage
    from tests.conftest import scratch_database

    with scratch_database(postgres_url, "tale_opt_claim") as url:
        storage = open_storage(StorageConfig.from_mapping({"kind": "postgres", "url": url}))
        study = optuna.create_study(storage=storage, study_name="claims")
        for x in (1, 2):
            study.enqueue_trial({"x": x})
        first, second = (t._trial_id for t in study.get_trials())
        other = psycopg2.connect(url)  # another worker, in the middle of claiming `first`
        try:
            with other.cursor() as cur:
                cur.execute("SELECT * FROM trials WHERE trial_id = %s FOR UPDATE", (first,))
            claimed: list = []
            # A thread only so that a claim that waits for the lock cannot hang the test.
            asking = threading.Thread(target=lambda: claimed.append(study.ask()), daemon=True)
            asking.start()
            asking.join(600)
            assert claimed and claimed[0]._trial_id == second, "the locked trial was waited for"
        finally:
            other.rollback()
            other.close()
        states = {t._trial_id: t.state for t in study.get_trials()}
        assert states == {first: TrialState.WAITING, second: TrialState.RUNNING}
        assert study.ask()._trial_id == first  # free again: claimed as Optuna would
        started = study.get_trials()[0].datetime_start
        assert started is not None
        storage.engine.dispose()
