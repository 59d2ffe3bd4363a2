"""Command line: `python -m tale_opt [overrides]`, and the subcommands `worker`, `export`,
`bench` and `report`.

The search command is a Hydra app over the groups in conf/ (model, task, searcher, eval,
storage, tracking, experiment). `worker` composes conf/worker.yaml (storage group + study
name) and joins a running search. Bad input -- an unknown group choice or key, a missing
path, a malformed data file, an invalid value -- prints one `error:` line naming the problem
and the fix and exits with code 2; `debug=true` shows the traceback instead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from tale_opt.errors import SearchFailed, UsageError, did_you_mean

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "task", "searcher", "eval", "storage", "tracking", "experiment")
EXIT_USAGE = 2
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
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
        return
    if argv and argv[0] == "worker":
        _worker(argv[1:])
        return
    debug = _is_debug(argv)
    try:
        check_group_choices(argv)
        multirun = any(a in ("-m", "--multirun") for a in argv)
        special = any(a.startswith("--") and a != "--multirun" for a in argv)
        if not multirun and not special:
            check_composition(argv)
    except UsageError as err:
        _fail(err, debug)
    sys.argv = [sys.argv[0], *argv]
    _hydra_entry()


def _search(cfg) -> None:  # the Hydra task function
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd
    from omegaconf import OmegaConf

    debug = bool(cfg.get("debug", False))
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        from tale_opt import app
        from tale_opt.coordination.console import quiet_optuna

        quiet_optuna()
        app.run(container, out_dir, launch_dir=get_original_cwd())
    except (UsageError, SearchFailed) as err:
        _fail(err, debug)


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
        from tale_opt.coordination.console import quiet_optuna

        quiet_optuna()
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
