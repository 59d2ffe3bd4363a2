"""Composition root of a worker: storage + study name in, evaluated trials out.

Used by `python -m tale_opt worker storage=... study=NAME` (any machine that reaches the
storage) and by the processes `workers=N` spawns. Everything else -- model, task, splits,
evaluation options -- is read from the study, so a worker needs no search config of its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from tale_opt.coordination import study as st
from tale_opt.coordination.console import quiet_optuna
from tale_opt.coordination.storage import StorageConfig, StorageNotReady, open_storage
from tale_opt.coordination.worker import WorkerStats, run_worker, worker_id
from tale_opt.errors import SearchFailed, UsageError

log = logging.getLogger("tale_opt.worker")


def run(
    storage: Mapping[str, Any],
    study: str,
    *,
    idle_timeout: float | None = 600.0,
    device: str | None = None,
    model_path: str | None = None,
    threads: int | None = None,
    parent_pid: int | None = None,
) -> WorkerStats:
    """Join the search `study` in `storage` and evaluate its candidates until it ends.

    Args:
        storage: A `storage` config node (kind, path or url, liveness settings).
        study: The study name the coordinator printed.
        idle_timeout: Seconds to wait for the study to appear and, later, for work.
        device: Override the model device for this worker (e.g. ``cuda:1``).
        model_path: Where this machine keeps the study's checkpoint, if not at its path.
        threads: torch CPU threads (None: torch's default).
        parent_pid: Leave once this process (the coordinator that spawned us) is gone.

    Raises:
        UsageError: No storage or study there, or this machine's model/data differ.
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    config = StorageConfig.from_mapping(storage)
    found = _wait_for_study(config, study, idle_timeout)
    from tale_opt.pipeline.multitask import evaluator_for

    evaluate = evaluator_for(
        found.user_attrs[st.CONFIG],
        expected=found.user_attrs[st.FINGERPRINT],
        device=device,
        model_path=model_path,
    )
    from tale_opt.model.loading import placement

    # The placement names the GPU (by UUID), so a log shows which worker ran where.
    log.info(
        "worker %s joined study %s (%s); model on %s",
        worker_id(), study, config.describe(), placement(evaluate.model),
    )  # fmt: skip

    def keep_going() -> bool:
        return parent_pid is None or os.getppid() == parent_pid

    stats = run_worker(
        found,
        evaluate,
        poll_interval=config.poll_interval,
        idle_timeout=idle_timeout,
        keep_going=keep_going,
    )
    log.info(
        "worker %s leaves: %d evaluated, %d taken over as stale, %d claims lost to others",
        worker_id(), stats.evaluated, stats.superseded, stats.stray,
    )  # fmt: skip
    return stats


def _wait_for_study(config: StorageConfig, name: str, timeout: float | None) -> Any:
    """The study, once its coordinator has created it (workers may start first)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    storage = None
    while True:
        try:
            storage = storage or open_storage(config, create=False)
            found = st.load_study(storage, name)
        except StorageNotReady as err:
            if deadline is not None and time.monotonic() > deadline:
                raise
            reason, found = str(err), None
        else:
            reason = f"no study {name!r} in {config.describe()}"
        if found is not None:
            return found
        if deadline is not None and time.monotonic() > deadline:
            raise UsageError(
                f"{reason} after {timeout:.0f} s; check the study name the coordinator printed "
                "and the storage settings"
            )
        if not announced:
            log.info("waiting for study %s to appear in %s", name, config.describe())
            announced = True
        time.sleep(config.poll_interval)


def spawned(
    storage: Mapping[str, Any], study: str, threads: int, parent_pid: int, debug: bool = False
) -> None:
    """Entry point of a `workers=N` process (see coordination/local_workers.py)."""
    import sys

    from tale_opt.credentials import install_log_masking

    install_log_masking()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    quiet_optuna()  # a spawned process starts afresh: the command line's setting is not inherited
    try:
        run(storage, study, idle_timeout=None, threads=threads, parent_pid=parent_pid)
    except (UsageError, SearchFailed) as err:
        if debug:
            raise
        print(f"error: worker {worker_id()}: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, UsageError) else 1)
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group: the coordinator says it, once.
        sys.exit(130)
