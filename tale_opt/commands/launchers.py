"""Sweeps on a scheduler: `python -m tale_opt -m hydra/launcher=slurm ...` (or `local`).

The presets in tale_opt/conf/hydra/launcher/ extend the launchers of Hydra's submitit plugin
(the `cluster` extra). Two things Hydra leaves to the application, done here: a missing plugin
is one line naming the package to install (not Hydra's "could not find" report), and a sweep
job that failed on its node is one line with the job's own `error:` line and its log folder
(not submitit's report of a job that "has not produced any output").
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence

from tale_opt.errors import SearchFailed, UsageError, printed_error

PLUGIN = "hydra_plugins.hydra_submitit_launcher"
# Launcher choices that need the plugin: the shipped presets and the plugin's own names.
SUBMITIT_LAUNCHERS = ("slurm", "local", "submitit_slurm", "submitit_local")
LAUNCHER_KEY = "hydra/launcher"


def check_launcher(overrides: Sequence[str]) -> None:
    """Refuse a submitit launcher when its plugin is not installed.

    Raises:
        UsageError: One line naming the package to install.
    """
    for arg in overrides:
        key, _, value = arg.lstrip("+").partition("=")
        if key != LAUNCHER_KEY or value not in SUBMITIT_LAUNCHERS:
            continue
        if importlib.util.find_spec(PLUGIN) is None:
            raise UsageError(
                f"{LAUNCHER_KEY}={value} needs Hydra's submitit launcher: "
                "pip install -e '.[cluster]' (or pip install hydra-submitit-launcher==1.2.0)"
            )


def is_job_failure(err: BaseException) -> bool:
    """Whether `err` is submitit's report of a sweep job that failed on its node."""
    return type(err).__module__.startswith("submitit")


def job_failure(err: BaseException) -> SearchFailed:
    """A failed sweep job as one line: the job, its own error line, where its logs are."""
    text = str(err)
    reason = printed_error(text) or type(err).__name__
    job = re.search(r"\bJob (\d[\w.-]*)", text)
    # submitit names the job's result or log files, which sit in the job's log folder.
    files = re.search(r"(/\S+)/[^/\s]+_(?:result\.pkl|log\.err|log\.out)", text)
    where = files.group(1) if files else "the sweep directory's .submitit/ folder"
    return SearchFailed(
        f"sweep job {job.group(1) if job else '?'} failed: {reason} (its logs: {where})"
    )
