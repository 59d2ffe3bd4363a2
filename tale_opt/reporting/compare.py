"""Side-by-side comparison of several searches (criteria, ablations, seeds, models) read from
MLflow: the data behind `compare_tables` and `compare_plot`.

Input: parent runs as `RunRecord`s (tale_opt.tracking.query), whose metrics and tags were
written by `Tracker.log_summary` (names in tale_opt.tracking.records; runs logged before
metrics were named by split are read too). Each run becomes a `SearchView`;
`compare_searches` groups them by every setting except the seed (model, task, searcher,
epsilon, n_opt, max_drop / n_drop, scoring and any other config key that differs), keeps each
seed of a group once (a rerun replaces it) and sets aside the searches without a result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tale_opt.stats import accuracy_interval
from tale_opt.tracking import records as rec
from tale_opt.tracking.records import PICKS

COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"
FINISHED = "FINISHED"

# The settings an ablation varies, shown as columns: (name, tag, config keys), where the tag
# (parent runs since the tags existed) wins over the logged config params.
SETTINGS = (
    ("epsilon", "epsilon", ("searcher.epsilon",)),
    ("n_opt", "n_opt", ("n_opt", "task.n_opt")),
    ("max_drop", "max_drop", ("searcher.max_drop",)),
    ("n_drop", "n_drop", ("searcher.n_drop", "n_drop")),
    ("scoring", "scoring", ("eval.scoring",)),
)
_SEED_KEYS = ("seed", "searcher.seed")
# Config keys that say where or how a search ran, not what it found: no group of their own.
_NOT_SETTINGS = (*rec.WHERE_KEYS, "worker_threads", "latency.")
# Config keys already shown elsewhere (the group's title and setting columns).
_SHOWN_KEYS = frozenset(
    {"model.name", "model.path", "task.name", "searcher.name"}
    | {k for _, _, keys in SETTINGS for k in keys}
)


@dataclass(frozen=True)
class PickView:
    """One reported configuration of a search."""

    n_dropped: int | None
    drop: str | None
    opt_accuracy: float | None
    heldout_accuracy: float | None
    speedup: float | None
    speedup_measured: bool
    tflops_per_example: float | None  # of evaluating the held-out split
    heldout_interval: tuple[float, float] | None = None  # 95% Wilson
    opt_interval: tuple[float, float] | None = None  # 95% Wilson
    # Exact McNemar test against Baseline on the held-out split: (only pick, only Baseline, p)
    heldout_test: tuple[int, int, float] | None = None
    heldout_counts: tuple[int, int] | None = None  # (correct, examples)


@dataclass(frozen=True)
class SearchView:
    """What the comparison shows of one search (one parent run)."""

    run_id: str
    model: str
    task: str
    searcher: str
    seed: str
    num_layers: int | None
    picks: dict[str, PickView]
    trajectory: list[tuple[int, float]] = field(default_factory=list)
    status: str = FINISHED  # the parent run's MLflow status
    settings: dict[str, str] = field(default_factory=dict)  # SETTINGS that are set
    config: dict[str, str] = field(default_factory=dict)  # every grouping config key
    start_time: int = 0

    @property
    def label(self) -> str:
        return f"{self.searcher} · {self.model} · {self.task} · s{self.seed}"

    @property
    def search(self) -> str:
        return f"{self.searcher} · {self.model} · {self.task}"

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @property
    def has_result(self) -> bool:
        """Whether the search got as far as its summary: an interrupted (or still running)
        search has a parent run but no picks, only a row of dashes to show."""
        return any(p.n_dropped is not None or p.heldout_accuracy is not None
                   for p in self.picks.values())  # fmt: skip

    @property
    def group_key(self) -> tuple:
        """Every setting but the seed."""
        return (
            self.model,
            self.task,
            self.searcher,
            tuple(sorted(rec.comparable_settings(self.settings).items())),
            tuple(sorted(self.config.items())),
        )


def _first(mapping: Mapping[str, Any], *keys: str, default: str = "?") -> str:
    for key in keys:
        if mapping.get(key) not in (None, "", "null"):
            return str(mapping[key])
    return default


def _section(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """The metrics under `prefix` (e.g. ``best.heldout.``), without it."""
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def _count(value: Any) -> int | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return int(value)


def _pick_view(
    metrics: Mapping[str, float], tags: Mapping[str, str], pick: str, accuracy: bool
) -> PickView:
    measured = metrics.get(f"{pick}.speedup_measured")
    n_dropped = metrics.get(f"{pick}.n_dropped")
    held = _section(metrics, f"{pick}.heldout.")
    opt = _section(metrics, f"{pick}.opt.")
    if not opt and accuracy:  # logged before metrics were named by split
        opt = {**_section(metrics, f"{pick}."), "accuracy": metrics.get(f"{pick}.score")}
    tflops = held.get("tflops_per_example")
    n_eval = metrics.get("n_eval")
    if tflops is None and metrics.get(f"{pick}.tflops") is not None and n_eval:
        tflops = metrics[f"{pick}.tflops"] / n_eval  # older runs: the held-out total
    test = None
    if all(f"vs_baseline.{k}" in held for k in ("only_pick", "only_baseline", "p_value")):
        test = (
            int(held["vs_baseline.only_pick"]),
            int(held["vs_baseline.only_baseline"]),
            float(held["vs_baseline.p_value"]),
        )
    correct, examples = _count(held.get("n_correct")), _count(held.get("n_examples"))
    return PickView(
        n_dropped=None if n_dropped is None else int(n_dropped),
        drop=tags.get(f"tale_opt.{pick}.drop"),
        opt_accuracy=opt.get("accuracy"),
        heldout_accuracy=held.get("accuracy"),
        speedup=measured if measured is not None else metrics.get(f"{pick}.speedup_estimate"),
        speedup_measured=measured is not None,
        tflops_per_example=tflops,
        heldout_interval=accuracy_interval(held),
        opt_interval=accuracy_interval(opt) if opt.get("accuracy") is not None else None,
        heldout_test=test,
        heldout_counts=None if correct is None or not examples else (correct, examples),
    )


def _is_setting(key: str) -> bool:
    prefixes = tuple(k for k in _NOT_SETTINGS if k.endswith("."))
    return key not in (*_SEED_KEYS, *_NOT_SETTINGS) and not key.startswith(prefixes)


def search_view(record: Any) -> SearchView:
    """Read a parent run (tags first, then the logged config params) into a `SearchView`."""
    tags, params, metrics = record.tags, record.params, record.metrics
    # Optimization scores are accuracies unless the searcher ranked by a probe (SLEB: negative
    # perplexity); those are left out rather than shown as percentages.
    accuracy = tags.get(rec.SCORE_PROBE_TAG, rec.TASK_ACCURACY) == rec.TASK_ACCURACY
    picks = {pick: _pick_view(metrics, tags, pick, accuracy) for pick, _ in PICKS}
    settings = {}
    for name, tag, keys in SETTINGS:
        value = _first(tags, tag, default="") or _first(params, *keys, default="")
        if name == "n_opt" and not value and metrics.get("n_opt") is not None:
            value = str(int(metrics["n_opt"]))
        if value:
            settings[name] = value
    num_layers = metrics.get("num_layers")
    steps = dict(record.history.get("trajectory.n_dropped", []))
    trajectory = [
        (int(steps.get(step, step)), value)
        for step, value in sorted(record.history.get("trajectory.score", []))
        if accuracy
    ]
    return SearchView(
        run_id=record.run_id,
        model=_first(tags, "model", default=_first(params, "model.name", "model.path")),
        task=_first(tags, "task", default=_first(params, "task.name")),
        searcher=_first(tags, "searcher", default=_first(params, "searcher.name")),
        seed=_first(tags, "seed", default=_first(params, "seed")),
        num_layers=None if num_layers is None else int(num_layers),
        picks=picks,
        trajectory=trajectory,
        status=getattr(record, "status", FINISHED) or FINISHED,
        settings=settings,
        config={
            k: v for k, v in sorted(rec.comparable_settings(params).items()) if _is_setting(k)
        },
        start_time=int(getattr(record, "start_time", 0) or 0),
    )


@dataclass
class SeedGroup:
    """Searches that differ only in their seed, one per seed."""

    model: str
    task: str
    searcher: str
    settings: dict[str, str]
    config: dict[str, str]
    members: list[SearchView] = field(default_factory=list)
    distinct: dict[str, str] = field(default_factory=dict)  # config that sets it apart

    @property
    def title(self) -> str:
        return f"{self.searcher} · {self.model} · {self.task}"

    @property
    def finished(self) -> list[SearchView]:
        """The members the means are over: searches that ended (not killed or running)."""
        return [m for m in self.members if m.finished]


@dataclass
class Comparison:
    """What a comparison report shows."""

    shown: list[SearchView]  # with a result, one per group and seed, ordered by group
    groups: list[SeedGroup]
    unfinished: list[SearchView]  # no result: interrupted or still running
    superseded: list[SearchView]  # an older run of a group's seed, replaced by a rerun

    @property
    def not_finished(self) -> list[SearchView]:
        """Shown, but killed, failed or running again after its result: out of the means."""
        return [v for v in self.shown if not v.finished]


def compare_searches(views: Iterable[SearchView]) -> Comparison:
    """Group searches by every setting but the seed; one search per group and seed: a
    finished one before one that is not, then the newest."""
    views = list(views)
    unfinished = [v for v in views if not v.has_result]
    by_seed: dict[tuple, dict[str, SearchView]] = {}
    superseded = []
    for view in (v for v in views if v.has_result):
        seeds = by_seed.setdefault(view.group_key, {})
        previous = seeds.get(view.seed)
        if previous is None:
            seeds[view.seed] = view
            continue
        rank = lambda v: (v.finished, v.start_time)  # noqa: E731
        keep, drop = (view, previous) if rank(view) > rank(previous) else (previous, view)
        seeds[view.seed] = keep
        superseded.append(drop)
    groups = []
    for key, seeds in by_seed.items():
        model, task, searcher, settings, config = key
        members = sorted(seeds.values(), key=lambda v: rec.seed_order(v.seed))
        groups.append(SeedGroup(model, task, searcher, dict(settings), dict(config), members))
    groups.sort(key=lambda g: (g.title, sorted(g.settings.items()), sorted(g.config.items())))
    _mark_distinct(groups)
    shown = [m for g in groups for m in g.members]
    return Comparison(shown, groups, unfinished, superseded)


def _mark_distinct(groups: Sequence[SeedGroup], width: int = 40) -> None:
    """Set each group's `distinct`: config values (beyond the shown ones) that vary by group."""
    known = [g for g in groups if g.config]  # runs read without their params: no columns
    if len(known) < 2:
        return
    keys = sorted({k for g in known for k in g.config} - _SHOWN_KEYS)
    varying = [k for k in keys if len({g.config.get(k) for g in known}) > 1]
    for g in known:
        g.distinct = {k: rec.truncate(g.config.get(k, "(unset)"), width) for k in varying}


def setting_text(name: str, value: str) -> str:
    """``ε 0.08``, ``n_opt 48``: a setting as the report names it."""
    return f"{'ε' if name == 'epsilon' else name} {value}"


def series_labels(groups: Sequence[SeedGroup]) -> list[str]:
    """A short legend label per group: its searcher and what else differs between groups."""
    parts = [
        {
            "searcher": g.searcher, "model": g.model, "task": g.task,
            **{name: setting_text(name, value) for name, value in g.settings.items()},
            **{k: f"{k}={v}" for k, v in g.distinct.items()},
        }
        for g in groups
    ]  # fmt: skip
    names = list(dict.fromkeys(k for p in parts for k in p if k != "searcher"))
    varying = ["searcher", *(k for k in names if len({p.get(k) for p in parts}) > 1)]
    return [" · ".join(p[k] for k in varying if k in p) for p in parts]
