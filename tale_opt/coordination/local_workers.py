"""`workers=N`: N worker processes on this machine, started with `spawn`.

`spawn` rather than `fork`: a forked child inherits the parent's torch/CUDA and OpenMP state
and its open database connections, none of which survive a fork safely. Each worker gets:

* on CPU, an equal share of the cores as torch threads (N workers x cores/N threads, so the
  workers do not oversubscribe the machine);
* with several visible GPUs, one GPU each (CUDA_VISIBLE_DEVICES, round-robin when N exceeds
  the GPU count), set before the child imports torch.

Workers leave when the study is marked finished, or when this (parent) process is gone.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tale_opt.errors import SearchFailed


def visible_gpus() -> list[str]:
    """GPU ids this process may use, as CUDA_VISIBLE_DEVICES would name them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    # device_count() asks NVML without initializing CUDA in this (parent) process.
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_settings(
    n: int, device: str, cores: int | None = None, threads: int | None = None
) -> list[dict[str, Any]]:
    """Per-worker environment and torch thread count for `n` local workers.

    Args:
        n: Number of workers.
        device: The configured model device ("auto", "cpu", "cuda", "cuda:N", ...).
        cores: CPU cores to share (default: those this process may run on).
        threads: torch threads per worker (default: cores // n, at least 1).
    """
    if cores is None:  # the cores this process may use (sched_getaffinity is Linux-only)
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    threads = threads or max(1, cores // n)
    gpus = visible_gpus() if device in ("auto", "cuda") else []
    settings = []
    for i in range(n):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        settings.append({"env": env, "threads": threads})
    return settings


def _child(target: Callable[..., Any], env: Mapping[str, str], kwargs: dict[str, Any]) -> None:
    os.environ.update(env)  # before the target imports torch
    target(**kwargs)


class LocalWorkers:
    """Start, watch and stop `n` spawned worker processes running `target(**kwargs)`.

    `target` must be importable by name (spawn pickles it by reference); it receives
    `threads` and `parent_pid` on top of `kwargs`.
    """

    def __init__(
        self,
        n: int,
        target: Callable[..., Any],
        kwargs: Mapping[str, Any],
        *,
        device: str,
        threads: int | None = None,
    ) -> None:
        self.n = n
        self.target = target
        self.kwargs = dict(kwargs)
        self.settings = worker_settings(n, device, threads=threads)
        self.processes: list[Any] = []

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for i, setting in enumerate(self.settings):
            kwargs = {**self.kwargs, "threads": setting["threads"], "parent_pid": os.getpid()}
            process = context.Process(
                target=_child,
                args=(self.target, setting["env"], kwargs),
                name=f"tale_opt-worker-{i}",
                daemon=True,  # ends with the coordinator if it exits on an error
            )
            process.start()
            self.processes.append(process)

    def exit_codes(self) -> Sequence[int | None]:
        return [p.exitcode for p in self.processes]

    def check(self) -> None:
        """Raise if every worker has exited while the search still needs them."""
        codes = self.exit_codes()
        if codes and all(code is not None for code in codes):
            raise SearchFailed(
                f"all {self.n} local worker processes exited (exit codes {list(codes)}) before "
                "the search finished; their errors are above"
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Wait for workers to leave (the study is finished), then end stragglers."""
        for process in self.processes:
            process.join(timeout)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
