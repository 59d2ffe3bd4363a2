"""What Optuna prints during a search, set by the command line at startup.

Never at import time: a program or test that imports tale_opt keeps Optuna's log level and
Python's warning filters as it set them. The `python -m tale_opt` search and worker commands
(and each worker process a search spawns) call `quiet_optuna` once, before any trial runs.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.exceptions import ExperimentalWarning


def quiet_optuna() -> None:
    """Keep Optuna's output to warnings and errors, for this whole process.

    tale_opt logs its own progress, so Optuna's per-trial INFO lines would double it; and
    heartbeats and stale-trial retry are "experimental" in Optuna 5, which warns on every use
    of what a search relies on knowingly.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
