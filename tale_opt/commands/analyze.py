"""`python -m tale_opt analyze mi [overrides]`: how much each decoder layer's output tells about
the answer, for a model and a pick of it (the TALE paper's mutual-information analysis).

    python -m tale_opt analyze mi                                   # SmolLM2, arc_easy_cloze
    python -m tale_opt analyze mi 'drop=[3,14]' n_examples=300      # full model and a drop set
    python -m tale_opt analyze mi run=outputs/2026-12-01/10-00-00_arc_easy_cloze pick=final
    python -m tale_opt analyze mi model=qwen25_05b task=arc_easy mi.seeds=5 mi.mine.steps=1500

Composes conf/analyze_mi.yaml (groups model, task, eval; a user's own configs through
``--config-dir`` or ``hydra.searchpath``). With run= the model, task, evaluator options, seed
and n_opt are the search's, so the analysis reads only questions of its held-out part; keys of
those given on the command line are refused (but model.device and eval.batch_size).
Writes mi.json, mi.md and mi.png into a fresh directory (outputs/analyze/<date>/<time>_mi_<task>,
or out=DIR).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt import validate
from tale_opt.commands import fail, is_debug
from tale_opt.commands.config import check_group_choices, command_flags, compose, source_from
from tale_opt.errors import UsageError, did_you_mean
from tale_opt.types import DropSet

ANALYSES = {"mi": "analyze_mi"}  # analysis -> its primary config
HINT = "run `python -m tale_opt analyze mi --cfg` to see the keys you can set"
OUT_ROOT = "outputs/analyze"
FROM_RUN = ("model", "task", "eval", "seed", "n_opt")
RUN_OVERRIDABLE = ("model.device", "eval.batch_size")
PICKS = ("best", "bsba", "ae_hm", "final")


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    debug = is_debug(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    try:
        if not argv or argv[0] not in ANALYSES:
            name = argv[0] if argv else ""
            raise UsageError(
                f"analyze needs the analysis to run, e.g. `analyze mi ...`, but got {name!r}."
                f"{did_you_mean(name, ANALYSES)}"
            )
        overrides, config_dir, show = command_flags(argv[1:], "analyze mi", HINT)
        overrides = [_quote_path(arg) for arg in overrides]
        source = source_from(overrides, config_dir, ANALYSES[argv[0]])
        source.hint = HINT
        if show:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(_compose(overrides, source)))
            return
        plan = build_plan(overrides, source)
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        path, table = analyze(plan)
    except UsageError as err:
        fail(err, debug)
    print(table)
    print(f"\nwrote {path}, mi.md and mi.png in {path.parent}")


def analyze(plan: Any) -> tuple[Path, str]:
    """Run `plan` and write its files; returns mi.json's path and the table."""
    from tale_opt.analysis.mi_files import write_mi
    from tale_opt.analysis.mi_job import run_mi
    from tale_opt.commands.run_dirs import make_fresh_dir

    record = run_mi(plan)
    out = make_fresh_dir(plan.out_dir) if plan.fresh else plan.out_dir
    return write_mi(record, out)


def _quote_path(arg: str) -> str:
    """`run=DIR` / `out=DIR` quoted for Hydra's parser (a sweep's job directory holds = and ,)."""
    key, _, value = arg.partition("=")
    if key in ("run", "out") and value and value[0] not in "'\"" and value != "null":
        return f"{key}='" + value.replace("'", "\\'") + "'"
    return arg


def _compose(overrides: Sequence[str], source: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(list(overrides), source), resolve=True)
    cfg.pop("hydra", None)
    return cfg


def build_plan(overrides: Sequence[str], source: Any = None,
               now: datetime.datetime | None = None) -> Any:  # fmt: skip
    """The `MiPlan` of a command line; reads a run directory but no weights and no data.

    Raises:
        UsageError: An unknown option or key, a bad value, a run that is not a finished
            single-task search, run= with its own keys given, or an out= holding an analysis.
    """
    from tale_opt.analysis.mi import MiSettings
    from tale_opt.analysis.mi_files import RECORD
    from tale_opt.analysis.mi_job import MiPlan

    source = source or source_from(overrides, None, ANALYSES["mi"])
    check_group_choices(overrides, source)
    cfg = _compose(overrides, source)
    settings = MiSettings.from_mapping(cfg.get("mi") or {})
    n_examples = validate.integer(cfg.get("n_examples"), "n_examples", minimum=2)
    drop = _drop(cfg.get("drop"))
    if cfg.get("run"):
        setting = _from_run(cfg, overrides, bool(drop))
    else:
        if "pick" in {a.lstrip("+~").partition("=")[0] for a in overrides}:
            raise UsageError("pick= chooses among a search's configurations; give run=DIR too")
        setting = _from_config(cfg, overrides, drop)
    out, fresh = _out(cfg, setting["task"].get("name"), now)
    if not fresh and (out / RECORD).exists():
        raise UsageError(f"out={cfg['out']} already holds an analysis ({RECORD}); choose another "
                         "out=DIR, or leave out= unset for a fresh directory")  # fmt: skip
    return MiPlan(
        model=setting["model"], model_name=setting["model_name"], task=setting["task"],
        eval=setting["eval"], seed=validate.integer(setting["seed"], "seed", minimum=0),
        n_opt=validate.integer(setting["n_opt"], "n_opt", minimum=1, allow_none=True),
        n_examples=n_examples, settings=settings, out_dir=out, fresh=fresh,
        drop=setting["drop"], drop_label=setting["drop_label"], run=setting.get("run"),
    )  # fmt: skip


def _drop(value: Any) -> DropSet:
    layers = value if isinstance(value, list) else [] if value is None else [value]
    for layer in layers:
        validate.integer(layer, "drop[]", minimum=0)
    return DropSet.of(layers)


def _from_config(cfg: Mapping[str, Any], overrides: Sequence[str], drop: DropSet) -> dict:
    from tale_opt.model.loading import ModelSpec

    model = {k: v for k, v in dict(cfg["model"]).items() if k != "name"}
    ModelSpec(**model)  # checks the values now, before any data is read
    given = {a.lstrip("+~").partition("=")[0] for a in overrides}
    name = cfg["model"].get("name")
    if "model.path" in given and "model.name" not in given:
        name = None  # another checkpoint under the default config's name would mislead
    return {
        "model": model, "model_name": str(name or model["path"]), "task": cfg["task"],
        "eval": cfg["eval"], "seed": cfg["seed"], "n_opt": cfg.get("n_opt"), "drop": drop,
        "drop_label": f"drop {drop.key}" if drop else "",
    }  # fmt: skip


def _from_run(cfg: Mapping[str, Any], overrides: Sequence[str], has_drop: bool) -> dict:
    from tale_opt.commands.runs import FinishedRun

    if has_drop:
        raise UsageError("drop= removes layers of model=..., run= analyzes a search's pick; "
                         "give one")  # fmt: skip
    for arg in overrides:
        key = arg.lstrip("+~").partition("=")[0]
        if key.split(".")[0] in FROM_RUN and key not in RUN_OVERRIDABLE:
            raise UsageError(
                f"{key} comes from the search in run={cfg['run']} (its model, task and split); "
                f"drop {arg!r}, or analyze without run= to choose it"
            )
    run = FinishedRun.open(str(cfg["run"]))
    run.require_single_task("analyze mi")
    if run.config is None:
        raise UsageError(f"{run.run_dir} has no .hydra/config.yaml, so its task and splits are "
                         "unknown; pass a directory written by `python -m tale_opt`")  # fmt: skip
    pick = str(cfg.get("pick"))
    if pick not in PICKS:
        raise UsageError(f"pick must be one of {', '.join(PICKS)} (the full model is always "
                         f"analyzed), but got {pick!r}.{did_you_mean(pick, PICKS)}")  # fmt: skip
    search = run.config
    model = run.model_config()
    given = {a.lstrip("+~").partition("=")[0] for a in overrides}
    if "model.device" in given:
        model["device"] = cfg["model"]["device"]
    evaluation = dict(search["eval"])
    if "eval.batch_size" in given:
        evaluation["batch_size"] = cfg["eval"]["batch_size"]
    drop = run.drop(pick)
    if not drop:
        log_line = f"{run.run_dir.name}'s {pick} pick drops no layer: only the full model"
        logging.getLogger("tale_opt").warning(log_line)
    name = (search.get("model") or {}).get("name") or run.summary.get("model") or model["path"]
    return {
        "model": model, "model_name": str(name), "task": search["task"], "eval": evaluation,
        "seed": search["seed"], "n_opt": search.get("n_opt"), "drop": drop,
        "drop_label": f"TALE {pick} (drop {drop.key})", "run": str(run.run_dir),
    }  # fmt: skip


def _out(cfg: Mapping[str, Any], task: Any, now: datetime.datetime | None) -> tuple[Path, bool]:
    if cfg.get("out"):
        return Path(str(cfg["out"])).expanduser().resolve(), False
    now = now or datetime.datetime.now()
    return Path(OUT_ROOT) / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S}_mi_{task}", True
