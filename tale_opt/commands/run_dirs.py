"""Run directories: one per command, and none left behind by a run that did no work.

Hydra names a run's directory after the time to the second (conf/config.yaml); two commands
started in the same second would share it and append to each other's files. The
`tale_opt.fresh_dir` resolver (registered by the CLI) makes the name unique by creating the
directory itself: ``mkdir`` either creates it or fails because it exists, atomically, so the
second command gets ``..._2``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

RESOLVER = "tale_opt.fresh_dir"
HYDRA_SUBDIR = ".hydra"

# prefix -> the directory made for it: Hydra resolves its run dir more than once per process.
_made: dict[str, str] = {}


def fresh_dir(prefix: str) -> str:
    """`prefix`, or `prefix_2`, `prefix_3`, ...: the first that did not exist, created now.

    The same `prefix` gives the same directory for the rest of the process.
    """
    if prefix not in _made:
        _made[prefix] = str(make_fresh_dir(prefix))
    return _made[prefix]


def make_fresh_dir(prefix: str | Path) -> Path:
    """Create and return `prefix`, or `prefix_2`, `prefix_3`, ...: the first that did not
    exist. Unlike `fresh_dir`, every call makes a new directory."""
    base = Path(prefix)
    base.parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        path = base if number == 1 else base.with_name(f"{base.name}_{number}")
        try:
            path.mkdir()
        except FileExistsError:
            number += 1
            continue
        return path


def discard_if_bare(run_dir: Path, log_name: str) -> bool:
    """Remove `run_dir` when it holds only what Hydra writes as a job starts (`.hydra/` and
    the job's log `log_name`): a run that failed before doing any work. Returns whether it
    was removed.

    Nothing is lost: the log's lines went to the console too, and the error is printed.
    Any other file (a result, a user's own file) keeps the directory and everything in it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    entries = list(run_dir.iterdir())
    for entry in entries:
        hydra = entry.name == HYDRA_SUBDIR and entry.is_dir() and not entry.is_symlink()
        log = entry.name == log_name and entry.is_file()
        if not (hydra or log):
            return False
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    run_dir.rmdir()
    return True
