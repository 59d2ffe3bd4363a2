"""Workers as scheduler jobs: `count` workers of one search, submitted at once through submitit.

`launcher=slurm` submits them as one Slurm job array (``sbatch --array``), one GPU per task;
`launcher=local` runs the same jobs with submitit's local executor, as processes on this
machine, which is how the Slurm path is tried out (and tested) without a cluster. Each job
runs `pipeline.worker.run`, i.e. what `python -m tale_opt worker` runs: the nodes need this
project, the model files and a route to the storage, nothing else.

A job that Slurm preempts, or that reaches its time limit, is requeued by submitit (it calls
the job's `checkpoint`) and joins the search again. The trial it was evaluating stops beating
and is re-queued for another worker after `storage.grace_period`, like any dead worker's.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tale_opt import validate
from tale_opt.coordination.storage import URL_ENV, StorageConfig
from tale_opt.errors import SearchFailed, UsageError, did_you_mean, printed_error

LAUNCHERS = ("slurm", "local")
SLURM_KEYS = (
    "partition", "account", "qos", "constraint", "cpus_per_task", "mem_gb",
    "array_parallelism", "setup", "additional_parameters",
)  # fmt: skip
# Timed-out workers are requeued this often (a preempted one always): they only carry on.
MAX_TIMEOUTS = 3


@dataclass(frozen=True)
class WorkerArray:
    """A validated `workers` command: which workers to submit where (conf/workers.yaml)."""

    launcher: str
    count: int
    storage: StorageConfig
    study: str
    gpus_per_worker: int = 1
    timeout_min: int = 1440
    folder: str = "outputs/workers/%j"
    wait: bool = False
    idle_timeout: float | None = 600.0
    device: str | None = None
    model_path: str | None = None
    threads: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> WorkerArray:
        """Check a composed `workers` config.

        Raises:
            UsageError: An unknown launcher or Slurm key, a value out of range, or a storage
                that workers on other machines cannot share.
        """
        launcher = cfg.get("launcher")
        if launcher not in LAUNCHERS:
            hint = did_you_mean(str(launcher), LAUNCHERS)
            raise UsageError(f"unknown launcher {launcher!r}.{hint}")
        storage = StorageConfig.from_mapping(cfg["storage"])
        if launcher == "slurm" and storage.kind == "sqlite":
            raise UsageError(
                "launcher=slurm starts workers on other nodes, which cannot share a SQLite file; "
                "use storage=postgres (or storage=journal on a filesystem every node mounts)"
            )
        slurm = dict(cfg.get("slurm") or {})
        validate.known_keys(slurm, SLURM_KEYS, "slurm")
        for key in ("cpus_per_task", "mem_gb", "array_parallelism"):
            validate.integer(slurm.get(key), f"slurm.{key}", minimum=1, allow_none=True)
        setup = slurm.get("setup") or []
        if not isinstance(setup, Sequence) or isinstance(setup, str):
            raise UsageError(
                f"slurm.setup must be a list of shell lines, but got {setup!r}; e.g. "
                "slurm.setup='[module load cuda/12.4]'"
            )
        if not isinstance(slurm.get("additional_parameters") or {}, Mapping):
            raise UsageError(
                "slurm.additional_parameters must map sbatch options to values, but got "
                f"{slurm.get('additional_parameters')!r}; e.g. '+slurm.additional_parameters."
                "mail-type=END'"
            )
        idle = cfg.get("idle_timeout")
        # Absolute: the jobs run elsewhere (Slurm starts them in this directory, but logs of a
        # relative folder would be hard to find from the printed lines).
        folder = Path(str(cfg.get("folder") or "outputs/workers/%j")).expanduser().absolute()
        return cls(
            launcher=launcher,
            count=validate.integer(cfg.get("count"), "count", minimum=1),
            storage=storage,
            study=str(cfg["study"]),
            gpus_per_worker=validate.integer(
                cfg.get("gpus_per_worker"), "gpus_per_worker", minimum=0
            ),
            timeout_min=validate.integer(cfg.get("timeout_min"), "timeout_min", minimum=1),
            folder=str(folder),
            wait=validate.boolean(cfg.get("wait", False), "wait"),
            idle_timeout=None if idle is None else validate.number(idle, "idle_timeout", above=0),
            device=cfg.get("device"),
            model_path=cfg.get("model_path"),
            threads=validate.integer(cfg.get("threads"), "threads", minimum=1, allow_none=True),
            slurm={**slurm, "setup": list(setup)},
        )


class WorkerJob:
    """One worker as a submitit job. submitit pickles it by reference and calls it on the node."""

    def __call__(
        self,
        storage: Mapping[str, Any],
        study: str,
        idle_timeout: float | None,
        device: str | None,
        model_path: str | None,
        threads: int | None,
    ) -> dict[str, Any]:
        from tale_opt.coordination.console import quiet_optuna
        from tale_opt.coordination.worker import describe, worker_id
        from tale_opt.credentials import install_log_masking
        from tale_opt.pipeline import worker

        install_log_masking()
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        quiet_optuna()
        stats = worker.run(
            storage, study, idle_timeout=idle_timeout, device=device, model_path=model_path,
            threads=threads,
        )  # fmt: skip
        return {"worker": worker_id(), **describe(stats)}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit when Slurm preempts the job or its time runs out: the worker is
        requeued as it was (it holds no state; the study does)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class SubmittedWorkers:
    """The submitted jobs, and what to tell the user about them."""

    array: WorkerArray
    jobs: list[Any]

    def job_ids(self) -> list[str]:
        return [str(job.job_id) for job in self.jobs]

    def lines(self) -> list[str]:
        """What was submitted, where the logs are, how to watch and cancel it."""
        n, study, ids = self.array.count, self.array.study, self.job_ids()
        stdout = Path(self.jobs[0].paths.stdout)
        logs = f"logs:   {stdout} (and _log.err; one folder per worker)"
        retried = "its trial in flight is re-run by another worker after storage.grace_period"
        if self.array.launcher == "local":
            pids = " ".join(ids)
            return [
                f"started {n} worker(s) of study {study} on this machine (submitit's local "
                f"executor), processes {pids}",
                logs,
                f"cancel: kill -INT {pids}   ({retried})",
            ]
        array_id = ids[0].split("_")[0]
        gpus = self.array.gpus_per_worker
        what = f"Slurm job array {array_id} (tasks 0-{n - 1})" if n > 1 else f"Slurm job {ids[0]}"
        return [
            f"submitted {n} worker(s) of study {study} as {what}, {gpus} GPU(s) each; they "
            f"run {sys.executable} on their nodes",
            logs,
            f"watch:  squeue -j {array_id}   (afterwards: sacct -j {array_id})",
            f"cancel: scancel {array_id}   (one worker: scancel {array_id}_N; {retried})",
        ]

    def wait(self) -> list[dict[str, Any]]:
        """Block until every worker has left; what each did.

        Raises:
            SearchFailed: A worker's job failed (its error and where its log is).
        """
        done = []
        for job in self.jobs:
            try:
                done.append(job.result())
            except Exception as err:  # submitit's job errors carry the worker's stderr
                reason = printed_error(str(err)) or type(err).__name__
                raise SearchFailed(
                    f"worker job {job.job_id} failed: {reason} (log: {job.paths.stderr})"
                ) from err
        return done


def submit(array: WorkerArray) -> SubmittedWorkers:
    """Submit `array.count` workers.

    Raises:
        UsageError: submitit is not installed, there is no Slurm here (launcher=slurm), or
            sbatch refused the job (e.g. an unknown partition or account).
    """
    try:
        import submitit  # noqa: F401  (the `cluster` extra)
    except ImportError as err:
        raise UsageError(
            "the workers command needs submitit: pip install -e '.[cluster]' (or "
            "pip install submitit==1.5.4)"
        ) from err
    job = WorkerJob()
    storage = array.storage.as_dict()
    if storage["url"] is not None and os.environ.get(URL_ENV) == storage["url"]:
        # From the environment: the jobs read it from theirs (Slurm passes the submitting
        # shell's environment on), so the password stays out of submitit's pickles.
        storage["url"] = None
    kwargs = {
        "storage": storage,
        "study": array.study,
        "idle_timeout": array.idle_timeout,
        "device": array.device,
        "model_path": array.model_path,
    }
    if array.launcher == "local":
        return SubmittedWorkers(array, _submit_local(array, job, kwargs))
    executor = _slurm_executor(array)
    n = array.count
    columns = [[value] * n for value in (*kwargs.values(), array.threads)]
    try:
        jobs = executor.map_array(job, *columns)
    except Exception as err:  # submitit raises its own error type with sbatch's output
        reason = printed_error(str(err)) or type(err).__name__
        raise UsageError(
            f"sbatch refused the worker array: {reason}; check slurm.partition, slurm.account "
            "and the other slurm.* keys against `sinfo` and your allocation"
        ) from err
    return SubmittedWorkers(array, jobs)


def _slurm_executor(array: WorkerArray) -> Any:
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=array.folder, max_num_timeout=MAX_TIMEOUTS)
    except RuntimeError as err:  # submitit looks for `srun`
        raise UsageError(
            "launcher=slurm needs Slurm (sbatch and srun on PATH): run the command on a node of "
            "the cluster, or use launcher=local to start the workers on this machine"
        ) from err
    slurm = array.slurm
    mem_gb = slurm.get("mem_gb")
    parameters = {
        "job_name": "tale_opt-worker",
        "time": array.timeout_min,
        "gpus_per_node": array.gpus_per_worker or None,
        "cpus_per_task": slurm.get("cpus_per_task"),
        "mem": None if mem_gb is None else f"{mem_gb}GB",
        "partition": slurm.get("partition"),
        "account": slurm.get("account"),
        "qos": slurm.get("qos"),
        "constraint": slurm.get("constraint"),
        "array_parallelism": slurm.get("array_parallelism") or array.count,
        "setup": slurm.get("setup") or None,
        "additional_parameters": dict(slurm.get("additional_parameters") or {}) or None,
    }
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return executor


def _submit_local(array: WorkerArray, job: WorkerJob, kwargs: dict[str, Any]) -> list[Any]:
    """One local job per worker, each with its own GPU (round-robin over the visible ones) or,
    without GPUs, an equal share of this machine's cores as torch threads."""
    import submitit

    from tale_opt.coordination.local_workers import visible_gpus

    gpus = _gpu_indices(visible_gpus()) if array.gpus_per_worker else []
    threads = array.threads
    if threads is None and not gpus:
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
        threads = max(1, cores // array.count)
    executor = submitit.LocalExecutor(folder=array.folder, max_num_timeout=MAX_TIMEOUTS)
    jobs = []
    for i in range(array.count):
        own = [gpus[i % len(gpus)]] if gpus else []
        executor.update_parameters(
            timeout_min=array.timeout_min, gpus_per_node=len(own), visible_gpus=own
        )
        jobs.append(executor.submit(job, **kwargs, threads=threads))
    return jobs


def _gpu_indices(gpus: list[str]) -> list[int]:
    try:
        return [int(g) for g in gpus]
    except ValueError as err:
        raise UsageError(
            f"launcher=local hands out GPUs by index, but CUDA_VISIBLE_DEVICES names {gpus}; "
            "list them by index, or set gpus_per_worker=0"
        ) from err
