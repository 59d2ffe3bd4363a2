"""How stable the layers a search drops are across seeds, per optimization-split size.

Input: parent runs (`RunRecord`s from tale_opt.tracking.query, or anything with ``run_id``,
``start_time``, ``params``, ``tags`` and ``metrics``) of a multirun such as

    python -m tale_opt -m seed=0,1,2,3,4 n_opt=32,64,128,256 searcher.max_drop=2

Runs are grouped by every setting except the seed and n_opt (one stability table per group),
then by n_opt. Per n_opt the report gives how often each layer is in the Final drop set across
seeds, the mean pairwise Jaccard similarity of those sets, and the spread of the held-out
accuracy of Final and of the Baseline. Standard library only (no mlflow): the pure functions
here are what the tests pin; `reporting.files.write_stability_report` also draws the heatmap.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from tale_opt.stats import format_accuracy, wilson_interval
from tale_opt.tracking import records as rec

STABILITY_MD = "stability.md"
STABILITY_PNG = "stability.png"
FINISHED_METRIC = "final.heldout.accuracy"

# Config keys that are the seed or the split size, or say where/how a search runs rather than
# what it finds: left out of the group key. (`latency.*` only prices the accepted
# configurations; it does not change which layers Final drops.)
_SEED_KEYS = ("seed", "searcher.seed")
_N_OPT_KEYS = ("n_opt", "task.n_opt")
_NOT_SETTINGS = (*rec.WHERE_KEYS, "worker_threads", "latency.")
# Shown in each group's heading: (label, tag, config keys), first one present wins.
_HEADLINE = (
    ("scoring", "scoring", ("eval.scoring",)),
    ("epsilon", "epsilon", ("searcher.epsilon",)),
    ("max_drop", None, ("searcher.max_drop",)),
    ("n_drop", None, ("searcher.n_drop", "n_drop")),
    ("n_eval", None, ("n_eval",)),
)
_HEADLINE_KEYS = frozenset(k for _, _, keys in _HEADLINE for k in keys) | {
    "model.name",
    "task.name",
    "searcher.name",
}


# -- pure statistics --------------------------------------------------------------------------
def parse_drop(text: str | None) -> frozenset[int]:
    """A drop-set tag (``"2,4"``; ``""`` = nothing dropped) as a set of layer indices."""
    return frozenset(int(p) for p in (text or "").split(",") if p.strip())


def selection_counts(drop_sets: Iterable[Set[int]]) -> dict[int, int]:
    """How many of `drop_sets` contain each layer (layers in none are absent), by layer."""
    counts = Counter(layer for drop in drop_sets for layer in set(drop))
    return dict(sorted(counts.items()))


def selection_frequency(drop_sets: Sequence[Set[int]], num_layers: int) -> list[float]:
    """Share of `drop_sets` that contain layer ℓ, for ℓ = 0 .. num_layers − 1.

    Raises:
        ValueError: No drop sets, or a layer outside ``0 .. num_layers − 1``.
    """
    if not drop_sets:
        raise ValueError("selection_frequency needs at least one drop set")
    counts = selection_counts(drop_sets)
    outside = [layer for layer in counts if not 0 <= layer < num_layers]
    if outside:
        raise ValueError(f"layers {outside} are outside 0..{num_layers - 1}")
    return [counts.get(layer, 0) / len(drop_sets) for layer in range(num_layers)]


def jaccard(a: Set[int], b: Set[int]) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    union = len(set(a) | set(b))
    return 1.0 if union == 0 else len(set(a) & set(b)) / union


def mean_pairwise_jaccard(drop_sets: Sequence[Set[int]]) -> float | None:
    """Mean Jaccard similarity over all unordered pairs; None with fewer than two sets."""
    pairs = list(itertools.combinations(drop_sets, 2))
    if not pairs:
        return None
    return statistics.fmean(jaccard(a, b) for a, b in pairs)


@dataclass(frozen=True)
class Spread:
    """Mean, sample sd (None for one value), min and max of some values."""

    n: int
    mean: float
    sd: float | None
    min: float
    max: float


def spread(values: Iterable[float | None]) -> Spread | None:
    """The spread of the values that are not None; None when there are none."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    sd = statistics.stdev(kept) if len(kept) > 1 else None
    return Spread(len(kept), statistics.fmean(kept), sd, min(kept), max(kept))


# -- runs, cells, groups ----------------------------------------------------------------------
@dataclass(frozen=True)
class SeedRun:
    """What the stability report reads of one finished search."""

    run_id: str
    seed: str
    n_opt: int | None
    start_time: int
    final_drop: frozenset[int]
    final_heldout: float
    baseline_heldout: float | None
    final_correct: int | None = None
    n_eval: int | None = None
    num_layers: int | None = None

    @property
    def final_interval(self) -> tuple[float, float] | None:
        """95% Wilson interval of Final's held-out accuracy, when the counts were logged."""
        if self.final_correct is None or not self.n_eval:
            return None
        try:
            return wilson_interval(self.final_correct, self.n_eval)
        except ValueError:  # counts that do not fit together: show the accuracy alone
            return None


@dataclass
class Cell:
    """The seeds of one group at one n_opt (one seed per run after de-duplication)."""

    n_opt: int | None
    runs: list[SeedRun]

    @property
    def drop_sets(self) -> list[frozenset[int]]:
        return [r.final_drop for r in self.runs]

    @property
    def counts(self) -> dict[int, int]:
        return selection_counts(self.drop_sets)

    @property
    def jaccard(self) -> float | None:
        return mean_pairwise_jaccard(self.drop_sets)

    @property
    def final(self) -> Spread | None:
        return spread(r.final_heldout for r in self.runs)

    @property
    def baseline(self) -> Spread | None:
        return spread(r.baseline_heldout for r in self.runs)

    @property
    def modal(self) -> tuple[frozenset[int], int]:
        """The most common Final drop set (ties: fewest layers, then lowest) and its count."""
        counts = Counter(self.drop_sets)
        return min(counts.items(), key=lambda kv: (-kv[1], len(kv[0]), sorted(kv[0])))


@dataclass
class Group:
    """Searches that differ only in seed and n_opt."""

    model: str
    task: str
    searcher: str
    settings: dict[str, str]  # the headline settings (scoring, epsilon, max_drop, ...)
    config: dict[str, str]  # every grouping config key -> value
    cells: list[Cell] = field(default_factory=list)
    distinct: dict[str, str] = field(default_factory=dict)  # what sets it apart from others

    @property
    def title(self) -> str:
        return f"{self.model} · {self.task} · {self.searcher}"

    @property
    def num_layers(self) -> int | None:
        known = [r.num_layers for c in self.cells for r in c.runs if r.num_layers is not None]
        return max(known) if known else None

    @property
    def layers_shown(self) -> int:
        """Rows of the heatmap: the model's layers, or as many as the drop sets reach."""
        reached = [max(r.final_drop) + 1 for c in self.cells for r in c.runs if r.final_drop]
        return max([self.num_layers or 0, *reached, 1])

    def frequency_matrix(self) -> list[list[float]]:
        """[layer][n_opt column]: share of that n_opt's seeds whose Final drops the layer."""
        columns = [selection_frequency(c.drop_sets, self.layers_shown) for c in self.cells]
        return [[column[layer] for column in columns] for layer in range(self.layers_shown)]


@dataclass
class StabilityData:
    """Everything the report shows."""

    groups: list[Group]
    total: int  # runs read
    unfinished: list[str]  # run ids without a finished summary
    superseded: list[str]  # run ids replaced by a newer run of the same settings and seed


def _int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def _first(mapping: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        if mapping.get(key) not in (None, ""):
            return str(mapping[key])
    return None


def seed_run(record: Any) -> SeedRun | None:
    """A parent run as a `SeedRun`; None when it has no finished summary (or, which a summary
    always logs, no Final drop set)."""
    tags, params, metrics = record.tags, record.params, record.metrics
    if metrics.get(FINISHED_METRIC) is None:
        return None
    drop_tag = tags.get("tale_opt.final.drop")
    if drop_tag is None and metrics.get("final.n_dropped", 0) != 0:
        return None  # a drop count but no drop set: nothing to compare
    n_opt = _int(metrics.get("n_opt"))
    if n_opt is None:
        n_opt = _int(_first(params, *_N_OPT_KEYS))
    n_eval = _int(metrics.get("final.heldout.n_examples", metrics.get("n_eval")))
    return SeedRun(
        run_id=record.run_id,
        seed=_first(tags, "seed") or _first(params, "seed") or "?",
        n_opt=n_opt,
        start_time=int(record.start_time or 0),
        final_drop=parse_drop(drop_tag),
        final_heldout=float(metrics[FINISHED_METRIC]),
        baseline_heldout=metrics.get("baseline.heldout.accuracy"),
        final_correct=_int(metrics.get("final.heldout.n_correct")),
        n_eval=n_eval,
        num_layers=_int(metrics.get("num_layers")),
    )


def _is_setting(key: str) -> bool:
    prefixes = tuple(k for k in _NOT_SETTINGS if k.endswith("."))
    return key not in (*_SEED_KEYS, *_N_OPT_KEYS, *_NOT_SETTINGS) and not key.startswith(prefixes)


def _group_of(record: Any) -> Group:
    tags, params = record.tags, record.params
    comparable = rec.comparable_settings(params)
    config = {k: v for k, v in sorted(comparable.items()) if _is_setting(k)}
    settings = {}
    for label, tag, keys in _HEADLINE:
        value = (_first(tags, tag) if tag else None) or _first(params, *keys)
        if value is not None:
            settings[label] = value
    return Group(
        model=_first(tags, "model") or _first(params, "model.name", "model.path") or "?",
        task=_first(tags, "task") or _first(params, "task.name") or "?",
        searcher=_first(tags, "searcher") or _first(params, "searcher.name") or "?",
        settings=settings,
        config=config,
    )


def collect(records: Iterable[Any]) -> StabilityData:
    """Group finished runs by settings, then n_opt; one run per seed (the newest)."""
    records = list(records)
    groups: dict[tuple, Group] = {}
    by_seed: dict[tuple, dict[tuple[int | None, str], SeedRun]] = {}
    unfinished, superseded = [], []
    for record in records:
        run = seed_run(record)
        if run is None:
            unfinished.append(record.run_id)
            continue
        group = _group_of(record)
        key = (
            group.model,
            group.task,
            group.searcher,
            # Shown as logged (n_drop=null), compared as settings (null = not set).
            tuple(sorted(rec.comparable_settings(group.settings).items())),
            tuple(group.config.items()),
        )
        groups.setdefault(key, group)
        seeds = by_seed.setdefault(key, {})
        previous = seeds.get((run.n_opt, run.seed))
        if previous is None or run.start_time > previous.start_time:
            seeds[(run.n_opt, run.seed)] = run
            if previous is not None:
                superseded.append(previous.run_id)
        else:
            superseded.append(run.run_id)
    for key, group in groups.items():
        cells: dict[int | None, list[SeedRun]] = {}
        for (n_opt, _), run in by_seed[key].items():
            cells.setdefault(n_opt, []).append(run)
        group.cells = [
            Cell(n_opt, sorted(runs, key=lambda r: rec.seed_order(r.seed)))
            for n_opt, runs in sorted(cells.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
        ]
    ordered = sorted(groups.values(), key=lambda g: (g.title, sorted(g.settings.items())))
    _mark_distinct(ordered)
    return StabilityData(ordered, len(records), unfinished, superseded)


def _mark_distinct(groups: Sequence[Group], width: int = 60) -> None:
    """Set each group's `distinct`: config values (beyond the headline) that vary by group."""
    if len(groups) < 2:
        return
    keys = sorted({k for g in groups for k in g.config} - _HEADLINE_KEYS)
    varying = [k for k in keys if len({g.config.get(k) for g in groups}) > 1]
    for g in groups:
        g.distinct = {k: rec.truncate(g.config.get(k, "(unset)"), width) for k in varying}


# -- markdown ---------------------------------------------------------------------------------
def _drop_text(drop: Set[int]) -> str:
    return ",".join(str(layer) for layer in sorted(drop)) or "none"


def _n_opt_text(n_opt: int | None) -> str:
    return "?" if n_opt is None else str(n_opt)


def _spread_cells(s: Spread | None) -> list[str]:
    if s is None:
        return ["-"] * 4
    sd = "-" if s.sd is None else f"{100 * s.sd:.1f}"
    return [f"{100 * s.mean:.1f}", sd, f"{100 * s.min:.1f}", f"{100 * s.max:.1f}"]


def summary_table(group: Group) -> str:
    """Per n_opt: seeds, Jaccard, the Final sets, and both held-out spreads."""
    lines = [
        "| n_opt | seeds | mean Jaccard | distinct Final sets | most common Final set "
        "| Final held-out % mean | sd | min | max "
        "| Baseline held-out % mean | sd | min | max |",
        "|---:|---:|---:|---:|---|" + "---:|" * 8,
    ]
    for cell in group.cells:
        jac = "-" if cell.jaccard is None else f"{cell.jaccard:.3f}"
        modal, count = cell.modal
        cells = [
            _n_opt_text(cell.n_opt),
            str(len(cell.runs)),
            jac,
            str(len(set(cell.drop_sets))),
            f"{_drop_text(modal)} ({count}/{len(cell.runs)})",
            *_spread_cells(cell.final),
            *_spread_cells(cell.baseline),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frequency_table(group: Group) -> str:
    """Layers × n_opt: seeds whose Final drops the layer / seeds; layers never dropped left out."""
    layers = sorted({layer for c in group.cells for layer in c.counts})
    head = ["layer", *(f"n_opt={_n_opt_text(c.n_opt)}" for c in group.cells)]
    lines = ["| " + " | ".join(head) + " |", "|---:|" + "---:|" * len(group.cells)]
    if not layers:
        return "No seed's Final drops any layer."
    counts = [c.counts for c in group.cells]
    for layer in layers:
        row = [str(layer)]
        row += [
            f"{cnt.get(layer, 0)}/{len(c.runs)}"
            for cnt, c in zip(counts, group.cells, strict=True)
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def seeds_table(group: Group) -> str:
    """One row per seed: its Final drop set and held-out accuracies."""
    lines = [
        "| n_opt | seed | Final drop | Final held-out % [95% CI] | Baseline held-out % | run |",
        "|---:|---:|---|---:|---:|---|",
    ]
    for cell in group.cells:
        for r in cell.runs:
            lines.append(
                f"| {_n_opt_text(cell.n_opt)} | {r.seed} | {_drop_text(r.final_drop)} "
                f"| {format_accuracy(r.final_heldout, r.final_interval)} "
                f"| {format_accuracy(r.baseline_heldout)} | {r.run_id[:8]} |"
            )
    return "\n".join(lines)


def stability_markdown(data: StabilityData, source: str = "", max_runs: int | None = None) -> str:
    """The whole markdown report."""
    used = sum(len(c.runs) for g in data.groups for c in g.cells)
    read = f"{data.total} search(es) read{f' from {source}' if source else ''}"
    notes = [f"{read}: {used} used"]
    if data.unfinished:
        notes.append(
            f"{len(data.unfinished)} left out without a finished summary (no `{FINISHED_METRIC}`)"
        )
    if data.superseded:
        notes.append(
            f"{len(data.superseded)} superseded by a newer run of the same settings and seed"
        )
    parts = [
        "# TALE layer-selection stability",
        "",
        "; ".join(notes) + ".",
    ]
    if max_runs is not None and data.total >= max_runs:
        parts += ["", f"Only the newest {max_runs} searches were read; raise --max-runs."]
    parts += [
        "",
        "Final = the last accepted configuration (most layers dropped). Selection frequency = "
        "seeds whose Final drops the layer / seeds. Jaccard = |A ∩ B| / |A ∪ B| of two seeds' "
        "Final drop sets (1 for two empty sets), averaged over all pairs of seeds (- with one "
        "seed). Accuracies in % on the held-out split; sd is the sample sd over seeds. Layers "
        "count from 0.",
    ]
    for group in data.groups:
        settings = {**group.settings, **group.distinct}
        layers = "?" if group.num_layers is None else str(group.num_layers)
        described = ", ".join(f"{k}={v}" for k, v in settings.items())
        parts += [
            "",
            f"## {group.title}",
            "",
            f"Settings: {described or '-'}; {layers} layers.",
            "",
            summary_table(group),
            "",
            "Selection frequency (seeds whose Final drops the layer):",
            "",
            frequency_table(group),
            "",
            "<details><summary>Seeds</summary>",
            "",
            seeds_table(group),
            "",
            "</details>",
        ]
    parts.append("")
    return "\n".join(parts)
