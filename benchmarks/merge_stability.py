"""Complete a stability report with new seeds when the earlier runs' tracking store is gone.

`python -m tale_opt report --stability` reads finished searches from one MLflow store. When a
grid of seeds was run in two sittings on different machines, the first sitting's store may no
longer exist, but its `stability.md` still lists every seed's Final drop set and held-out
accuracies (the "Seeds" table). This script reads that table back as finished runs, adds the
runs of a live MLflow store, and writes the report for all of them with the same code as
`report --stability`:

    python benchmarks/merge_stability.py \
        --previous benchmarks/results/stability/stability.md \
        --tracking-uri sqlite:////work/measure/stab/mlflow.db \
        --out benchmarks/results/stability

A seed present in both (same n_opt and seed) is taken from the live store. The previous
runs take the live runs' settings (model, task, searcher, every config key but seed and
n_opt), so the script refuses to merge when the headings' settings differ.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from tale_opt.errors import UsageError
from tale_opt.reporting.stability import (
    FINISHED_METRIC,
    STABILITY_MD,
    STABILITY_PNG,
    collect,
    stability_markdown,
)
from tale_opt.reporting.stability_plot import plot_stability
from tale_opt.tracking.query import RunRecord, search_runs

_HEADING = re.compile(r"^## (?P<model>.+?) · (?P<task>.+?) · (?P<searcher>.+?)\s*$")
_SETTINGS = re.compile(r"^Settings: (?P<settings>.*); (?P<layers>\d+|\?) layers\.\s*$")
_ROW = re.compile(
    r"^\| (?P<n_opt>\d+) \| (?P<seed>[^|]+?) \| (?P<drop>[^|]+?) "
    r"\| (?P<final>[\d.]+)(?: \[[^\]]*\])? \| (?P<baseline>[\d.]+|-) \| (?P<run>\w+) \|$"
)


@dataclass(frozen=True)
class PreviousSeed:
    """One row of an earlier report's Seeds table, with its section's heading."""

    model: str
    task: str
    searcher: str
    settings: dict[str, str]
    num_layers: int | None
    n_opt: int
    seed: str
    drop: str  # "none" or "3,7"
    final: float  # held-out accuracy, 0..1
    baseline: float | None
    run: str


def read_previous(path: Path) -> list[PreviousSeed]:
    """The Seeds tables of a `stability.md`, one entry per row."""
    rows: list[PreviousSeed] = []
    heading: dict[str, str] | None = None
    settings: dict[str, str] = {}
    layers: int | None = None
    for line in path.read_text().splitlines():
        if m := _HEADING.match(line):
            heading, settings, layers = m.groupdict(), {}, None
        elif m := _SETTINGS.match(line):
            pairs = [p.split("=", 1) for p in m["settings"].split(", ") if "=" in p]
            settings = {k: v for k, v in pairs}
            layers = None if m["layers"] == "?" else int(m["layers"])
        elif (m := _ROW.match(line)) and heading is not None:
            baseline = None if m["baseline"] == "-" else float(m["baseline"]) / 100
            rows.append(
                PreviousSeed(
                    **heading,
                    settings=settings,
                    num_layers=layers,
                    n_opt=int(m["n_opt"]),
                    seed=m["seed"].strip(),
                    drop=m["drop"].strip(),
                    final=float(m["final"]) / 100,
                    baseline=baseline,
                    run=m["run"],
                )
            )
    if not rows:
        raise UsageError(f"{path} has no Seeds table rows; is it a stability.md?")
    return rows


def as_record(row: PreviousSeed, template: RunRecord) -> RunRecord:
    """`row` as a finished run with the settings of `template` (a live run of its group)."""
    n_eval = int(float(template.metrics.get("final.heldout.n_examples", 0))) or None
    if n_eval is None and row.settings.get("n_eval", "null") != "null":
        n_eval = int(row.settings["n_eval"])
    metrics = {FINISHED_METRIC: row.final, "n_opt": float(row.n_opt)}
    if row.baseline is not None:
        metrics["baseline.heldout.accuracy"] = row.baseline
    if n_eval:
        metrics["final.heldout.n_examples"] = float(n_eval)
        metrics["final.heldout.n_correct"] = float(round(row.final * n_eval))
    if row.num_layers is not None:
        metrics["num_layers"] = float(row.num_layers)
    drop = "" if row.drop == "none" else row.drop
    tags = {**template.tags, "seed": row.seed, "tale_opt.final.drop": drop}
    params = {**template.params, "seed": row.seed}
    for key in ("n_opt", "task.n_opt"):
        if key in params:
            params[key] = str(row.n_opt)
    # Older than every live run: a seed in both stores is taken from the live one.
    return replace(
        template, run_id=row.run, start_time=0, tags=tags, params=params, metrics=metrics
    )


def _group_of(record: RunRecord) -> tuple[str, str, str]:
    group = collect([record]).groups[0]  # tags first, then params, as the report reads them
    return (group.model, group.task, group.searcher)


def merge(previous: list[PreviousSeed], live: list[RunRecord]) -> list[RunRecord]:
    """The live runs plus the previous rows as runs of the matching live group."""
    finished = [r for r in live if r.metrics.get(FINISHED_METRIC) is not None]
    merged = list(live)
    for row in previous:
        templates = [r for r in finished if _group_of(r) == (row.model, row.task, row.searcher)]
        if not templates:
            raise UsageError(
                f"no finished live run of {row.model} · {row.task} · {row.searcher} to take "
                "the previous rows' settings from"
            )
        template = templates[0]
        live_settings = collect([template]).groups[0].settings
        if live_settings != row.settings:
            raise UsageError(
                f"settings differ for {row.model} · {row.task} · {row.searcher}: previous "
                f"{row.settings}, live {live_settings}; these runs do not belong together"
            )
        merged.append(as_record(row, template))
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--previous", type=Path, required=True, help="an earlier stability.md")
    parser.add_argument("--tracking-uri", required=True, help="MLflow store of the new runs")
    parser.add_argument("--experiment", default="tale_opt")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        previous = read_previous(args.previous)
        live = search_runs(args.tracking_uri, args.experiment, history=())
        data = collect(merge(previous, live))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    source = (
        f"{args.tracking_uri} ({len(live)}) and the Seeds table of an earlier "
        f"{args.previous.name} ({len(previous)})"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / STABILITY_MD
    md.write_text(stability_markdown(data, source))
    plot_stability(data.groups, args.out / STABILITY_PNG)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
