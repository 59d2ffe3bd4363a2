"""The markdown of a comparison report: per pick (Baseline, Best, BSBA, AE-HM, Final) one
table of the searches and one of the means over seeds per group of settings.

Each search's row names what an ablation varies (epsilon, n_opt, max_drop / n_drop, scoring,
seed) and its MLflow status; the means are over finished searches only, one per seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from tale_opt.reporting.compare import Comparison, PickView, SearchView, SeedGroup
from tale_opt.stats import format_accuracy, format_p, wilson_interval
from tale_opt.tracking.records import PICKS


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _drop_cap(settings: dict[str, str]) -> str:
    """``2 / -``: max_drop / n_drop (a dash where unset)."""
    return f"{settings.get('max_drop', '-')} / {settings.get('n_drop', '-')}"


def _setting_cells(settings: dict[str, str]) -> list[str]:
    return [
        settings.get("epsilon", "-"),
        settings.get("n_opt", "-"),
        _drop_cap(settings),
        settings.get("scoring", "-"),
    ]


def _versus(pick: PickView) -> str:
    """``+5/−17, p = 0.017``: held-out examples only the pick / only Baseline gets right."""
    if pick.heldout_test is None:
        return "-"
    only_pick, only_base, p = pick.heldout_test
    return f"+{only_pick}/−{only_base}, {format_p(p)}"


def _speed(pick: PickView) -> str:
    if pick.speedup is None:
        return "-"
    return f"{pick.speedup:.2f}×" + ("" if pick.speedup_measured else " (est.)")


def _dropped(pick: PickView) -> str:
    if pick.n_dropped is None:
        return "-"
    return f"{pick.n_dropped} ({pick.drop})" if pick.drop else str(pick.n_dropped)


def _table(head: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# Column alignment: l = left, r = right.
_ALIGN = {"l": "---", "r": "---:"}


def runs_table(views: Sequence[SearchView], pick: str) -> str:
    """One row per search: its settings and status, then `pick`'s figures."""
    head = [
        "run", "search", "ε", "n_opt", "max_drop / n_drop", "scoring", "seed", "status",
        "dropped", "opt % [95% CI]", "held-out % [95% CI]", "vs Baseline", "speed-up",
        "held-out TFLOPs/example",
    ]  # fmt: skip
    rows = []
    for v in views:
        p = v.picks[pick]
        rows.append(
            [
                v.run_id[:8], v.search, *_setting_cells(v.settings), v.seed, v.status,
                _dropped(p), format_accuracy(p.opt_accuracy, p.opt_interval),
                format_accuracy(p.heldout_accuracy, p.heldout_interval),
                "—" if pick == "baseline" else _versus(p), _speed(p),
                "-" if p.tflops_per_example is None else f"{p.tflops_per_example:.4g}",
            ]
        )  # fmt: skip
    return _table(head, [_ALIGN[a] for a in "llrrrlrlrrrrrr"], rows)


def _mean_sd(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def _pooled(picks: Sequence[PickView]) -> str:
    """Held-out accuracy over all seeds' examples together, with its 95% Wilson interval
    (only when every seed logged its counts)."""
    counts = [p.heldout_counts for p in picks]
    if not counts or any(c is None for c in counts):
        return "-"
    correct, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return format_accuracy(correct / total, wilson_interval(correct, total))


def groups_table(groups: Sequence[SeedGroup], pick: str) -> str:
    """Per group of settings: mean ± sd over its finished seeds of `pick`'s figures."""
    other = any(g.distinct for g in groups)
    head = [
        "search", "ε", "n_opt", "max_drop / n_drop", "scoring", *(["other"] if other else []),
        "seeds", "dropped", "opt %", "held-out %", "held-out % pooled [95% CI]",
    ]  # fmt: skip
    rows = []
    for g in groups:
        picks = [m.picks[pick] for m in g.finished]
        seeds = ", ".join(m.seed for m in g.finished) or "none finished"

        def values(attr: str, picks: list[PickView] = picks) -> list[float]:
            return [float(x) for x in (getattr(p, attr) for p in picks) if x is not None]

        rows.append(
            [
                g.title, *_setting_cells(g.settings),
                *([", ".join(f"{k}={v}" for k, v in g.distinct.items()) or "-"] if other else []),
                f"{len(picks)} ({seeds})", _mean_sd(values("n_dropped"), scale=1),
                _mean_sd(values("opt_accuracy")), _mean_sd(values("heldout_accuracy")),
                _pooled(picks),
            ]
        )  # fmt: skip
    align = "lrrrl" + ("l" if other else "") + "lrrrr"
    return _table(head, [_ALIGN[a] for a in align], rows)


def notes(comparison: Comparison) -> list[str]:
    """What is left out of the tables or the means, and why; empty when nothing is."""
    out = []
    if comparison.unfinished:
        named = ", ".join(f"{v.run_id[:8]} ({v.label}, {v.status})" for v in comparison.unfinished)
        out.append(
            f"Left out: {len(comparison.unfinished)} search(es) without a result, "
            f"interrupted or still running: {named}. Running the same command again resumes "
            "an interrupted search."
        )
    if comparison.superseded:
        named = ", ".join(f"{v.run_id[:8]} ({v.label})" for v in comparison.superseded)
        out.append(
            f"Replaced by a rerun of the same settings and seed (each seed counts once): "
            f"{len(comparison.superseded)} search(es): {named}."
        )
    if comparison.not_finished:
        named = ", ".join(
            f"{v.run_id[:8]} ({v.label}, {v.status})" for v in comparison.not_finished
        )
        out.append(
            f"Shown with their status but left out of the means over seeds: "
            f"{len(comparison.not_finished)} search(es) that did not end as FINISHED: {named}."
        )
    return out


def comparison_markdown(comparison: Comparison, source: str = "") -> str:
    """The whole markdown report: notes, then per pick the searches and the means."""
    parts = ["# TALE searches compared", ""]
    for note in notes(comparison):
        parts += [note, ""]
    parts += [
        f"{len(comparison.shown)} search(es){f' from {source}' if source else ''} in "
        f"{len(comparison.groups)} group(s) of settings. Accuracies in %; opt = the "
        "optimization split the search ranked on, held-out = the evaluation split it never "
        "saw, each with its 95% Wilson interval. vs Baseline: held-out examples only the "
        "pick / only Baseline gets right, and the exact McNemar p-value (below 0.05: a real "
        "difference). Speed-ups marked (est.) are the layer-count estimate L / (L − k); "
        "others were measured. max_drop / n_drop: the cap on layers dropped / the exact "
        "number. Over seeds: one search per seed (the newest rerun), finished searches only; "
        "mean ± sample sd, and the held-out accuracy over all seeds' examples pooled.",
    ]
    for pick, label in PICKS:
        parts += [
            "",
            f"## {label}",
            "",
            runs_table(comparison.shown, pick),
            "",
            f"Over seeds ({label}):",
            "",
            groups_table(comparison.groups, pick),
        ]
    parts.append("")
    return "\n".join(parts)
