"""`python -m tale_opt evaluate [overrides]`: score a model, a drop set of it or a search's
picks on the held-out split of one or more tasks, with intervals, per-example predictions and
the paired test of every drop set against the full model.

    python -m tale_opt evaluate                                    # SmolLM2 on arc_easy_cloze
    python -m tale_opt evaluate model=qwen25_05b tasks=[arc_easy_cloze,boolq] task.fewshot.k=5
    python -m tale_opt evaluate drop=[3,14] eval.scoring=loglik    # vs the full model
    python -m tale_opt evaluate model.path=pruned/ task=boolq      # an exported checkpoint
    python -m tale_opt evaluate run=outputs/2026-12-01/10-00-00_arc_easy_cloze pick=final
    python -m tale_opt evaluate runs=[dirA,dirB] tasks=[arc_easy_cloze,boolq,winogrande]
    python -m tale_opt evaluate --config-dir=my_conf task=my_task

Composes conf/evaluate.yaml (groups model, task, eval; a user's own configs through
``--config-dir`` or ``hydra.searchpath``). With run=/runs= the model is the search's, and each
task a search ran on is scored with that search's task config, evaluator options, seed and
split sizes, so the held-out split is the one it never saw (keys given on the command line
still win, e.g. task.fewshot.k=5); other tasks are scored as a default search on them would be,
with the first run's seed. A search's optimization split is refused unless
allow_optimization_split=true.
"""

from __future__ import annotations

import copy
import datetime
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt import validate
from tale_opt.commands import fail, is_debug
from tale_opt.commands.config import (
    ConfigSource,
    check_group_choices,
    command_flags,
    compose,
    group_options,
    repository,
    source_from,
)
from tale_opt.commands.runs import PICKS, FinishedRun
from tale_opt.errors import UsageError, did_you_mean
from tale_opt.evaluate.plan import (
    RECORD,
    SPLITS,
    Configuration,
    EvaluationPlan,
    SearchedSplit,
    TaskSetting,
)
from tale_opt.types import DropSet

CONFIG_NAME = "evaluate"
HINT = "run `python -m tale_opt evaluate --cfg` to see the keys you can set"
# With run=/runs= the model is the search's: layer numbers mean nothing in another model.
RUN_OVERRIDABLE = ("model.device",)  # ... except where it runs
# Keys whose value is a list: `drop=3,7` would be a Hydra sweep, which evaluate does not run.
LIST_KEYS = {"tasks": "tasks", "drop": "drop", "pick": "pick", "runs": "runs", "task": "tasks"}
PICK_LABELS = {"best": "Best", "bsba": "BSBA", "ae_hm": "AE-HM", "final": "Final",
               "baseline": "Baseline"}  # fmt: skip
OUT_ROOT = "outputs/evaluate"
PATH_KEYS = ("run", "out")  # directories, quoted for Hydra (see `_quote_paths`)


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    debug = is_debug(argv)
    try:
        overrides, config_dir, show = _flags(argv)
        overrides = _quote_paths(overrides)
        source = _source(overrides, config_dir)
        if show:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(_compose(overrides, source)))
            return
        plan = build_plan(overrides, source)
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        path, text = evaluate(plan)
    except UsageError as err:
        fail(err, debug)
    print(text)
    print(f"\nwrote {path}, evaluation.md and per-example predictions in {path.parent}")


def evaluate(plan: EvaluationPlan) -> tuple[Path, str]:
    """Run `plan` and write its files; returns evaluation.json's path and the printed text."""
    from tale_opt.commands.run_dirs import make_fresh_dir
    from tale_opt.evaluate.outputs import write_evaluation
    from tale_opt.evaluate.run import run_evaluation

    evaluation = run_evaluation(plan)
    # The directory is made only now: an evaluation that fails leaves none behind.
    out = make_fresh_dir(plan.out_dir) if plan.fresh else plan.out_dir
    return write_evaluation(evaluation, out)


def _flags(argv: Sequence[str]) -> tuple[list[str], str | None, bool]:
    """(overrides, --config-dir, --cfg) of a command line."""
    return command_flags(argv, "evaluate", HINT)


def _source(overrides: Sequence[str], config_dir: str | None = None) -> ConfigSource:
    source = source_from(overrides, config_dir, CONFIG_NAME)
    source.hint = HINT
    return source


def _compose(overrides: Sequence[str], source: ConfigSource) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(list(overrides), source), resolve=True)
    cfg.pop("hydra", None)
    return cfg


def _given(overrides: Sequence[str]) -> set[str]:
    """The keys a command line sets (``model.device``, ``seed``, ``task``, ...)."""
    return {a.lstrip("+~").partition("=")[0] for a in overrides if "=" in a}


def _quote_paths(overrides: Sequence[str]) -> list[str]:
    """`run=DIR` and `out=DIR` with DIR quoted for Hydra's override parser: a sweep's job
    directory (``0_task=boolq,seed=1``) holds characters that it would otherwise parse.

    Raises:
        UsageError: A `runs` list with such a path unquoted (its commas are ambiguous).
    """
    quoted = []
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key in PATH_KEYS and value and value[0] not in "'\"[" and value != "null":
            arg = f"{key}='" + value.replace("'", "\\'") + "'"
        elif key == "runs" and "=" in value and not re.search(r"[\[,]\s*['\"]", value):
            raise UsageError(
                f"{arg}: quote each directory whose name holds '=' or ',' (a sweep's job "
                "directories do): runs=['DIR_A','DIR_B']"
            )
        quoted.append(arg)
    return quoted


def _check_lists(overrides: Sequence[str]) -> None:
    """`drop=3,7` and `task=a,b` are Hydra sweeps; evaluate takes lists in brackets."""
    for arg in overrides:
        key, _, value = arg.lstrip("+").partition("=")
        if key in LIST_KEYS and "," in value and not value.strip().startswith("["):
            name = LIST_KEYS[key]
            raise UsageError(
                f"{arg}: give a list in brackets, {name}=[{value}] (evaluate runs no sweep)"
            )


def build_plan(overrides: Sequence[str], source: ConfigSource | None = None,
               now: datetime.datetime | None = None) -> EvaluationPlan:  # fmt: skip
    """The `EvaluationPlan` of a command line's overrides; reads run directories but no
    model weights and no task data.

    Raises:
        UsageError: An unknown option or key, a bad value, a run directory that is not a
            finished search's, search settings given together with run=, or an out= that
            already holds an evaluation.
    """
    overrides = _quote_paths(overrides)
    source = source or _source(overrides)
    _check_lists(overrides)
    given = _given(overrides)
    if {"task", "tasks"} <= given:
        raise UsageError("give task=NAME or tasks=[A,B], not both")
    check_group_choices(overrides, source)
    cfg = _compose(overrides, source)
    runs = _open_runs(cfg)
    if runs and not {"task", "tasks"} & given:
        # The searched task's own config, so task.* keys given here apply to it.
        name = str(runs[0].config["task"].get("name"))
        if name in _task_options(source):
            cfg = _compose([*overrides, f"task={name}"], source)
    baseline = validate.boolean(cfg.get("baseline"), "baseline")
    allow = validate.boolean(cfg.get("allow_optimization_split"), "allow_optimization_split")
    split = cfg.get("split")
    if split not in SPLITS:
        raise UsageError(f"split must be heldout or optimization, but got {split!r}")
    drop = _drop(cfg.get("drop"))
    if runs:
        _refuse_search_keys(overrides, given, bool(drop))
        model, model_name = _runs_model(runs, cfg, given)
        configurations = _picks(runs, cfg.get("pick"), baseline)
    else:
        if "pick" in given:
            raise UsageError("pick= chooses among a search's configurations; give run=DIR too")
        model, model_name = _model(cfg, given)
        configurations = [Configuration(f"drop {drop.key}", drop)] if drop else []
    tasks = _task_settings(cfg, overrides, source, runs, given)
    out, fresh = _out(cfg, [t.name for t in tasks], now)
    return EvaluationPlan(model, model_name, tasks, configurations, baseline, str(split),
                          allow, out, fresh)  # fmt: skip


def _task_options(source: ConfigSource) -> list[str]:
    with repository(source) as loader:
        return group_options(loader, source, "task")


def _drop(value: Any) -> DropSet:
    if value is None:
        return DropSet()
    layers = value if isinstance(value, list) else [value]
    for layer in layers:
        validate.integer(layer, "drop[]", minimum=0)
    return DropSet.of(layers)


def _list(value: Any, key: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise UsageError(f"{key} must be a name or a list of names, e.g. {key}=[a,b], "
                         f"but got {value!r}")  # fmt: skip
    return items


def _open_runs(cfg: Mapping[str, Any]) -> list[FinishedRun]:
    """The finished searches of run= / runs= (none without them), one model between them.

    Raises:
        UsageError: Both keys, a directory that is not a finished search, one without its
            config, or searches of different models.
    """
    if cfg.get("run") and cfg.get("runs"):
        raise UsageError("give run=DIR or runs=[DIR,...], not both")
    dirs = [cfg["run"]] if cfg.get("run") else []
    if cfg.get("runs"):
        dirs = _list(cfg["runs"], "runs")
    runs = []
    for directory in dirs:
        run = FinishedRun.open(str(directory))
        run.require_single_task("evaluate")
        if run.config is None:
            raise UsageError(
                f"{run.run_dir} has no .hydra/config.yaml, so its task and splits are unknown; "
                "pass a directory written by `python -m tale_opt`"
            )
        runs.append(run)
    first = runs[0] if runs else None
    for run in runs[1:]:
        if _without_device(run.model_config()) != _without_device(first.model_config()):
            raise UsageError(
                f"{run.run_dir} searched {run.model_config().get('path')!r} but {first.run_dir} "
                f"searched {first.model_config().get('path')!r}; runs= compares picks of one "
                "model (against its Baseline): evaluate the others separately"
            )
    return runs


def _without_device(model: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model.items() if k != "device"}


def _refuse_search_keys(overrides: Sequence[str], given: set[str], has_drop: bool) -> None:
    if has_drop:
        raise UsageError(
            "drop= removes layers of model=..., run=/runs= scores a search's picks; give one"
        )
    for arg in overrides:
        key = arg.lstrip("+~").partition("=")[0]
        if key.split(".")[0] == "model" and key not in RUN_OVERRIDABLE:
            raise UsageError(
                f"{key} comes from the search in run=/runs= (its picks are layers of that "
                f"model); drop {arg!r}, or evaluate without run= to choose the model"
            )


def _model(cfg: Mapping[str, Any], given: set[str]) -> tuple[dict[str, Any], str]:
    from tale_opt.model.loading import ModelSpec

    model = {k: v for k, v in dict(cfg["model"]).items() if k != "name"}
    ModelSpec(**model)  # checks the values now, before any task data is read
    name = cfg["model"].get("name")
    if "model.path" in given and "model.name" not in given:
        name = None  # another checkpoint under the default config's name would mislead
    return model, str(name or model["path"])


def _runs_model(
    runs: Sequence[FinishedRun], cfg: Mapping[str, Any], given: set[str]
) -> tuple[dict[str, Any], str]:
    model = runs[0].model_config()
    if "model.device" in given:
        model["device"] = cfg["model"]["device"]
    name = (runs[0].config.get("model") or {}).get("name") or runs[0].summary.get("model")
    return model, str(name or model.get("path"))


def _picks(runs: Sequence[FinishedRun], value: Any, baseline: bool) -> list[Configuration]:
    """One configuration per run and pick, labelled by pick (and by the run's task when
    several runs are compared); with the Baseline scored, a pick that drops nothing is it."""
    picks = _list(value, "pick")
    for pick in picks:
        if pick not in PICKS:
            raise UsageError(f"unknown pick {pick!r}.{did_you_mean(pick, PICKS)}")
    tasks = [str(run.config["task"].get("name")) for run in runs]
    configurations = []
    for run, task in zip(runs, tasks, strict=True):
        for pick in picks:
            drop = run.drop(pick)
            if baseline and not drop:
                continue
            label = PICK_LABELS[pick]
            if len(runs) > 1:
                label = f"{task} {label}"
                if tasks.count(task) > 1:
                    label += f" ({run.run_dir.name})"
            configurations.append(Configuration(label, drop, str(run.run_dir), pick, task))
    return configurations


def _task_settings(
    cfg: Mapping[str, Any],
    overrides: Sequence[str],
    source: ConfigSource,
    runs: Sequence[FinishedRun],
    given: set[str],
) -> list[TaskSetting]:
    """Per task to score, its config, evaluator options and split settings."""
    searched: dict[str, list[FinishedRun]] = {}
    for run in runs:
        searched.setdefault(str(run.config["task"].get("name")), []).append(run)
    default_seed = cfg["seed"] if "seed" in given or not runs else runs[0].config["seed"]
    settings = []
    for name, composed in _requested_tasks(cfg, overrides, source, searched):
        if name in searched:
            settings.append(_searched_setting(searched[name], cfg, given))
        else:
            settings.append(
                TaskSetting(
                    task=composed["task"],
                    eval=composed["eval"],
                    seed=default_seed,
                    n_opt=composed.get("n_opt"),
                    n_eval=composed.get("n_eval"),
                )  # fmt: skip
            )
    names = [s.name for s in settings]
    for name in names:
        if names.count(name) > 1:
            raise UsageError(f"task {name!r} is listed twice; list each task once")
    return settings


def _requested_tasks(
    cfg: Mapping[str, Any],
    overrides: Sequence[str],
    source: ConfigSource,
    searched: Mapping[str, Sequence[FinishedRun]],
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(task name, composed config with that task) per task to score; the composed config is
    not read for a task a run searched (the run's own config is)."""
    if cfg.get("tasks") is not None:
        names = _list(cfg["tasks"], "tasks")
        others = [n for n in names if n not in searched]
        check_group_choices([f"task={','.join(others)}"] if others else [], source)
        for name in names:
            composed = cfg if name in searched else _compose([*overrides, f"task={name}"], source)
            yield name, composed
    elif searched and not any(a.lstrip("+").startswith("task=") for a in overrides):
        for name in searched:
            yield name, cfg
    else:
        yield str(cfg["task"].get("name")), cfg


def _searched_setting(
    runs: Sequence[FinishedRun], cfg: Mapping[str, Any], given: set[str]
) -> TaskSetting:
    """The first search's settings of its task, with the keys given on the command line."""
    search = runs[0].config
    setting = TaskSetting(
        task=_with_given(search["task"], cfg["task"], "task", given),
        eval=_with_given(search["eval"], cfg["eval"], "eval", given),
        seed=cfg["seed"] if "seed" in given else search["seed"],
        n_opt=cfg.get("n_opt") if "n_opt" in given else search.get("n_opt"),
        n_eval=cfg.get("n_eval") if "n_eval" in given else search.get("n_eval"),
    )
    for run in runs:
        setting.searched.append(
            SearchedSplit(
                run_dir=str(run.run_dir),
                task=run.config["task"],
                seed=run.config["seed"],
                n_opt=run.config.get("n_opt"),
                n_eval=run.config.get("n_eval"),
                fingerprint=run.summary.get("splits_fingerprint"),
            )  # fmt: skip
        )
    return setting


def _with_given(
    node: Mapping[str, Any], composed: Mapping[str, Any], prefix: str, given: set[str]
) -> dict[str, Any]:
    """`node` (a search's) with every `prefix.KEY` the command line set taken from
    `composed` (the command line's own composition)."""
    result = copy.deepcopy(dict(node))
    for key in sorted(given):
        if not key.startswith(f"{prefix}."):
            continue
        path = key.split(".")[1:]
        value: Any = composed
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        target = result
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = copy.deepcopy(value)
    return result


def _out(
    cfg: Mapping[str, Any], names: Sequence[str], now: datetime.datetime | None
) -> tuple[Path, bool]:
    """(directory, whether it is a prefix for a fresh one)."""
    if cfg.get("out"):
        path = Path(str(cfg["out"])).expanduser()
        if (path / RECORD).exists():
            raise UsageError(
                f"out={cfg['out']} already holds an evaluation ({RECORD}); choose another "
                "out=DIR, or leave out= unset for a fresh directory"
            )
        return path.resolve(), False
    now = now or datetime.datetime.now()
    label = "+".join(names)[:80]
    return Path(OUT_ROOT) / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S}_{label}", True
