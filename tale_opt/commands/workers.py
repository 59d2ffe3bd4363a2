"""`python -m tale_opt workers launcher=slurm count=8 storage=postgres study=NAME`: submit
`count` workers of a search at once, as one Slurm job array through submitit (one GPU each),
or as local processes with `launcher=local`. Prints the job ids and how to watch and cancel
them; `wait=true` waits for the workers to leave and prints what each evaluated.

Composes conf/workers.yaml (the storage group and the keys there); each worker reads model,
task and evaluation options from the study, like `python -m tale_opt worker`.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

from tale_opt.commands import fail, is_debug
from tale_opt.commands.config import ConfigSource, compose_plain
from tale_opt.errors import SearchFailed, UsageError

WORKERS_KEYS = (
    "keys: launcher=slurm|local, count, storage=..., study, gpus_per_worker, timeout_min, "
    "folder, wait, idle_timeout, device, model_path, threads, slurm.* (see conf/workers.yaml)"
)


def main(argv: Sequence[str]) -> None:

    debug = is_debug(argv)
    try:
        container = compose_plain(
            argv,
            ConfigSource(config_name="workers", hint=WORKERS_KEYS),
            missing="the workers need the study to join: study=NAME (the coordinator prints "
            "it; give the coordinator the same study=NAME to start them first)",
        )
        from tale_opt.pipeline.worker_array import WorkerArray, submit

        array = WorkerArray.from_mapping(container)
        submitted = submit(array)
        for line in submitted.lines():
            print(line, flush=True)
        if array.wait:
            for ended in submitted.wait():
                print(
                    f"worker {ended['worker']} left: {ended['evaluated']} evaluated "
                    f"({ended['pruned']} stopped early), {ended['superseded']} taken over as "
                    "stale",
                    flush=True,
                )
        # submitit's local jobs hold reference cycles; left to the interpreter's exit, their
        # __del__ runs after the modules it needs are gone and prints a traceback.
        submitted.jobs.clear()
        gc.collect()
    except (UsageError, SearchFailed) as err:
        fail(err, debug)
