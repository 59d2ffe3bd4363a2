"""`python -m tale_opt report`: compare searches (searchers, seeds, models) logged to MLflow.

    python -m tale_opt report --out reports/arc                       # every search, newest first
    python -m tale_opt report --filter "tags.task = 'arc_easy'" --out reports/arc
    python -m tale_opt report --runs 3f2a...,9b1c... --out reports/pair
    python -m tale_opt report --tracking-uri http://mlflow:5000 --experiment tale_opt --out r/
    python -m tale_opt report --stability --filter "tags.task = 'arc_easy'" --out reports/stab

Writes comparison.md (per pick: one row per search with its settings and status, and the
means over seeds per group of settings, every setting but the seed) and comparison.png into
--out, and prints the markdown. With --stability it writes stability.md
and stability.png instead: for searches that differ only in seed and n_opt (a multirun such as
`-m seed=0,1,2,3,4 n_opt=32,64,128,256`), per n_opt how often each layer is in the Final drop
set across seeds, the mean pairwise Jaccard similarity of those sets, and the spread of the
held-out accuracy of Final and Baseline. Reads parent runs written by a search's
tracker (`tracking=mlflow`); the default URI is the one searches log to, MLFLOW_TRACKING_URI
when set, else sqlite:///mlflow.db in the current directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tale_opt.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    from tale_opt.tracking import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI

    default_uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    p = argparse.ArgumentParser(
        prog="python -m tale_opt report",
        description="Side-by-side comparison (markdown + PNG) of searches logged to MLflow, or "
        "with --stability how stable their dropped layers are across seeds per n_opt.",
    )
    p.add_argument(
        "--stability",
        action="store_true",
        help="layer-selection stability across seeds per n_opt (stability.md and .png) "
        "instead of the comparison",
    )
    p.add_argument("--tracking-uri", default=default_uri, help=f"default: {default_uri}")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--runs", help="comma-separated parent run ids")
    which.add_argument("--filter", help="MLflow filter, e.g. \"tags.task = 'arc_easy'\"")
    p.add_argument("--max-runs", type=int, default=200, help="at most this many searches")
    p.add_argument("--out", required=True, help="directory for the markdown and PNG")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(args: argparse.Namespace) -> tuple[str, str]:
    """Query, write the report files, print the markdown; returns the two paths."""
    from tale_opt.reporting.files import write_comparison_report, write_stability_report
    from tale_opt.tracking.query import search_runs
    from tale_opt.tracking.settings import redact

    if args.max_runs < 1:
        raise UsageError(f"--max-runs must be >= 1, but got {args.max_runs}")
    run_ids = [r.strip() for r in (args.runs or "").split(",") if r.strip()]
    records = search_runs(
        args.tracking_uri,
        args.experiment,
        run_ids=run_ids,
        filter_string=args.filter,
        max_results=args.max_runs,
        # The stability report reads no metric series: skip fetching them.
        history=() if args.stability else ("trajectory.score", "trajectory.n_dropped"),
    )
    if not records:
        where = f"matching {args.filter!r} " if args.filter else ""
        raise UsageError(
            f"no searches {where}in experiment {args.experiment!r} at "
            f"{redact(args.tracking_uri)}; run a search with tracking=mlflow first, or check "
            "--tracking-uri / --experiment"
        )
    if args.stability:
        md, png, _ = write_stability_report(
            records,
            args.out,
            source=redact(args.tracking_uri),
            max_runs=None if run_ids else args.max_runs,
        )
    else:
        md, png = write_comparison_report(records, args.out, source=redact(args.tracking_uri))
    print(md.read_text())
    print(f"wrote {md} and {png}")
    return str(md), str(png)


def main(argv: Sequence[str]) -> None:
    args = _parser().parse_args(list(argv))
    try:
        run(args)
    except UsageError as err:
        if args.debug:
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
