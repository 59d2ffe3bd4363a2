"""`python -m tale_opt worker storage=postgres study=NAME [idle_timeout=600 device=cuda:1]`:
join a running search and evaluate its candidates.

    python -m tale_opt worker storage=sqlite storage.path=outputs/tale_opt.db study=NAME
    export TALE_OPT_STORAGE_URL=postgresql://USER:PASSWORD@HOST:5432/DB
    python -m tale_opt worker storage=postgres study=NAME device=cuda:1

The search prints the command to join it (and the study name is in its summary.json).
Composes conf/worker.yaml (the storage group and a few keys); everything else -- model, task,
splits, evaluation options -- is read from the study. The worker leaves when the search is
finished, or after `idle_timeout` seconds without work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tale_opt.commands import fail, is_debug, print_usage, wants_help
from tale_opt.commands.config import ConfigSource, compose_plain
from tale_opt.errors import SearchFailed, UsageError

WORKER_KEYS = "keys: storage=..., study, idle_timeout, device, model_path, threads"


def main(argv: Sequence[str]) -> None:

    debug = is_debug(argv)
    if wants_help(argv):
        print_usage(__doc__, f"{WORKER_KEYS}; storage.* as for a search (see README)")
        return
    try:
        container = compose_plain(
            argv,
            ConfigSource(config_name="worker", hint=WORKER_KEYS),
            missing="the worker needs the study to join: study=NAME (the coordinator prints it)",
        )
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        from tale_opt.coordination.console import quiet_optuna
        from tale_opt.pipeline import worker

        quiet_optuna()
        worker.run(
            container["storage"],
            str(container["study"]),
            idle_timeout=container.get("idle_timeout"),
            device=container.get("device"),
            model_path=container.get("model_path"),
            threads=container.get("threads"),
        )
    except (UsageError, SearchFailed) as err:
        fail(err, debug)
