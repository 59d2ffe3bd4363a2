"""`python -m tale_opt [overrides]`: one search (or a sweep with ``-m``), a Hydra app over
the config groups in tale_opt/conf/ (model, task, searcher, eval, pruner, storage, tracking,
experiment) and any config directory of the user's (``--config-dir``, ``hydra.searchpath``).

Before Hydra runs, the command line is checked against Hydra's own config repository: an
unknown group option (also inside a sweep's comma list) or key, or a value of the wrong type,
is one `error:` line with a suggestion instead of Hydra's multi-line report (or, in a sweep,
a failure at job N).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tale_opt.commands import commands_help, fail, is_debug, wants_help
from tale_opt.commands.config import (
    CONF_DIR,
    check_group_choices,
    check_retired_keys,
    check_sweep,
    compose,
    source_from,
)
from tale_opt.commands.launchers import check_launcher, is_job_failure, job_failure
from tale_opt.commands.tasks import (
    LABEL_RESOLVER,
    check_tasks_overrides,
    expand_tasks,
    task_label,
    tasks_compositions,
)
from tale_opt.errors import SearchFailed, UsageError

_job_started = False  # set by the task function: errors before it are Hydra's own


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    debug = is_debug(argv)
    try:
        register_resolvers()
        precheck(argv)
    except UsageError as err:
        fail(err, debug)
    if wants_help(argv):  # Hydra's help knows the search's options, not the other commands
        print(commands_help(), flush=True)
    sys.argv = [sys.argv[0], *argv]
    # Hydra prints a (shortened) traceback of any error and exits with 1 unless this is set;
    # set, the error reaches `_hydra_errors`, which turns bad input into one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_entry()
    except Exception as err:
        if debug:
            raise
        if is_job_failure(err):  # a sweep job on a submitit launcher (hydra/launcher=slurm)
            fail(job_failure(err), debug)
        fail(_hydra_errors(err), debug)
    from tale_opt.commands.sweep import sweep_failure

    failure = sweep_failure()  # a multirun whose table is printed, but not every job finished
    if failure is not None:
        fail(failure, debug)


def register_resolvers() -> None:
    """The config's own resolvers (conf/config.yaml names run directories with one).

    Cached: Hydra copies a config's resolver cache into every sweep job's config, so a job
    that a submitit launcher runs in another process gets this process's sweep directory
    instead of making a fresh one of its own.
    """
    from omegaconf import OmegaConf

    from tale_opt.commands.run_dirs import RESOLVER, fresh_dir

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, fresh_dir, use_cache=True)
    if not OmegaConf.has_resolver(LABEL_RESOLVER):
        OmegaConf.register_new_resolver(LABEL_RESOLVER, task_label)


def precheck(argv: Sequence[str]) -> None:
    """Group choices (always) and composition (of a single run, or of a sweep's jobs) of the
    command line.

    Raises:
        UsageError: What Hydra would refuse, on one line.
    """
    from hydra._internal.utils import get_args_parser  # Hydra's own flags, parsed its way

    args = get_args_parser().parse_args(list(argv))
    if args.config_path is not None:  # another primary config directory: Hydra's to check
        return
    source = source_from(args.overrides, args.config_dir, args.config_name)
    check_retired_keys(args.overrides)
    check_group_choices(args.overrides, source)
    check_launcher(args.overrides)
    check_tasks_overrides(args.overrides, source)
    shows = args.cfg or args.help or args.hydra_help or args.info or args.shell_completion
    if shows:
        return
    if args.multirun:
        check_sweep(args.overrides, source)
    else:
        compose(args.overrides, source)
        for overrides in tasks_compositions(args.overrides):  # each task of a multi-task search
            compose(overrides, source)


def _hydra_errors(err: Exception) -> UsageError:
    """The usage error an exception out of Hydra stands for; anything else is re-raised."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    # Before the job starts, Hydra writes only the run directory, its config files and log.
    # (A missing config file is a HydraException and an OSError at once: not this case.)
    if isinstance(cause, OSError) and not isinstance(cause, HydraException) and not _job_started:
        where = cause.filename or "the run directory"
        return UsageError(
            f"cannot write {where} ({cause.strerror or cause}); choose a writable directory "
            "with hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m), or launch from one"
        )
    if isinstance(err, HydraException | OmegaConfBaseException):
        first = str(err).strip().splitlines()[0]
        return UsageError(
            f"{first} -- run `python -m tale_opt --cfg job` to see the keys you can set"
        )
    raise err


def _search(cfg: Any) -> dict[str, str]:  # the Hydra task function
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra.utils import get_original_cwd
    from omegaconf import OmegaConf

    from tale_opt.commands import sweep
    from tale_opt.commands.run_dirs import discard_if_bare

    global _job_started
    _job_started = True
    debug = bool(cfg.get("debug", False))
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    # Hydra has just saved the composed config: mask its passwords before anything can fail.
    mask_hydra_files(hydra_cfg)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        # A multi-task search: each task's config as `task=NAME` composes it in this job.
        container = expand_tasks(
            container, hydra_cfg.overrides.task, hydra_cfg.overrides.hydra,
            hydra_cfg.job.config_name,
        )  # fmt: skip
        from tale_opt.coordination.console import quiet_optuna
        from tale_opt.pipeline import run

        quiet_optuna()
        run.run(container, out_dir, launch_dir=get_original_cwd())
    except BaseException as err:
        if not debug:  # a run that did no work leaves no directory behind; the error says why
            discard_if_bare(out_dir, log_name=f"{hydra_cfg.job.name}.log")
        if hydra_cfg.mode == RunMode.MULTIRUN and isinstance(err, Exception):
            return sweep.failed_job(err, debug)  # the next job runs (Ctrl-C still stops)
        if isinstance(err, UsageError | SearchFailed):
            fail(err, debug)
        raise
    return sweep.finished_job()


def mask_hydra_files(hydra_cfg: Any) -> None:
    """Rewrite the config files Hydra saved for this job (`.hydra/*.yaml`, and a sweep's
    `multirun.yaml`) with every password masked; files without one are left alone."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from tale_opt.credentials import mask_values
    from tale_opt.pipeline.outputs import write_text_atomic

    paths: list[Path] = []
    if hydra_cfg.output_subdir is not None:
        saved = Path(hydra_cfg.runtime.output_dir) / str(hydra_cfg.output_subdir)
        paths += sorted(saved.glob("*.yaml"))
    if hydra_cfg.mode == RunMode.MULTIRUN:
        paths.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    for path in paths:
        if not path.is_file():
            continue
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        masked = mask_values(tree)
        if masked != tree:
            write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(masked)))


def _hydra_entry() -> None:
    import hydra

    from tale_opt.commands.schema import register_schemas

    register_schemas()
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_search)()
