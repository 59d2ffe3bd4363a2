"""Command line: `python -m tale_opt [overrides]`, and the subcommands `worker`, `export`,
`bench` and `report`.

The search command is a Hydra app over the groups in conf/ (model, task, searcher, eval,
storage, tracking, experiment). `worker` composes conf/worker.yaml (storage group + study
name) and joins a running search. Bad input -- an unknown group choice or key, a missing
path, a malformed data file, an invalid value, an unwritable run directory -- prints one
`error:` line naming the problem and the fix and exits with code 2; a search that fails while
running exits with 1, Ctrl-C with 130 (one line each); `debug=true` shows the traceback
instead. A run that fails before doing any work leaves no run directory behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tale_opt.errors import SearchFailed, UsageError, did_you_mean

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "task", "searcher", "eval", "storage", "tracking", "experiment")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
_job_started = False  # set by the task function: errors before it are Hydra's own
# argparse subcommands: name -> module with `main(argv)`.
SUBCOMMANDS = {
    "export": "tale_opt.export_cli",
    "bench": "tale_opt.bench_cli",
    "report": "tale_opt.report_cli",
}


def _fail(err: BaseException, debug: bool) -> None:
    if debug:
        raise err
    print(f"error: {err}", file=sys.stderr)
    # Bad input is 2; a search that failed while running (SearchFailed) is 1.
    sys.exit(EXIT_USAGE if isinstance(err, UsageError) else 1)


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def check_group_choices(overrides: Sequence[str]) -> None:
    """Reject unknown group options (also inside multirun comma lists) with a suggestion."""
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+").partition("=")
        if key not in GROUPS or value in ("", "null"):
            continue
        available = group_choices(key)
        for choice in value.split(","):
            choice = choice.strip()
            if choice and choice not in available:
                raise UsageError(f"unknown {key} '{choice}'.{did_you_mean(choice, available)}")


def check_composition(overrides: Sequence[str]) -> None:
    """Compose the config once up front so unknown keys fail fast with a one-line error."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    plain = [a for a in overrides if not a.startswith("-") and not a.startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name="config", overrides=plain)
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(
            f"{first} -- run `python -m tale_opt --cfg job` to see the keys you can set"
        ) from err


def _is_debug(argv: Sequence[str]) -> bool:
    return any(a.lower() in ("debug=true", "debug=1", "+debug=true") for a in argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and (argv[0] in SUBCOMMANDS or argv[0] == "worker") else None
    from tale_opt.credentials import install_log_masking

    install_log_masking()
    try:
        _dispatch(command, argv)
    except KeyboardInterrupt:
        if _is_debug(argv):
            raise
        again = "; the same command resumes it (finished candidates are kept)"
        print(f"error: interrupted{again if command is None else ''}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _dispatch(command: str | None, argv: list[str]) -> None:
    if command in SUBCOMMANDS:
        import importlib

        importlib.import_module(SUBCOMMANDS[command]).main(argv[1:])
        return
    if command == "worker":
        _worker(argv[1:])
        return
    debug = _is_debug(argv)
    try:
        register_resolvers()
        check_group_choices(argv)
        multirun = any(a in ("-m", "--multirun") for a in argv)
        special = any(a.startswith("--") and a != "--multirun" for a in argv)
        if not multirun and not special:
            check_composition(argv)
    except UsageError as err:
        _fail(err, debug)
    sys.argv = [sys.argv[0], *argv]
    # Hydra prints a (shortened) traceback of any error and exits with 1 unless this is set;
    # set, the error reaches `_hydra_errors`, which turns bad input into one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_entry()
    except Exception as err:
        if debug:
            raise
        _fail(_hydra_errors(err), debug)


def register_resolvers() -> None:
    """The config's own resolvers (conf/config.yaml names run directories with one)."""
    from omegaconf import OmegaConf

    from tale_opt.run_dirs import RESOLVER, fresh_dir

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, fresh_dir)


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


def _search(cfg) -> None:  # the Hydra task function
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd
    from omegaconf import OmegaConf

    from tale_opt.run_dirs import discard_if_bare

    global _job_started
    _job_started = True
    debug = bool(cfg.get("debug", False))
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    # Hydra has just saved the composed config: mask its passwords before anything can fail.
    mask_hydra_files(hydra_cfg)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        from tale_opt import app

        app.run(container, out_dir, launch_dir=get_original_cwd())
    except BaseException as err:
        if not debug:  # a run that did no work leaves no directory behind; the error says why
            discard_if_bare(out_dir, log_name=f"{hydra_cfg.job.name}.log")
        if isinstance(err, UsageError | SearchFailed):
            _fail(err, debug)
        raise


def mask_hydra_files(hydra_cfg: Any) -> None:
    """Rewrite the config files Hydra saved for this job (`.hydra/*.yaml`, and a sweep's
    `multirun.yaml`) with every password masked; files without one are left alone."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from tale_opt.credentials import mask_values
    from tale_opt.outputs import write_text_atomic

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


def _worker(argv: Sequence[str]) -> None:
    """`python -m tale_opt worker storage=postgres study=NAME [idle_timeout=600 device=cuda:1]`."""
    import logging

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    debug = _is_debug(argv)
    try:
        check_group_choices(argv)
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="worker", overrides=list(argv))
            container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as err:
            raise UsageError(
                "the worker needs the study to join: study=NAME (the coordinator prints it)"
            ) from err
        except (HydraException, OmegaConfBaseException) as err:
            first = str(err).strip().splitlines()[0]
            raise UsageError(
                f"{first} -- keys: storage=..., study, idle_timeout, device, model_path, threads"
            ) from err
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        from tale_opt import worker_main

        worker_main.run(
            container["storage"],
            str(container["study"]),
            idle_timeout=container.get("idle_timeout"),
            device=container.get("device"),
            model_path=container.get("model_path"),
            threads=container.get("threads"),
        )
    except (UsageError, SearchFailed) as err:
        _fail(err, debug)


def _hydra_entry() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_search)()
