"""The paper's Table 1 as stages: TALE and fine-tuning in every order, on one held-out split.

    tale/           TALE on the model                      -> Baseline and "TALE only" rows
    ft/             fine-tune the full model (the control) -> "FT only"
    tale_ft/        fine-tune TALE's pick                  -> "TALE → FT"
    ft_tale/        TALE on the fine-tuned full model      -> "FT → TALE"
    tale_ft_tale/   TALE on the fine-tuned pick            -> "TALE → FT → TALE"

Every stage uses the same task, seed and split sizes, so every search draws the same
optimization and held-out splits, and every fine-tune trains on the same examples, drawn
outside them. A stage whose output directory holds its summary is not run again: the command
started again after a kill resumes at the first unfinished stage (and inside it: a search
resumes its study, a fine-tune its Trainer checkpoints).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tale_opt.finetune.job import FinetuneJob
from tale_opt.finetune.outputs import SUMMARY_JSON as FINETUNE_SUMMARY
from tale_opt.finetune.settings import FinetuneSettings
from tale_opt.types import DropSet

log = logging.getLogger("tale_opt")

STAGES = ("tale", "ft", "tale_ft", "ft_tale", "tale_ft_tale")
SEARCH_SUMMARY = "summary.json"


@dataclass
class StagePlan:
    """What the stages share.

    Attributes:
        search_cfg: A resolved search config (as `tale_opt.pipeline.run.run` takes it).
        settings: The fine-tuning settings of both fine-tunes.
        pick: Which configuration of a search the next stage starts from (best, final, ...).
        out_dir: One directory per stage goes in here.
        launch_dir: Where the command was started (relative tracking URIs resolve there).
        save_config: Writes a search stage's config as `.hydra/config.yaml`, so that
            `finetune run=<stage dir>` and `export <stage dir>` work on it like on any search.
    """

    search_cfg: Mapping[str, Any]
    settings: FinetuneSettings
    pick: str
    out_dir: Path
    launch_dir: Path | None = None
    save_config: Callable[[Mapping[str, Any], Path], None] | None = None

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.search_cfg["model"])


def run_stages(plan: StagePlan) -> dict[str, dict[str, Any]]:
    """Run (or resume) every stage; returns each stage's summary by stage name."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    base = plan.model
    summaries: dict[str, dict[str, Any]] = {}
    summaries["tale"] = tale = _search(plan, "tale", base)

    def origin(pick: str) -> dict[str, Any]:
        # Both fine-tunes start from a configuration of the TALE search (FT only from its
        # Baseline, the full model): they are nested under its run and reuse its held-out
        # scores of their starting model.
        return {
            "kind": "search",
            "run_dir": str(plan.out_dir / "tale"),
            "pick": pick,
            "splits_fingerprint": tale.get("splits_fingerprint"),
        }

    parent = (tale.get("tracking") or {}).get("parent_run_id")
    summaries["ft"] = _finetune(plan, "ft", DropSet(), origin("baseline"), parent)
    pick_drop = DropSet.of(tale[plan.pick]["drop_layers"])
    summaries["tale_ft"] = _finetune(plan, "tale_ft", pick_drop, origin(plan.pick), parent)
    name = base.get("name") or base.get("path")
    summaries["ft_tale"] = _search(
        plan, "ft_tale", {**base, "path": summaries["ft"]["merged"], "name": f"{name}+FT"}
    )
    summaries["tale_ft_tale"] = _search(
        plan,
        "tale_ft_tale",
        {**base, "path": summaries["tale_ft"]["merged"], "name": f"{name}+TALE+FT"},
    )
    return summaries


def _search(plan: StagePlan, stage: str, model: Mapping[str, Any]) -> dict[str, Any]:
    out = plan.out_dir / stage
    done = out / SEARCH_SUMMARY
    if done.is_file():
        log.info("stage %s: finished earlier (%s)", stage, out)
        return json.loads(done.read_text())
    from tale_opt.pipeline import run

    cfg = copy.deepcopy(dict(plan.search_cfg))
    cfg["model"] = dict(model)
    cfg["study"] = None
    storage = dict(cfg.get("storage") or {})
    if storage.get("kind", "sqlite") in ("sqlite", "journal"):
        # One storage file per stage, inside it: the stage directory is the whole record.
        suffix = "db" if storage.get("kind", "sqlite") == "sqlite" else "log"
        storage["path"] = str(out / f"trials.{suffix}")
        cfg["storage"] = storage
    out.mkdir(parents=True, exist_ok=True)
    if plan.save_config is not None:
        plan.save_config(cfg, out)
    log.info("stage %s: TALE on %s", stage, model.get("path"))
    summary = run.run(cfg, out, launch_dir=plan.launch_dir)
    gc.collect()
    return summary


def _finetune(
    plan: StagePlan, stage: str, drop: DropSet, origin: dict[str, Any], parent: str | None
) -> dict[str, Any]:
    out = plan.out_dir / stage
    done = out / FINETUNE_SUMMARY
    if done.is_file():
        log.info("stage %s: finished earlier (%s)", stage, out)
        return json.loads(done.read_text())
    from tale_opt.finetune.run import run_finetune

    cfg = plan.search_cfg
    model = {k: v for k, v in plan.model.items() if k != "name"}
    job = FinetuneJob(
        model=model,
        drop=drop,
        task=dict(cfg["task"]),
        eval=dict(cfg["eval"]),
        seed=cfg["seed"],
        n_opt=cfg.get("n_opt"),
        n_eval=cfg.get("n_eval"),
        settings=plan.settings,
        out_dir=out,
        origin=origin,
        tracking=cfg.get("tracking"),
        parent_run_id=parent,
        launch_dir=plan.launch_dir,
    )
    log.info("stage %s: fine-tune (drop %s)", stage, drop.key or "none")
    summary = run_finetune(job)
    gc.collect()
    return summary
