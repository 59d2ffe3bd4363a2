"""`python -m tale_opt finetune`: LoRA fine-tuning ("healing") of a pruned model.

    python -m tale_opt finetune run=outputs/2026-12-01/10-00-00_arc_easy_cloze pick=final
    python -m tale_opt finetune checkpoint=pruned/ task=arc_easy_cloze
    python -m tale_opt finetune                          # the full model: the control
    python -m tale_opt finetune run=... finetune=paper_qlora model.device=cuda

Composes conf/finetune_job.yaml (groups model, task, eval, tracking, finetune). With `run=`
the model, task, evaluator options, seed and split sizes are the search's, so the held-out
split is exactly the one its summary reports and the training data is drawn outside all of
its parts; the fine-tune's MLflow run is nested under the search's parent run.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.commands import fail, is_debug, print_usage, wants_help
from tale_opt.commands.config import ConfigSource, check_group_choices, compose
from tale_opt.commands.runs import FinishedRun
from tale_opt.errors import UsageError
from tale_opt.types import DropSet

HINT = "run `python -m tale_opt finetune --cfg` to see the keys you can set"
# With run=, these come from the search; setting them too would score another held-out split.
FROM_RUN = ("task", "model", "eval", "seed", "n_opt", "n_eval")
# ... except where the model runs, which does not change what it computes.
RUN_OVERRIDABLE = ("model.device",)


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    debug = is_debug(argv)
    if wants_help(argv):
        print_usage(__doc__, HINT[0].upper() + HINT[1:])
        return
    try:
        if "--cfg" in argv:
            _print_config([a for a in argv if a != "--cfg"])
            return
        job = build_job(argv, launch_dir=Path.cwd())
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        from tale_opt.finetune.run import run_finetune

        run_finetune(job)
    except UsageError as err:
        fail(err, debug)


def _config(argv: Sequence[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    source = ConfigSource(config_name="finetune_job", hint=HINT)
    check_group_choices(argv, source)
    return OmegaConf.to_container(compose(list(argv), source), resolve=True)


def _print_config(argv: Sequence[str]) -> None:
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(_config(argv)))


def build_job(argv: Sequence[str], launch_dir: Path | None = None) -> Any:
    """The `FinetuneJob` a command line asks for; nothing is loaded or written.

    Raises:
        UsageError: A bad key or value, a run directory without a summary, a search setting
            given together with run=, or an output directory that is not a fine-tune's.
    """
    from tale_opt.finetune import FinetuneJob, FinetuneSettings

    cfg = _config(argv)
    settings = FinetuneSettings.from_mapping(cfg["finetune"])
    if cfg.get("run") and cfg.get("checkpoint"):
        raise UsageError("give either run=<search dir> or checkpoint=<dir>, not both")
    if cfg.get("run"):
        fields = _from_run(cfg, argv)
    elif cfg.get("checkpoint"):
        fields = _from_checkpoint(cfg)
    else:
        fields = _from_model(cfg)
    out = Path(cfg["out"]) if cfg.get("out") else fields.pop("default_out")
    fields.pop("default_out", None)
    if cfg.get("overwrite"):
        _clear(out)
    return FinetuneJob(settings=settings, out_dir=out.expanduser().resolve(),
                       launch_dir=launch_dir, **fields)  # fmt: skip


def _model(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != "name"}


def _from_run(cfg: Mapping[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    for arg in argv:
        key = arg.lstrip("+~").partition("=")[0]
        if key.split(".")[0] in FROM_RUN and key not in RUN_OVERRIDABLE:
            raise UsageError(
                f"{key} comes from the search in run={cfg['run']} (its held-out split and "
                f"scoring); drop {arg!r}, or fine-tune without run= to choose it"
            )
    run = FinishedRun.open(cfg["run"])
    run.require_single_task("finetune")
    if run.config is None:
        raise UsageError(
            f"{run.run_dir} has no .hydra/config.yaml, so its task and splits are unknown; "
            "pass a directory written by `python -m tale_opt`"
        )
    pick = str(cfg.get("pick"))
    model = run.model_config()
    if any(a.startswith("model.device=") for a in argv):
        model["device"] = cfg["model"]["device"]
    search = run.config
    tracking = dict(cfg.get("tracking") or {})
    if tracking.get("kind") == "mlflow" and run.tracking_uri and not has_secret_mask(run):
        tracking["uri"] = run.tracking_uri  # where the search's parent run is
    return {
        "model": model,
        # Best of a search that accepted nothing better than the full model is the full model:
        # say so rather than fine-tune it under the name of a pruned pick (pick=baseline asks).
        "drop": run.pruned_drop(pick, flag="pick="),
        "task": dict(search["task"]),
        "eval": dict(search["eval"]),
        "seed": search["seed"],
        "n_opt": search.get("n_opt"),
        "n_eval": search.get("n_eval"),
        "origin": {
            "kind": "search",
            "run_dir": str(run.run_dir),
            "pick": pick,
            "splits_fingerprint": run.summary.get("splits_fingerprint"),
        },
        "tracking": tracking,
        "parent_run_id": run.parent_run_id,
        "default_out": run.run_dir / f"finetune_{pick}",
    }


def has_secret_mask(run: FinishedRun) -> bool:
    """The run recorded its tracking URI with the password masked: the fine-tune's own
    `tracking.uri` (or $MLFLOW_TRACKING_URI) must say where to log then."""
    from tale_opt.credentials import MASKED

    return MASKED in str(run.tracking_uri)


def _search_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "task": dict(cfg["task"]),
        "eval": dict(cfg["eval"]),
        "seed": cfg["seed"],
        "n_opt": cfg.get("n_opt"),
        "n_eval": cfg.get("n_eval"),
        "tracking": cfg.get("tracking"),
    }


def _from_checkpoint(cfg: Mapping[str, Any]) -> dict[str, Any]:
    path = Path(str(cfg["checkpoint"])).expanduser()
    if not (path / "config.json").is_file():
        raise UsageError(
            f"checkpoint={cfg['checkpoint']} is not a model directory (no config.json); pass "
            "a directory written by `python -m tale_opt export`"
        )
    path = path.resolve()
    return {
        **_search_fields(cfg),
        "model": {**_model(cfg["model"]), "path": str(path)},
        "drop": DropSet(),
        "origin": {"kind": "checkpoint", "path": str(path)},
        "default_out": path.parent / f"{path.name}_finetuned_{cfg['task']['name']}",
    }


def _from_model(cfg: Mapping[str, Any]) -> dict[str, Any]:
    name = str(cfg["model"].get("name") or "model").replace("/", "_")
    folder = f"{name}_{cfg['task']['name']}_s{cfg['seed']}"
    return {
        **_search_fields(cfg),
        "model": _model(cfg["model"]),
        "drop": DropSet(),
        "origin": {"kind": "model"},
        "default_out": Path("outputs") / "finetune" / folder,
    }


def _clear(out: Path) -> None:
    """Delete a previous fine-tune's output directory (and nothing that is not one)."""
    from tale_opt.finetune.job import JOB_FILE

    if not out.exists():
        return
    if not (out / JOB_FILE).is_file():
        raise UsageError(
            f"overwrite=true would delete {out}, which is not a fine-tune's output directory "
            f"(no {JOB_FILE}); choose another out=DIR"
        )
    shutil.rmtree(out)
