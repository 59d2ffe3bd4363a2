"""Read searches back from MLflow, for reports (`python -m tale_opt report`).

Unlike logging, a query is the whole point of the command that makes it, so failures raise
`TrackingQueryError` (a `UsageError`: the fix is a URI, an experiment name or a filter), with
the same short HTTP timeouts as the tracker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.tracking import records as rec
from tale_opt.tracking._client import make_client
from tale_opt.tracking.settings import (
    DEFAULT_EXPERIMENT,
    TrackingSettings,
    redact,
    resolve_tracking_uri,
    sqlite_path,
)


class TrackingQueryError(UsageError):
    """The tracking backend could not answer a query (unreachable, unknown experiment, ...)."""


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data."""

    run_id: str
    run_name: str | None
    status: str
    start_time: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    # Metric series by name -> [(step, value)], for the ones asked for (e.g. trajectory.score).
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def _record(run: Any, history: dict[str, list[tuple[int, float]]] | None = None) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        status=run.info.status,
        start_time=run.info.start_time,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        history=history or {},
    )


def _client(uri: str) -> Any:
    # The tracker's client setup: short HTTP timeouts, a database connect timeout.
    return make_client(TrackingSettings(uri=resolve_tracking_uri(uri)))


def search_runs(
    uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    run_ids: Sequence[str] = (),
    filter_string: str | None = None,
    max_results: int = 200,
    history: Sequence[str] = ("trajectory.score", "trajectory.n_dropped"),
) -> list[RunRecord]:
    """The parent runs (one per search) of `experiment`, newest first, or the ones named.

    Args:
        uri: Tracking URI (a relative SQLite path is resolved against the current directory).
        experiment: Experiment name (ignored when `run_ids` are given).
        run_ids: Exactly these runs, in this order.
        filter_string: An MLflow filter, e.g. ``tags.task = 'arc_easy'``; combined with the
            parent-run condition.
        max_results: At most this many runs.
        history: Metric series to fetch for each run.

    Raises:
        TrackingQueryError: Unreachable backend, unknown experiment or run, bad filter.
    """
    db = sqlite_path(resolve_tracking_uri(uri))
    if db is not None and not db.is_file():
        # MLflow would silently create an empty database there.
        raise TrackingQueryError(
            f"no MLflow database at {db}; run a search with tracking=mlflow from that "
            "directory first, or pass the URI searches logged to (--tracking-uri)"
        )
    try:
        client = _client(uri)
        if run_ids:
            runs = [client.get_run(run_id) for run_id in run_ids]
        else:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                names = [e.name for e in client.search_experiments()]
                raise TrackingQueryError(
                    f"no experiment {experiment!r} at {redact(uri)}; experiments there: "
                    f"{', '.join(names) or 'none'}"
                )
            condition = f"tags.`{rec.KIND_TAG}` = 'search'"
            if filter_string:
                condition += f" and {filter_string}"
            runs = client.search_runs(
                [found.experiment_id],
                filter_string=condition,
                order_by=["attributes.start_time DESC"],
                max_results=max_results,
            )
        out = []
        for run in runs:
            series = {
                name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
                for name in history
                if name in run.data.metrics
            }
            out.append(_record(run, series))
        return out
    except TrackingQueryError:
        raise
    except Exception as err:  # unreachable server, SQL errors, malformed filter ...
        reason = " ".join(str(err).split())[:400]
        raise TrackingQueryError(
            f"could not read runs from {redact(uri)}: {type(err).__name__}: {reason}"
        ) from err


def child_runs(uri: str, parent_run_id: str) -> list[RunRecord]:
    """The configuration runs logged under `parent_run_id` (any order).

    Raises:
        TrackingQueryError: As `search_runs`.
    """
    try:
        client = _client(uri)
        parent = client.get_run(parent_run_id)
        runs, token = [], None
        while True:
            page = client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`{rec.PARENT_TAG}` = '{parent_run_id}'",
                max_results=1000,
                page_token=token,
            )
            runs.extend(_record(run) for run in page)
            token = page.token
            if not token:
                return runs
    except Exception as err:
        reason = " ".join(str(err).split())[:400]
        raise TrackingQueryError(
            f"could not read the child runs of {parent_run_id} from {redact(uri)}: {reason}"
        ) from err
