"""The coordinator: turns a pure searcher's proposals into Optuna trials and back.

One cycle, repeated until the searcher is done:

1. read the study's trials, once per cycle (everything below works from that read); replay
   the finished, marked ones into the searcher, in the order it proposes them (so only what
   this search would have asked for is counted, and a study shared by an epsilon sweep never
   leaks another run's candidates into this result);
2. enqueue every proposed candidate that has no trial yet (in any state: retried copies of
   a lost trial share its key and count once), in the order the searcher proposes them
   (workers claim the oldest waiting trial first, so likely winners run first);
3. evaluate one trial in this process (`workers=0`), or wait for other workers, calling
   `fail_stale_trials` so trials of dead workers are re-queued.

Trials are told apart by their number (unique within a study), never by a storage's id.

All state lives in the storage, so a killed coordinator restarted with the same command
rebuilds the searcher from the completed trials and re-evaluates nothing.

With `early_stop`, trials of a searcher whose rounds are won by task accuracy
(``early_termination``) are enqueued `prunable`: a worker stops one by the study's pruner
(`tale_opt.coordination.racing`), by default as soon as it cannot beat the best completed
rival of its round, and it ends PRUNED with its upper bound. The searcher checks each bound
against its own round; a candidate it still proposes after seeing its pruned result (the bound
proves nothing in this search, e.g. a study shared by runs with other protected layers) is
enqueued again without `prunable` and evaluated in full. A candidate a racing pruner raced out
lost its round: the searcher settles it, so it is never proposed again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchers.base import Searcher
from tale_opt.coordination import study as st
from tale_opt.coordination.worker import (
    Evaluate,
    quiet_trial_failures,
    run_one,
    storage_errors_as_search_failed,
    worker_id,
)
from tale_opt.errors import SearchFailed
from tale_opt.types import Candidate, Observation, SearchResult

log = logging.getLogger("tale_opt.coordinator")

_LIVE = (TrialState.WAITING, TrialState.RUNNING)
_DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def run_coordinator(
    study: optuna.Study,
    searcher: Searcher,
    *,
    evaluate: Evaluate | None = None,
    on_observation: Callable[[Observation, FrozenTrial], None] = lambda obs, trial: None,
    poll_interval: float = 0.5,
    lost_after: float = 30.0,
    max_retry: int | None = 3,
    check_workers: Callable[[], None] = lambda: None,
    early_stop: bool = False,
) -> SearchResult:
    """Drive `searcher` through `study` until it is done, and return its result.

    Args:
        study: The search's study (its fingerprint already checked).
        searcher: A fresh searcher; it is rebuilt from the study's completed trials.
        evaluate: Evaluate candidates in this process too (None: other workers do it all).
        on_observation: Called once per candidate as it is counted (in the order the searcher
            observed them), with the trial it came from; e.g. to append result files.
        poll_interval: Seconds between storage polls while waiting for workers.
        lost_after: Seconds a stale-failed candidate may stay without a queued retry before
            the coordinator queues one itself (the process running the retry callback died).
        max_retry: Give up on a candidate whose evaluation was lost more often than this.
        check_workers: Called while waiting; raises if the local workers are gone.
        early_stop: Let workers stop candidates early by the study's pruner (exact early
            termination unless the study config names a racing pruner; only for searchers
            whose ``early_termination`` is true). False: every candidate runs in full.

    Raises:
        SearchFailed: A worker's evaluation raised, a candidate was lost too often, or the
            storage stopped answering.
    """
    with storage_errors_as_search_failed():
        return _coordinate(
            study, searcher, evaluate, on_observation, poll_interval, lost_after, max_retry,
            check_workers, early_stop and searcher.early_termination,
        )  # fmt: skip


def _coordinate(
    study: optuna.Study,
    searcher: Searcher,
    evaluate: Evaluate | None,
    on_observation: Callable[[Observation, FrozenTrial], None],
    poll_interval: float,
    lost_after: float,
    max_retry: int | None,
    check_workers: Callable[[], None],
    prunable: bool,
) -> SearchResult:
    st.set_finished(study, False)
    layers = searcher.num_layers  # for the trials' dashboard params (`st.trial_params`)
    trials = study.get_trials(deepcopy=False)
    earlier_failures = {t.number for t in trials if t.state == TrialState.FAIL}
    done_before = sum(1 for t in trials if st.observation_of(t) is not None)
    if done_before:
        log.info("resuming study %s: %d evaluated already", study.study_name, done_before)
    restarted: set[str] = set()
    lost_since: dict[str, float] = {}
    unstarted_since: dict[int, float] = {}
    fed: set[int] = set()  # numbers of the trials whose observation the searcher has been given
    retry_stale = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    while True:
        trials = study.get_trials(deepcopy=False)
        groups = _by_candidate(trials)
        _fail_unstarted(study, groups, unstarted_since, lost_after, retry_stale)
        for obs, trial in _replay(searcher, groups, fed):
            on_observation(obs, trial)
        if searcher.done:
            break
        proposed = searcher.propose()
        base = st.round_base(proposed)
        waiting = any(t.state == TrialState.WAITING for group in groups.values() for t in group)
        for candidate in proposed:
            attempts = groups.get(candidate.key, [])
            if not attempts:
                st.enqueue(study, candidate, prunable=prunable, base=base, num_layers=layers)
                waiting = True
            elif any(t.state in _LIVE for t in attempts):
                pass
            elif any(t.number in fed for t in attempts) and not any(
                t.state == TrialState.FAIL for t in attempts
            ):
                # Seen, yet proposed again: the searcher found the pruned bound unproven.
                # (A lost or failed full evaluation goes through `_recover` below.)
                log.info("evaluating %s in full: its early-stop bound does not hold here",
                         candidate.drop)  # fmt: skip
                st.enqueue(study, candidate, num_layers=layers)
                waiting = True
            else:
                waiting |= _recover(
                    study, candidate, attempts, earlier_failures, restarted, lost_since,
                    lost_after=lost_after, max_retry=max_retry, num_layers=layers,
                )  # fmt: skip
        if evaluate is not None and waiting:
            # Early termination's first rival comes from this cycle's read; a trial that
            # finished since (another worker's) only makes the rival stronger on its refresh.
            _evaluate_here(study, evaluate, trials)
            continue
        check_workers()
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll_interval)
    st.set_finished(study, True)
    return searcher.result()


def _evaluate_here(study: optuna.Study, evaluate: Evaluate, trials: Sequence[FrozenTrial]) -> None:
    """Evaluate one waiting trial in this process (`workers=0`).

    An evaluation that raises ends the search with the same one line as a worker's failure
    (Optuna's own warning with the traceback is silenced; `debug=true` shows the cause).
    """
    try:
        with quiet_trial_failures():
            run_one(study, evaluate, trials=trials)
    except Exception as err:
        mine = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if st.ERROR in t.user_attrs and t.user_attrs.get(st.WORKER) == worker_id()
        ]
        candidate = st.candidate_of(mine[-1]) if mine else None
        if candidate is None:
            raise  # not an evaluation's error (the storage, a bug): as it is
        raise _evaluation_failed(candidate, mine[-1]) from err


def _evaluation_failed(candidate: Candidate, trial: FrozenTrial) -> SearchFailed:
    return SearchFailed(
        f"evaluating drop set {candidate.drop} failed in worker "
        f"{trial.user_attrs.get(st.WORKER, '?')} (trial {trial.number}): "
        f"{trial.user_attrs[st.ERROR]}"
    )


def _by_candidate(trials: list[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    groups: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trial in trials:
        candidate = st.candidate_of(trial)
        if candidate is not None:
            groups[candidate.key].append(trial)
    return groups


def _fail_unstarted(
    study: optuna.Study,
    groups: dict[str, list[FrozenTrial]],
    unstarted_since: dict[int, float],
    lost_after: float,
    retry_stale: Callable[[optuna.Study, FrozenTrial], None],
) -> None:
    """Fail and re-queue trials claimed by a worker that died before its first heartbeat.

    Optuna only ever declares a trial stale from its heartbeats, and a worker killed between
    claiming a trial and its first beat (milliseconds) leaves one with none: RUNNING forever.
    A worker records `worker` on the trial as it starts evaluating, so a RUNNING trial seen
    without it for `lost_after` seconds (by this process's own clock) has lost its worker.
    It is failed and re-queued the way `fail_stale_trials` handles a trial whose beats stopped.
    """
    running = {
        t.number: t
        for attempts in groups.values()
        for t in attempts
        if t.state == TrialState.RUNNING and st.WORKER not in t.user_attrs
    }
    now = time.monotonic()
    for number in list(unstarted_since):
        if number not in running:
            del unstarted_since[number]
    for number in running:
        if now - unstarted_since.setdefault(number, now) <= lost_after:
            continue
        del unstarted_since[number]
        try:
            failed = study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished between the check inside `tell` and its write
        # Skipped when it had finished meanwhile: its worker came to life after all (and then
        # it carries `worker`), or it failed with an error of its own.
        if failed.state != TrialState.FAIL or {st.WORKER, st.ERROR} & set(failed.user_attrs):
            continue
        log.warning("trial %d was claimed but never started; re-queueing it", number)
        retry_stale(study, failed)


def _replay(
    searcher: Searcher, groups: dict[str, list[FrozenTrial]], fed: set[int]
) -> list[tuple[Observation, FrozenTrial]]:
    """Feed the searcher every finished candidate it asks for, round after round, each
    trial once (`fed` collects them across calls)."""
    counted = []
    while not searcher.done:
        ready = []
        for candidate in searcher.propose():
            found = _finished(groups.get(candidate.key, []))
            if found is not None and found[1].number not in fed:
                ready.append(found)
        if not ready:
            break
        searcher.observe(obs for obs, _ in ready)
        fed.update(trial.number for _, trial in ready)
        counted.extend(ready)
    return counted


def _finished(attempts: list[FrozenTrial]) -> tuple[Observation, FrozenTrial] | None:
    # Several finished copies of one candidate (a stale-but-alive worker raced its retry) have
    # equal scores; a complete one is preferred, then the oldest, so the choice is stable.
    ranked = sorted(
        (t for t in attempts if t.state in _DONE),
        key=lambda t: (t.state != TrialState.COMPLETE, t.number),
    )
    for trial in ranked:
        obs = st.observation_of(trial)
        if obs is not None:
            return obs, trial
    return None


def _recover(
    study: optuna.Study,
    candidate: Candidate,
    attempts: list[FrozenTrial],
    earlier_failures: set[int],
    restarted: set[str],
    lost_since: dict[str, float],
    *,
    lost_after: float,
    max_retry: int | None,
    num_layers: int | None = None,
) -> bool:
    """A proposed candidate whose every trial failed: re-queue it (True), wait for a retry
    someone else queues, or give up with a reason."""
    failed_now = [t for t in attempts if t.number not in earlier_failures]
    if not failed_now:
        # Failures of an earlier coordinator's run (a crash, a fixed bug): one fresh try.
        if candidate.key not in restarted:
            restarted.add(candidate.key)
            log.info("re-queueing %s, which failed before this run started", candidate.drop)
            st.enqueue(study, candidate, num_layers=num_layers)
            return True
        return False
    errors = [t for t in failed_now if st.ERROR in t.user_attrs]
    if errors:
        raise _evaluation_failed(candidate, errors[-1])
    if max_retry is not None and len(failed_now) > max_retry:
        raise SearchFailed(
            f"the evaluation of drop set {candidate.drop} was lost {len(failed_now)} times "
            f"(workers stopped beating mid-trial; storage.max_retry={max_retry}); check the "
            "workers' logs for crashes or out-of-memory kills, then run the same command again"
        )
    # RetryHeartbeatStaleTrialCallback queues the retry right after failing the trial; if no
    # copy shows up, whoever failed it died in between, so queue one ourselves.
    first_seen = lost_since.setdefault(candidate.key, time.monotonic())
    if time.monotonic() - first_seen > lost_after:
        del lost_since[candidate.key]
        log.warning("re-queueing lost candidate %s", candidate.drop)
        st.enqueue(study, candidate, num_layers=num_layers)
        return True
    return False
