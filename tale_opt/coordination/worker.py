"""A worker: claim marked WAITING trials of a study, evaluate them, report the results.

Each claim goes through `study.optimize(..., n_trials=1)` rather than ask/tell, because only
`optimize` runs the heartbeat thread and calls `fail_stale_trials` (Optuna runs heartbeats
inside its optimize loop only). `study.ask()` pops the oldest WAITING trial; when another worker
emptied the queue between our check and the pop, the storage makes up no trial
(`NoWaitingTrial`, optuna_adapter.py) and the claim is lost: counted as `stray`, nothing
written. A waiting trial that is not a coordinator's (no marker) is marked `stray` and pruned
without evaluating anything, so it is never counted.

Racing: an evaluator that takes a per-batch race hook (``supports_race``, called as
``evaluate(candidate, race=...)``) gets a `racing.TrialRace`: it reports the running accuracy
as the trial's intermediate values and, when the coordinator marked the trial `prunable`, asks
the study's pruner (`tale_opt.coordination.racing`: the exact bound against the best completed
rival of the round, by default) whether to go on. A stopped trial ends PRUNED with its upper
bound in its metrics and why in its extras (``bounded_by`` or ``raced_out``); PRUNED is final,
so it is never retried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import DatabaseError

from tale_opt.coordination import racing
from tale_opt.coordination import study as st
from tale_opt.coordination.optuna_adapter import NoWaitingTrial
from tale_opt.errors import SearchFailed
from tale_opt.types import Candidate, Observation, Status

log = logging.getLogger("tale_opt.worker")

Evaluate = Callable[[Candidate], Observation]
IDLE_BACKOFF = 4  # an idle worker whose queue does not change polls down to 1 in 4 intervals


class _Superseded(Exception):
    """Our trial was failed as stale (we were too slow to beat) and re-queued elsewhere."""


@dataclass
class WorkerStats:
    evaluated: int = 0  # trials this worker completed (pruned ones included)
    pruned: int = 0  # of those, stopped early: bounded by, or raced out against, their leader
    superseded: int = 0  # trials taken from us as stale, re-run elsewhere
    stray: int = 0  # claims lost to another worker (the queue emptied first)


@contextlib.contextmanager
def storage_errors_as_search_failed() -> Iterator[None]:
    """A database that stops answering mid-search ends it with one clear line, not a trace."""
    try:
        yield
    except (StorageInternalError, DatabaseError) as err:
        cause = err.__cause__ or err
        reason = " ".join(str(getattr(cause, "orig", None) or cause).split())[:300]
        raise SearchFailed(
            f"lost the trial storage ({reason}); once the database answers again, run the "
            "same command again: finished trials are kept"
        ) from err


class _DropTrialFailures(logging.Filter):
    """Drops Optuna's "Trial N failed ..." warning, which carries the whole traceback: every
    one, or only those of a Ctrl-C (a traceback that says nothing)."""

    def __init__(self, interrupts_only: bool) -> None:
        super().__init__()
        self.interrupts_only = interrupts_only

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not (message.startswith("Trial ") and " failed" in message):
            return True
        if not self.interrupts_only:
            return False
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, KeyboardInterrupt)


@contextlib.contextmanager
def quiet_trial_failures(*, interrupts_only: bool = False) -> Iterator[None]:
    """Silence Optuna's traceback of a failed trial where the caller reports the failure
    itself in one line (the coordinator evaluating in-process; the error stays on the trial),
    or, with `interrupts_only`, only that of a Ctrl-C (a worker keeps real errors' traces)."""
    logger = logging.getLogger("optuna.study._optimize")
    dropper = _DropTrialFailures(interrupts_only)
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def waiting_candidates(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> int:
    """How many marked trials wait to be claimed (among `trials`, when just read)."""
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    waiting = (t for t in trials if t.state == TrialState.WAITING)
    return sum(1 for t in waiting if st.candidate_of(t) is not None)


def run_one(
    study: optuna.Study,
    evaluate: Evaluate,
    stats: WorkerStats | None = None,
    *,
    trials: Sequence[FrozenTrial] | None = None,
) -> bool:
    """Claim and evaluate one waiting trial. Returns whether a candidate was evaluated.

    Args:
        study: The search's study.
        evaluate: Scores one candidate.
        stats: Counts to update.
        trials: The study's trials as the caller has just read them, if it has: the pruner
            takes the round's first leader from them instead of reading the study again.

    Raises:
        Exception: Whatever `evaluate` raised (the trial is then FAIL with its `error` attr).
    """
    stats = stats if stats is not None else WorkerStats()
    claimed: dict[str, int] = {}
    told: list[FrozenTrial] = []  # the finished trial, as Optuna hands it to callbacks

    def objective(trial: optuna.Trial) -> float:
        claimed["number"] = trial.number
        candidate = st.candidate_of(trial)
        if candidate is None:
            trial.set_user_attr(st.STRAY, True)
            raise optuna.TrialPruned("not a tale_opt candidate (queue emptied in a race)")
        try:
            trial.set_user_attr(st.WORKER, worker_id())
            # Evaluators that reuse prefixes (CandidateEvaluator) take the round's base.
            hints = {"base": st.base_of(trial)} if getattr(evaluate, "takes_base", False) else {}
            if getattr(evaluate, "supports_race", False):
                policy = None
                if st.is_prunable(trial):
                    settings = racing.PrunerSettings.of_study(study)
                    policy = racing.make_policy(settings, study, trial, candidate, trials)
                race = racing.TrialRace(trial, policy)
                observation = race.annotate(evaluate(candidate, race=race, **hints))
            else:
                observation = evaluate(candidate, **hints)
            for key, value in st.result_attrs(observation).items():
                trial.set_user_attr(key, value)
        except UpdateFinishedTrialError as err:
            raise _Superseded(str(err)) from err
        except Exception as err:
            try:
                trial.set_user_attr(st.ERROR, f"{type(err).__name__}: {err}"[:2000])
            except UpdateFinishedTrialError:
                raise _Superseded(str(err)) from err
            raise
        if observation.status is Status.PRUNED:
            # Its value becomes its last intermediate value (the accuracy on what it saw);
            # the score the search keeps, the upper bound, is in its result metrics.
            raise optuna.TrialPruned(racing.describe_stop(observation) or "stopped early")
        return observation.score

    try:
        study.optimize(
            objective,
            n_trials=1,
            catch=(_Superseded,),
            callbacks=[lambda _study, trial: told.append(trial)],
        )
    except NoWaitingTrial:
        stats.stray += 1
        return False
    except Exception:
        # Telling a trial that was failed as stale raises; that is not our error.
        if not _was_superseded(study, claimed.get("number")):
            raise
    number = claimed.get("number")
    if number is None:
        return False
    trial = told[0] if told else None
    if trial is not None and trial.user_attrs.get(st.STRAY):
        stats.stray += 1
        return False
    if trial is None or trial.state == TrialState.FAIL:
        stats.superseded += 1
        log.warning(
            "trial %d was declared stale (no heartbeat for the grace period) and re-queued; "
            "our result is discarded, the retry's counts",
            number,
        )
        return False
    stats.evaluated += 1
    stats.pruned += int(trial.state == TrialState.PRUNED)
    return True


def _was_superseded(study: optuna.Study, number: int | None) -> bool:
    """Whether trial `number` was failed by someone else (stale) rather than by its error."""
    if number is None:
        return False
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number == number:
            return st.ERROR not in trial.user_attrs
    return False


def run_worker(
    study: optuna.Study,
    evaluate: Evaluate,
    *,
    poll_interval: float = 0.5,
    idle_timeout: float | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> WorkerStats:
    """Evaluate marked trials until the coordinator marks the study finished.

    Args:
        study: The search's study.
        evaluate: Scores one candidate (the model stays loaded between calls).
        poll_interval: Seconds between storage polls while there is nothing to do.
        idle_timeout: Leave after this many seconds without work (None = wait until finished).
        keep_going: Checked between trials; False makes the worker leave (e.g. parent gone).

    Returns:
        Counts of what this worker did.
    """
    with storage_errors_as_search_failed(), quiet_trial_failures(interrupts_only=True):
        return _work(study, evaluate, poll_interval, idle_timeout, keep_going)


def _work(
    study: optuna.Study,
    evaluate: Evaluate,
    poll_interval: float,
    idle_timeout: float | None,
    keep_going: Callable[[], bool],
) -> WorkerStats:
    stats = WorkerStats()
    idle_since = time.monotonic()
    queued: int | None = None  # waiting candidates at this worker's last idle poll
    pause = poll_interval
    while keep_going() and not st.is_finished(study):
        # One read per poll: whether there is work, and early termination's first rival.
        trials = study.get_trials(deepcopy=False)
        waiting = waiting_candidates(study, trials)
        # Back from idle, claim once the queue stops growing: a coordinator enqueues a round
        # one trial at a time, and idle workers that raced for each trial as it appeared lost
        # N - 1 times per trial. A lost claim (the queue emptied first) also waits a poll
        # instead of racing again at once. Each lost claim reads the queue and tries it, so
        # racing had 64 workers spend the storage's time on losing (benchmarks/
        # bench_coordination.py).
        if waiting and (queued is None or waiting <= queued):
            if run_one(study, evaluate, stats, trials=trials):
                idle_since, queued, pause = time.monotonic(), None, poll_interval
                continue
            queued = 0  # lost the claim: claim again once the queue has stopped growing
        else:
            if not waiting:
                # An idle worker helps notice dead peers: their trials are failed and re-queued.
                optuna.storages.fail_stale_trials(study)
            # Polls of idle workers were most of the storage's load with 64 of them: while
            # the queue stays as it was, look less often, down to every IDLE_BACKOFF polls.
            unchanged = waiting == queued
            pause = min(2 * pause, IDLE_BACKOFF * poll_interval) if unchanged else poll_interval
            queued = waiting
        if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
            log.info("no work for %.0f s; leaving", idle_timeout)
            break
        # Jittered, so that workers that went idle together do not all poll at once.
        time.sleep(pause * random.uniform(0.5, 1.5))
    return stats


def describe(stats: WorkerStats) -> dict[str, Any]:
    return {
        "evaluated": stats.evaluated,
        "pruned": stats.pruned,
        "superseded": stats.superseded,
        "stray": stats.stray,
    }
