"""Heartbeats for Optuna's journal (log file) storage.

Optuna 5's `JournalStorage` does not implement `BaseHeartbeat`: `study.optimize` starts no
heartbeat thread for it and `fail_stale_trials` is a no-op, so a worker killed mid-trial would
leave its trial RUNNING forever. This subclass implements the same four methods RDBStorage
does, storing each beat as a trial system attribute in the log, so Optuna's own machinery
(heartbeat thread, `fail_stale_trials`, `RetryHeartbeatStaleTrialCallback`) works unchanged.

Beats are wall-clock times of the worker's machine, compared with the checking process's
clock: on several machines sharing the file, their clocks must agree to well within the grace
period (NTP does that). RDB storages use the database server's clock instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the interface RDBStorage implements
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

# [trial_id, time]. The trial id matters: RetryHeartbeatStaleTrialCallback copies system attrs
# into the retried trial, and a copied old beat must not make the new trial look stale.
BEAT = "tale_opt:heartbeat"


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
