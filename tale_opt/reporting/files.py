"""The files of a report: its markdown table and its PNG, written side by side into one
directory. Here rather than beside the tables, because the plots read the tables' data types."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.reporting.compare import (
    COMPARISON_MD,
    COMPARISON_PNG,
    compare_searches,
    search_view,
)
from tale_opt.reporting.compare_plot import plot_comparison
from tale_opt.reporting.compare_tables import comparison_markdown, notes
from tale_opt.reporting.stability import (
    FINISHED_METRIC,
    STABILITY_MD,
    STABILITY_PNG,
    StabilityData,
    collect,
    stability_markdown,
)
from tale_opt.reporting.stability_plot import plot_stability


def write_comparison_report(
    records: Sequence[Any], out_dir: str | Path, *, source: str = ""
) -> tuple[Path, Path]:
    """Write comparison.md and comparison.png for `records` (parent runs) into `out_dir`.

    Raises:
        UsageError: None of `records` has a result.
    """
    comparison = compare_searches(search_view(r) for r in records)
    if not comparison.shown:
        raise UsageError(f"nothing to compare: {' '.join(notes(comparison))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / COMPARISON_MD
    md.write_text(comparison_markdown(comparison, source))
    png = plot_comparison(comparison, out / COMPARISON_PNG)
    return md, png


def write_stability_report(
    records: Sequence[Any],
    out_dir: str | Path,
    *,
    source: str = "",
    max_runs: int | None = None,
) -> tuple[Path, Path, StabilityData]:
    """Write stability.md and stability.png for `records` (parent runs) into `out_dir`.

    Raises:
        UsageError: None of `records` has a finished summary.
    """
    data = collect(records)
    if not data.groups:
        raise UsageError(
            f"none of the {data.total} search(es) read has a finished summary (no "
            f"{FINISHED_METRIC} metric); wait for them to finish, or check --filter / --runs"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / STABILITY_MD
    md.write_text(stability_markdown(data, source, max_runs))
    png = plot_stability(data.groups, out / STABILITY_PNG)
    return md, png, data
