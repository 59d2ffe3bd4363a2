"""The one module of tale_opt that relies on Optuna's private interfaces.

Everything else uses Optuna's public API only (tests/test_optuna_public_api.py checks it);
what Optuna offers no public way to do lives here, and tests/test_optuna_adapter.py fails
loudly when an Optuna release changes the private names and signatures used below.

* `HeartbeatJournalStorage`: Optuna 5's `JournalStorage` does not implement the heartbeat
  interface (`optuna.storages._heartbeat.BaseHeartbeat`): `study.optimize` starts no heartbeat
  thread for it and `fail_stale_trials` is a no-op, so a worker killed mid-trial would leave
  its trial RUNNING forever. This subclass implements the four methods RDBStorage does,
  storing each beat as a trial system attribute in the log, so Optuna's own machinery
  (heartbeat thread, `fail_stale_trials`, `RetryHeartbeatStaleTrialCallback`) works unchanged.
  Beats are wall-clock times of the worker's machine, compared with the checking process's
  clock: on several machines sharing the file, their clocks must agree to well within the
  grace period (NTP does that). RDB storages use the database server's clock instead.
* `ReconnectingRDBStorage`: an `RDBStorage` whose every database operation is retried over a
  dropped connection (see reconnect.py). Optuna wraps an RDBStorage in a cache that calls
  some of the storage's private methods (`_get_trials`, `_create_new_trial`, ...), and
  `fail_stale_trials` calls `_get_stale_trial_ids`: those are retried too, or one dropped
  connection while reading trials would still end the search.
  On PostgreSQL it also claims a waiting trial (WAITING -> RUNNING, the write `study.ask()`
  tries on each waiting trial, oldest first, until one succeeds) with ``FOR UPDATE SKIP
  LOCKED``: a trial another worker is claiming at that moment is passed over at once instead
  of waited for. Optuna's plain ``FOR UPDATE`` makes the workers that go idle together (a new
  round) queue behind each other on the oldest trial, then on the next, one commit after
  another: measured on 32 workers, claims took seconds (benchmarks/bench_coordination.py).
* `round_view`: racing with Optuna's `SuccessiveHalvingPruner` / `HyperbandPruner` on the
  trials of one greedy round only. A pruner reads the trials it compares through
  ``study.get_trials`` and writes its rung records through ``study._storage`` (Hyperband even
  builds its bracket studies on ``study._storage``), so the only view that holds for all of
  it is a study over a storage that shows just those trials; building it needs the study's
  storage object (``study._storage``). `completed_rungs` reads Successive Halving's rung
  records (``completed_rung_<k>`` system attributes) to say at which rung a trial stopped.
* Both storages make up no trial: `study.ask()` on an empty queue raises `NoWaitingTrial`
  instead of creating a sampler trial. Every trial of a tale_opt study is a coordinator's
  candidate; a worker that lost the race for the last waiting one has nothing to do. Optuna's
  invented trial had to be marked and pruned (three writes, one of them locking the study's
  row, which every enqueue needs too), and workers that raced for a round's trials as the
  coordinator enqueued them made hundreds: 649 for 96 candidates with 32 workers.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections.abc import Callable, Container, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the interface RDBStorage implements
from optuna.storages._rdb import models  # the trials table, for the claim
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tale_opt.coordination.reconnect import Reconnect

# [trial_id, time]. The trial id matters: RetryHeartbeatStaleTrialCallback copies system attrs
# into the retried trial, and a copied old beat must not make the new trial look stale.
BEAT = "tale_opt:heartbeat"

# Private methods of RDBStorage that Optuna's own code calls (its trial cache and
# `fail_stale_trials`); the canary test checks that these are all it calls.
PRIVATE_RDB_OPERATIONS = (
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_trial_param",
)
# Public methods of RDBStorage that open a database session.
PUBLIC_RDB_OPERATIONS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial",
    "get_all_trials", "get_best_trial", "record_heartbeat",
)  # fmt: skip


class NoWaitingTrial(Exception):
    """`study.ask()` found no waiting trial to claim (another worker took the last one), and
    a tale_opt storage makes none up."""


def _refuse_invented(template_trial: FrozenTrial | None) -> None:
    # Enqueued and retried trials come with a template; only `study.ask()` on an empty queue
    # asks for a trial without one.
    if template_trial is None:
        raise NoWaitingTrial("no waiting trial to claim: another worker took the last one")


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A `JournalStorage` over a log file, with heartbeats like `RDBStorage`'s.

    Args:
        path: The journal file (created when missing).
        heartbeat_interval: Seconds between beats of a running trial.
        grace_period: Seconds without a beat after which a running trial is stale.
        heartbeat_stale_trial_callback: Called for each trial failed as stale.
    """

    def __init__(
        self,
        path: str,
        *,
        heartbeat_interval: int,
        grace_period: int,
        heartbeat_stale_trial_callback: Callable[[Any, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(JournalFileBackend(path))
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        _refuse_invented(template_trial)
        return super().create_new_trial(study_id, template_trial)

    def record_heartbeat(self, trial_id: int) -> None:
        # Failed as stale meanwhile: the worker learns it when it reports its result.
        with contextlib.suppress(UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, BEAT, [trial_id, time.time()])

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(BEAT)
            if beat and beat[0] == trial._trial_id and now - beat[1] > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[Any, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


class ReconnectingRDBStorage(RDBStorage):
    """An `RDBStorage` that survives dropped database connections.

    Args:
        url: The database URL.
        reconnect: How often and how patiently to retry an operation.
        **kwargs: Passed to `RDBStorage` (engine_kwargs, heartbeats, ...).
    """

    def __init__(self, url: str, *, reconnect: Reconnect | None = None, **kwargs: Any) -> None:
        self.reconnect = reconnect or Reconnect()
        super().__init__(url, **kwargs)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if state == TrialState.RUNNING and values is None and self._skips_locked_rows():
            return self.reconnect.call(
                lambda: self._claim(trial_id), self.remove_session, "claiming a trial"
            )
        attempt = itertools.count()

        def once() -> bool:
            first = next(attempt) == 0
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                # The connection dropped after the server committed our write, before we
                # heard back: the retry finds the trial finished, the way we finished it.
                if first or not state.is_finished():
                    raise
                now = RDBStorage.get_trial(self, trial_id)
                if now.state != state or (values is not None and now.values != list(values)):
                    raise
                return True

        return self.reconnect.call(once, self.remove_session, "set_trial_state_values")

    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        # What `create_new_trial` and Optuna's trial cache both call.
        _refuse_invented(template_trial)
        return self.reconnect.call(
            lambda: RDBStorage._create_new_trial(self, study_id, template_trial),
            self.remove_session,
            "_create_new_trial",
        )

    def _skips_locked_rows(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _claim(self, trial_id: int) -> bool:
        """WAITING -> RUNNING, as `RDBStorage.set_trial_state_values` does it, except that a
        trial whose row another transaction holds is not ours to wait for: False at once
        (it is being claimed, or finished; `study.ask()` then tries the next waiting one)."""
        with _create_scoped_session(self.scoped_session) as session:
            trial = (
                session.query(models.TrialModel)
                .filter(models.TrialModel.trial_id == trial_id)
                .with_for_update(skip_locked=True)
                .one_or_none()
            )
            if trial is None or trial.state != TrialState.WAITING:
                return False
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.now()
        return True


def _retried(name: str) -> Callable[..., Any]:
    operation = getattr(RDBStorage, name)

    @functools.wraps(operation)
    def call(self: ReconnectingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self.reconnect.call(
            lambda: operation(self, *args, **kwargs), self.remove_session, name
        )

    return call


for _name in PUBLIC_RDB_OPERATIONS + PRIVATE_RDB_OPERATIONS:
    if _name not in vars(ReconnectingRDBStorage):  # those it defines retry themselves
        setattr(ReconnectingRDBStorage, _name, _retried(_name))


# -- a study restricted to one round, for Optuna's pruners -----------------------------------
RUNG_PREFIX = "completed_rung_"  # SuccessiveHalvingPruner's system attribute per passed rung


class _FilteredStorage(BaseStorage):
    """Another storage, showing only the trials `keep` accepts (writes go through as they
    are; ids are the underlying storage's)."""

    def __init__(self, storage: BaseStorage, keep: Callable[[FrozenTrial], bool]) -> None:
        self.storage, self.keep = storage, keep

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self.storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if self.keep(t)]

    def create_new_study(self, directions: Sequence[Any], study_name: str | None = None) -> int:
        return self.storage.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self.storage.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.storage.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.storage.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.storage.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.storage.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[Any]:
        return self.storage.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.storage.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.storage.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:
        return self.storage.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self.storage.create_new_trial(study_id, template_trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: Any) -> None:  # fmt: skip
        self.storage.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        return self.storage.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        self.storage.set_trial_intermediate_value(trial_id, step, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.storage.set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.storage.get_trial(trial_id)


def round_view(study: optuna.Study, keep: Callable[[FrozenTrial], bool]) -> optuna.Study:
    """`study` as an Optuna pruner should see it to race one round: only the trials `keep`
    accepts are there (for ``get_trials`` and the bracket studies Hyperband builds on the
    study's storage); rung records written through it land on the real trials."""
    view = _FilteredStorage(study._storage, keep)
    return optuna.load_study(
        study_name=study.study_name,
        storage=view,
        sampler=optuna.samplers.RandomSampler(seed=0),  # never asked
        pruner=optuna.pruners.NopPruner(),  # the racing pruner is called directly
    )


def completed_rungs(trial: FrozenTrial) -> int:
    """How many rungs of Successive Halving (also Hyperband's brackets) `trial` has passed
    or been judged at."""
    return sum(1 for key in trial.system_attrs if key.startswith(RUNG_PREFIX))
