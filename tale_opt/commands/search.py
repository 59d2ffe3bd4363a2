"""`python -m tale_opt [overrides]`: one search (or a sweep with ``-m``), a Hydra app over
the config groups in tale_opt/conf/ (model, task, searcher, eval, storage, tracking,
experiment) and any config directory of the user's (``--config-dir``, ``hydra.searchpath``).

Before Hydra runs, the command line is checked against Hydra's own config repository: an
unknown group option (also inside a sweep's comma list) or key, or a value of the wrong type,
is one `error:` line with a suggestion instead of Hydra's multi-line report (or, in a sweep,
a failure at job N).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tale_opt.commands import fail, is_debug
from tale_opt.commands.config import (
    CONF_DIR,
    check_group_choices,
    compose,
    source_from,
)
from tale_opt.errors import SearchFailed, UsageError


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    debug = is_debug(argv)
    try:
        precheck(argv)
    except UsageError as err:
        fail(err, debug)
    sys.argv = [sys.argv[0], *argv]
    _hydra_entry()


def precheck(argv: Sequence[str]) -> None:
    """Group choices (always) and composition (for a single run) of the command line.

    Raises:
        UsageError: What Hydra would refuse, on one line.
    """
    from hydra._internal.utils import get_args_parser  # Hydra's own flags, parsed its way

    args = get_args_parser().parse_args(list(argv))
    if args.config_path is not None:  # another primary config directory: Hydra's to check
        return
    source = source_from(args.overrides, args.config_dir, args.config_name)
    check_group_choices(args.overrides, source)
    shows = args.cfg or args.help or args.hydra_help or args.info or args.shell_completion
    if not args.multirun and not shows:
        compose(args.overrides, source)


def _search(cfg: Any) -> None:  # the Hydra task function
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd
    from omegaconf import OmegaConf

    debug = bool(cfg.get("debug", False))
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        from tale_opt.pipeline import run

        run.run(container, out_dir, launch_dir=get_original_cwd())
    except (UsageError, SearchFailed) as err:
        fail(err, debug)


def _hydra_entry() -> None:
    import hydra

    from tale_opt.commands.schema import register_schemas

    register_schemas()
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_search)()
