"""Plan of one search: check the config, draw the splits, build the searcher, reach the storage;
`open_search_study` opens the study once the model has loaded.

Everything that can be checked without model weights is checked here, before any are loaded:
the top-level values, the evaluation options, and the searcher's options, which are bound to
its constructor's signature and checked against its annotations first (a name or a type is
wrong whatever the model), then the searcher is built once, with the model's real layer count.
"""

from __future__ import annotations

import inspect
import logging
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import searchers
from tale_opt import validate
from tale_opt.coordination.racing import PrunerSettings, check_searcher
from tale_opt.coordination.storage import StorageConfig, open_storage
from tale_opt.coordination.study import (
    check_study,
    default_study_name,
    name_objective,
    open_study,
)
from tale_opt.errors import ConfigValueError, UsageError, did_you_mean
from tale_opt.pipeline import multitask
from tale_opt.pipeline.candidates import (
    check_eval_options,
    load_task_and_splits,
    model_spec,
    probe_config,
    search_fingerprint,
    study_config,
)
from tale_opt.types import TASK_ACCURACY

log = logging.getLogger("tale_opt")

# Used when the config has no storage node (a plain dict from a test or a script).
DEFAULT_STORAGE = {"kind": "sqlite", "path": "outputs/tale_opt.db"}
# Searcher options whose lower bound holds whatever the layer count, so they are checked
# before the model is read; the searcher checks the rest (max_drop <= num_layers - min_keep)
# once it is built with the real layer count.
LAYER_FREE_MINIMUMS = {"max_drop": 1, "n_drop": 1, "min_keep": 1}


@dataclass
class SearchPlan:
    """Everything a search needs before any weights are loaded."""

    cfg: Mapping[str, Any]
    config: dict[str, Any]  # study_config: what workers rebuild the evaluator from
    task: Any
    splits: Any
    spec: Any
    searcher: Any
    num_layers: int
    storage: StorageConfig
    workers: int
    threads: int | None
    lam: float
    latency: Any  # LatencySettings, or None to skip measuring latency
    study_name: str
    fingerprint: dict[str, Any]
    optuna_storage: Any  # the opened storage: reachable, but no study in it yet
    pruner: PrunerSettings = PrunerSettings()
    study: Any = None  # set by `open_search_study`, once the model has loaded
    # A multi-task search: its tasks (`multitask.SuiteTask`); `task` and `splits` are None.
    suite: list[Any] | None = None


@dataclass
class CheckedConfig:
    """The values of a search config that need no model, checked."""

    seed: int
    workers: int
    threads: int | None
    lam: float
    storage: StorageConfig
    latency: Any  # LatencySettings or None
    config: dict[str, Any]  # study_config, probe from the searcher's node until it is built
    pruner: PrunerSettings


def check_config(cfg: Mapping[str, Any]) -> CheckedConfig:
    """Every check of a search config that reads no model or data file.

    Raises:
        UsageError: The first bad value, on one line.
    """
    seed = validate.integer(cfg.get("seed"), "seed", minimum=0)
    validate.integer(cfg.get("n_opt"), "n_opt", minimum=1, allow_none=True)
    validate.integer(cfg.get("n_eval"), "n_eval", minimum=1, allow_none=True)
    workers = validate.integer(cfg.get("workers", 0), "workers", minimum=0)
    validate.boolean(cfg.get("coordinator_evaluates", True), "coordinator_evaluates")
    threads = validate.integer(
        cfg.get("worker_threads"), "worker_threads", minimum=1, allow_none=True
    )
    lam = validate.number(cfg.get("ae_hm_lambda", 1.0), "ae_hm_lambda", above=0)
    storage = StorageConfig.from_mapping(cfg.get("storage") or DEFAULT_STORAGE)
    latency = _latency_settings(cfg.get("latency"))
    check_searcher_options(cfg["searcher"])
    check_retired_eval_keys(cfg.get("eval") or {})
    pruner = PrunerSettings.from_mapping(cfg.get("pruner"))
    config = study_config(cfg)
    check_eval_options(config)
    if multitask.is_multitask(cfg):
        pruner = multitask.suite_pruner(pruner)  # refuses racing; exact runs as none
        config = multitask.suite_study_config(cfg, config)
    return CheckedConfig(seed, workers, threads, lam, storage, latency, config, pruner)


def check_retired_eval_keys(node: Mapping[str, Any]) -> None:
    """Refuse ``eval.early_stop``, which the `pruner` group replaced.

    Raises:
        UsageError: The key is set, with the pruner that does what its value did.
    """
    if "early_stop" in node:
        instead = "pruner=none" if node["early_stop"] is False else "pruner=exact (the default)"
        raise UsageError(
            f"eval.early_stop was replaced by the pruner group: use {instead} instead of "
            f"eval.early_stop={node['early_stop']!r}"
        )


def plan_search(cfg: Mapping[str, Any]) -> SearchPlan:
    """Validate `cfg`, draw the splits, build the searcher and reach the storage; no study is
    created yet (see `open_search_study`).

    Raises:
        UsageError: Any bad value, unreachable storage, or a study of another search.
    """
    from tale_opt.model.loading import describe_model

    if multitask.is_multitask(cfg):
        cfg = multitask.suite_search_config(cfg)
    checked = check_config(cfg)
    config, storage, seed = checked.config, checked.storage, checked.seed
    suite = task = splits = None
    if "tasks" in config:
        suite = multitask.load_suite(config)
    else:
        task, splits = load_task_and_splits(config)
    spec = model_spec(config)
    identity = describe_model(spec)  # config only: a coordinator with workers loads no weights
    num_layers = identity["num_layers"]
    searcher = build_searcher(cfg["searcher"], num_layers)
    check_searcher(checked.pruner, searcher)
    config.update(probe_config(searcher))
    if suite is None:
        fingerprint = search_fingerprint(config, identity, task, splits)
    else:
        multitask.check_searcher(searcher)
        fingerprint = multitask.suite_fingerprint(config, identity, suite)
    label = task.name if suite is None else config["task"]["name"]
    name = cfg.get("study") or default_study_name(
        [label, config["model_name"], searcher.name, f"s{seed}"], fingerprint
    )
    optuna_storage = open_storage(storage)
    check_study(optuna_storage, str(name), fingerprint)
    return SearchPlan(
        cfg, config, task, splits, spec, searcher, num_layers, storage, checked.workers,
        checked.threads, checked.lam, checked.latency, str(name), fingerprint, optuna_storage,
        checked.pruner, suite=suite,
    )  # fmt: skip


def open_search_study(plan: SearchPlan) -> None:
    """Open (or resume) the search's study: only once everything else is known to work, so a
    bad model or storage never leaves an empty study behind.

    Raises:
        UsageError: The study name belongs to another search (its fingerprint differs).
    """
    plan.study = open_study(plan.optuna_storage, plan.study_name, plan.fingerprint, plan.config)
    name_objective(plan.study, score_probe(plan.searcher))
    parts = [(plan.task, plan.splits)] if plan.suite is None else [
        (t.task, t.splits) for t in plan.suite
    ]  # fmt: skip
    sizes = "; ".join(
        f"{task.name}: {len(splits.optimization)} optimization / {len(splits.evaluation)} "
        "held-out examples"
        for task, splits in parts
    )
    log.info(
        "%s: %d decoder layers; %s; study %s in %s",
        plan.config["model_name"], plan.num_layers, sizes, plan.study_name,
        plan.storage.describe(),
    )  # fmt: skip
    log.info(
        "more workers can join from any machine that reaches the storage: %s",
        plan.storage.join_command(plan.study_name),
    )


def score_probe(searcher: searchers.Searcher) -> str:
    """What the trials' values are: a searcher that ranks by perplexity round after round
    (SLEB, tale_ppl) scores -perplexity; every other scores task accuracy (a one-shot
    ranker probes the full model once, then scores its drop sets by accuracy)."""
    if isinstance(searcher, searchers.OneShotSearcher):
        return TASK_ACCURACY
    return searcher.probe


def searcher_class(name: Any) -> type:
    cls = searchers.REGISTRY.get(name)
    if cls is None:
        hint = did_you_mean(str(name), searchers.REGISTRY)
        raise UsageError(f"unknown searcher {name!r}.{hint}")
    return cls


def check_searcher_options(node: Mapping[str, Any]) -> None:
    """Bind the searcher node's keys to its constructor and check each value's type.

    Raises:
        UsageError: An unknown searcher or option (with the closest known one), or a value of
            the wrong type or below its layer-count-free bound, named as ``searcher.KEY``.
    """
    options = dict(node)
    name = options.pop("name", None)
    cls = searcher_class(name)
    params = {
        p.name: p
        for p in inspect.signature(cls).parameters.values()
        if p.name != "num_layers" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for key in options:
        if key not in params:
            raise ConfigValueError(
                f"searcher '{name}' has no option '{key}'.{did_you_mean(key, params)}"
            )
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations that do not evaluate at runtime: the names are checked
        hints = {}
    for key, value in options.items():
        _check_type(value, hints.get(key), f"searcher.{key}", LAYER_FREE_MINIMUMS.get(key))


def _check_type(value: Any, hint: Any, key: str, minimum: int | None) -> None:
    """`value` against a constructor annotation: int, float, bool, str, optional versions of
    them, an iterable of ints, or a mapping. Other annotations are left to the searcher."""
    if hint is None or hint is Any:
        return
    allow_none = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        allow_none = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            return
        hint = args[0]
    if value is None and allow_none:
        return
    origin = typing.get_origin(hint) or hint
    if hint is bool:
        validate.boolean(value, key)
    elif hint is int:
        validate.integer(value, key, minimum=minimum, allow_none=allow_none)
    elif hint is float:
        validate.number(value, key, allow_none=allow_none)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigValueError(f"{key} must be a string, but got {value!r}")
    elif origin in (Iterable, Sequence, list, tuple):
        if isinstance(value, str | Mapping) or not isinstance(value, Iterable):
            raise ConfigValueError(f"{key} must be a list, e.g. [0, 1], but got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (None,)
        if item is int:
            for element in value:
                validate.integer(element, f"{key}[]", minimum=0)
    elif origin in (Mapping, dict) and not isinstance(value, Mapping):
        raise ConfigValueError(f"{key} must be a mapping of keys to values, but got {value!r}")


def build_searcher(node: Mapping[str, Any], num_layers: int) -> searchers.Searcher:
    """The searcher of a config node, for a model with `num_layers` decoder layers (the node's
    keys other than `name` are its constructor's arguments).

    Raises:
        UsageError: See `check_searcher_options`, or the searcher refuses the combination.
    """
    check_searcher_options(node)
    options = dict(node)
    name = options.pop("name")
    try:
        return searcher_class(name)(num_layers, **options)
    except (TypeError, ValueError) as err:
        raise UsageError(f"searcher '{name}': {err}") from err


def _latency_settings(node: Mapping[str, Any] | None) -> Any:
    from tale_opt.cost.latency import LatencySettings

    if node is None:
        return None
    try:
        return LatencySettings.from_mapping(node)
    except (TypeError, ValueError) as err:
        raise UsageError(f"latency: {err} (latency=null skips measuring)") from err
