"""`python -m tale_opt pipeline [overrides]`: TALE and LoRA fine-tuning in every order, one
table (the structure of the paper's Table 1).

    python -m tale_opt pipeline                                  # SmolLM2, arc_easy_cloze
    python -m tale_opt pipeline searcher.max_drop=4 finetune.max_steps=200 pick=final
    python -m tale_opt pipeline model=llama31 task=winogrande finetune=paper_qlora

Composes conf/pipeline.yaml: the search config (every group and key of `python -m tale_opt`)
plus the `finetune` group, `pick` and `out`. Runs the stages of `tale_opt.finetune.stages`,
each in its own directory under `out`, then writes table.md, table.json and table.png there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.commands import fail, is_debug, print_usage, wants_help
from tale_opt.commands.config import ConfigSource, check_group_choices, compose
from tale_opt.commands.runs import PICKS
from tale_opt.errors import SearchFailed, UsageError, did_you_mean

HINT = "run `python -m tale_opt pipeline --cfg` to see the keys you can set"
STAGE_PICKS = tuple(p for p in PICKS if p != "baseline")


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    debug = is_debug(argv)
    if wants_help(argv):
        print_usage(__doc__, HINT[0].upper() + HINT[1:])
        return
    try:
        cfg = _config([a for a in argv if a != "--cfg"])
        if "--cfg" in argv:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return
        plan = build_plan(cfg, launch_dir=Path.cwd())
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        from tale_opt.finetune.stages import run_stages
        from tale_opt.finetune.table import write_table

        summaries = run_stages(plan)
        print(write_table(summaries, plan.pick, plan.out_dir, plan.settings.as_dict()))
        print(f"\nwrote {plan.out_dir / 'table.md'} and table.png")
    except (UsageError, SearchFailed) as err:
        fail(err, debug)


def _config(argv: Sequence[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    source = ConfigSource(config_name="pipeline", hint=HINT)
    check_group_choices(argv, source)
    cfg = OmegaConf.to_container(compose(list(argv), source), resolve=True)
    cfg.pop("hydra", None)
    return cfg


def build_plan(cfg: Mapping[str, Any], launch_dir: Path | None = None) -> Any:
    """The stages' plan from a composed pipeline config; checks what needs no model.

    Raises:
        UsageError: A bad finetune or search value, or an unknown pick.
    """
    from tale_opt.finetune import FinetuneSettings
    from tale_opt.finetune.stages import StagePlan
    from tale_opt.pipeline.plan import check_config

    cfg = dict(cfg)
    settings = FinetuneSettings.from_mapping(cfg.pop("finetune"))
    pick = str(cfg.pop("pick"))
    if pick not in STAGE_PICKS:
        raise UsageError(f"unknown pick {pick!r}.{did_you_mean(pick, STAGE_PICKS)}")
    out = Path(str(cfg.pop("out"))).expanduser()
    if not out.is_absolute() and launch_dir is not None:
        out = launch_dir / out
    check_config(cfg)  # the search's own checks, before any stage starts
    return StagePlan(cfg, settings, pick, out.resolve(), launch_dir, save_config=_save_config)


def _save_config(cfg: Mapping[str, Any], out: Path) -> None:
    """`.hydra/config.yaml` of a stage's search, as a Hydra job writes it."""
    from omegaconf import OmegaConf

    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    from tale_opt.credentials import mask_values

    config = OmegaConf.create(mask_values(dict(cfg)))  # never a password on disk
    OmegaConf.save(config, out / ".hydra" / "config.yaml")
