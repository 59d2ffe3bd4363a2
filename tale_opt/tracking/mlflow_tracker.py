"""MLflow implementation of `Tracker`: `MlflowClient` calls with explicit run ids.

Why the client and not `mlflow.start_run`: the fluent API keeps the active run in module state,
which neither survives into worker processes nor lets one process write several runs at once.
Here every call names its run, so any number of processes can log child runs of one parent.

Failures never propagate: each backend call goes through `_guard`, which turns an exception
into a `TrackingWarning`; after `max_failures` consecutive failures the tracker switches itself
off, so a dead backend costs one bounded wait, not a timeout per trial (the client itself has
short HTTP and database timeouts, see `_client.make_client`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tale_opt.credentials import mask
from tale_opt.tracking import records as rec
from tale_opt.tracking._client import make_client
from tale_opt.tracking.base import Tracker, TrackingWarning
from tale_opt.tracking.settings import (
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    TrackingSettings,
    redact,
    resolve_tracking_uri,
    sqlite_path,
)
from tale_opt.types import Candidate, DropSet, Status

T = TypeVar("T")
_PAGE = 1000


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    # Masked here, where every tag is written: a URL in a tag must not carry its password.
    limit = rec.MAX_TAG_LENGTH
    return {rec.sanitize_key(k): rec.truncate(mask(str(v)), limit) for k, v in tags.items()}


class MlflowTracker(Tracker):
    """Parent run per search, child run per configuration, in one MLflow experiment.

    Args:
        tracking_uri: Backend URI (see `TrackingSettings.uri`); a relative SQLite path is
            resolved against the current directory.
        experiment: Experiment name; created on first use.
        artifact_location, http_timeout, http_max_retries, connect_timeout, max_failures,
        log_artifacts: As in `TrackingSettings`.
    """

    def __init__(
        self,
        tracking_uri: str = DEFAULT_TRACKING_URI,
        experiment: str = DEFAULT_EXPERIMENT,
        *,
        artifact_location: str | None = None,
        http_timeout: int = 10,
        http_max_retries: int = 2,
        connect_timeout: int = 5,
        max_failures: int = 5,
        log_artifacts: bool = True,
    ) -> None:
        self.settings = TrackingSettings(
            kind="mlflow",
            uri=resolve_tracking_uri(tracking_uri),
            experiment=experiment,
            artifact_location=artifact_location,
            http_timeout=http_timeout,
            http_max_retries=http_max_retries,
            connect_timeout=connect_timeout,
            max_failures=max_failures,
            log_artifacts=log_artifacts,
        )
        self.tracking_uri = self.settings.uri
        self.parent_run_id: str | None = None
        self._client_obj: Any = None
        self._experiment_id: str | None = None
        self._run_experiment: dict[str, str] = {}
        self._children: dict[str, dict[str, str]] = {}  # parent -> child key -> child run
        self._child_status: dict[str, str] = {}  # child run -> status it was logged with
        self._study: dict[str, str] = {}  # parent -> its study (STUDY_TAG), when tagged
        # parent -> child key -> child run logged by another search of the parent's study
        self._shared: dict[str, dict[str, str]] = {}
        self._linked: dict[str, set[str]] = {}  # parent -> child keys found in `_shared`
        self._failures = 0
        self._disabled = False

    @classmethod
    def from_settings(cls, settings: TrackingSettings) -> MlflowTracker:
        options = settings.as_dict()
        options.pop("kind")
        return cls(options.pop("uri"), options.pop("experiment"), **options)

    @property
    def enabled(self) -> bool:
        return not self._disabled

    # -- plumbing -------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = make_client(self.settings)
        return self._client_obj

    def _guard(self, what: str, call: Callable[[], T]) -> T | None:
        """Run one tracking operation; a failure becomes a warning and None."""
        if self._disabled:
            return None
        try:
            result = call()
        except Exception as err:  # any backend/driver error: tracking must not fail a search
            self._failures += 1
            reason = " ".join(str(err).split())[:300]
            message = (
                f"MLflow tracking at {redact(self.tracking_uri)}: could not {what} "
                f"({type(err).__name__}: {reason}); the search goes on without it"
            )
            if self._failures >= self.settings.max_failures:
                self._disabled = True
                message += f"; tracking is off for this process after {self._failures} failures"
            warnings.warn(message, TrackingWarning, stacklevel=3)
            return None
        self._failures = 0
        return result

    def _experiment(self) -> str:
        if self._experiment_id is None:
            client, name = self._client(), self.settings.experiment
            found = client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiment_id = client.create_experiment(
                        name, artifact_location=self._artifact_location()
                    )
                except Exception:
                    # Another process may have created it between our lookup and create.
                    found = client.get_experiment_by_name(name)
                    if found is None:
                        raise
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    raise RuntimeError(
                        f"experiment {name!r} is deleted; restore it (`mlflow experiments "
                        "restore`) or choose another tracking.experiment"
                    )
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def _artifact_location(self) -> str | None:
        if self.settings.artifact_location:
            return self.settings.artifact_location
        db = sqlite_path(self.tracking_uri)
        # Beside the database file, not the current directory: runs launched from elsewhere
        # (or from a Hydra job directory) keep their artifacts in one place.
        return str(db.parent / "mlruns") if db is not None else None

    def _log_batch(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client, now = self._client(), int(time.time() * 1000)
        metric_list = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
        # Params are the resolved config: storage.url / tracking.uri may carry a password.
        param_list = [Param(k, mask(str(v))) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, v) for k, v in _tags(tags or {}).items()]
        # MLflow's per-request limits: 1000 metrics, 100 params, 100 tags.
        for i in range(0, len(metric_list), 1000):
            client.log_batch(run_id, metrics=metric_list[i : i + 1000])
        for i in range(0, len(param_list), 100):
            client.log_batch(run_id, params=param_list[i : i + 100])
        for i in range(0, len(tag_list), 100):
            client.log_batch(run_id, tags=tag_list[i : i + 100])

    def _search(self, experiment_id: str, filter_string: str) -> list[Any]:
        client, token, runs = self._client(), None, []
        while True:
            page = client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=_PAGE, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _load_children(self, parent_run_id: str) -> dict[str, str]:
        experiment_id = self._run_experiment[parent_run_id]
        found = self._search(experiment_id, f"tags.`{rec.PARENT_TAG}` = '{parent_run_id}'")
        return self._child_keys(found)

    def _load_shared(self, parent_run_id: str, candidate: str | None = None) -> dict[str, str]:
        """Children that other searches of the parent's study logged (one `candidate`'s, or
        all); empty when the parent has no study tag."""
        study = self._study.get(parent_run_id)
        if study is None:
            return {}
        condition = (
            f"tags.`{rec.STUDY_TAG}` = '{study}' and tags.`{rec.KIND_TAG}` = 'configuration'"
        )
        if candidate is not None:
            condition += f" and tags.`{rec.CANDIDATE_TAG}` = '{candidate}'"
        found = self._search(self._run_experiment[parent_run_id], condition)
        others = [r for r in found if r.data.tags.get(rec.PARENT_TAG) != parent_run_id]
        # Newest first: where two searches logged one configuration, the oldest one's wins.
        others.sort(key=lambda r: r.info.start_time or 0, reverse=True)
        return self._child_keys(others)

    def _attach(self, parent_run_id: str, experiment_id: str, tags: Mapping[str, str]) -> None:
        """Remember a parent's experiment, study and existing children (its own and its
        study's)."""
        self._run_experiment[parent_run_id] = experiment_id
        study = tags.get(rec.STUDY_TAG)
        if study and "'" not in study:  # a quote cannot be matched in a filter string
            self._study[parent_run_id] = study
        self._children[parent_run_id] = self._load_children(parent_run_id)
        self._shared[parent_run_id] = self._load_shared(parent_run_id)
        self._linked.setdefault(parent_run_id, set())

    def _child_keys(self, found: Iterable[Any]) -> dict[str, str]:
        children = {}
        for run in found:
            tags = run.data.tags
            if rec.CANDIDATE_TAG in tags:
                candidate = tags[rec.CANDIDATE_TAG]
                probe, _, drop_key = candidate.rpartition(":")
            elif rec.DROP_KEY_TAG in tags:  # logged before children carried the candidate tag
                drop_key = tags[rec.DROP_KEY_TAG]
                probe = tags.get(rec.PROBE_TAG, rec.TASK_ACCURACY)
            else:
                continue
            children[rec.child_key(drop_key, probe)] = run.info.run_id
            self._child_status[run.info.run_id] = tags.get(rec.STATUS_TAG, Status.COMPLETE.value)
        return children

    def _update_child(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        status: str,
        curve: Mapping[int, float] | None = None,
    ) -> bool:
        """Replace a pruned child's result by a full one, in the same run.

        The full result is logged at step 1 (the pruned bound stays at step 0, as history), so
        it is what MLflow shows as each metric's value; metrics only the pruned evaluation had
        (``upper_bound``, ``n_seen`` ...) become NaN: they say nothing about a full evaluation.
        The full evaluation's learning curve is logged too; its points repeat the pruned
        one's steps (MLflow keeps both, the full curve runs on to the end).
        """
        previous = self._client().get_run(run_id).data.metrics
        stale = {
            key: float("nan") for key in previous if key not in metrics and key != rec.CURVE_METRIC
        }
        self._log_batch(run_id, {**metrics, **stale}, tags={rec.STATUS_TAG: status}, step=1)
        self._log_curve(run_id, curve)
        return True

    def _log_curve(self, run_id: str, curve: Mapping[int, float] | None) -> None:
        """The learning curve as one metric with steps, in one request per 1000 points."""
        from mlflow.entities import Metric

        if not curve:
            return
        now = int(time.time() * 1000)
        points = [
            Metric(rec.CURVE_METRIC, float(v), now, int(k)) for k, v in sorted(curve.items())
        ]
        for i in range(0, len(points), 1000):
            self._client().log_batch(run_id, metrics=points[i : i + 1000])

    # -- the Tracker API ------------------------------------------------------------------
    def start_search(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        *,
        run_name: str | None = None,
        search_key: str | None = None,
    ) -> str | None:
        flat = rec.flatten_params(params)
        all_tags = {**{k: str(v) for k, v in tags.items()}, rec.KIND_TAG: "search"}
        if search_key:
            all_tags[rec.SEARCH_KEY_TAG] = search_key

        def start() -> str:
            client, experiment_id = self._client(), self._experiment()
            previous = None
            if search_key:
                found = client.search_runs(
                    [experiment_id],
                    filter_string=f"tags.`{rec.SEARCH_KEY_TAG}` = '{search_key}' and "
                    f"tags.`{rec.KIND_TAG}` = 'search'",
                    order_by=["attributes.start_time DESC"],
                    max_results=1,
                )
                previous = found[0] if found else None
            if previous is not None:
                run_id = previous.info.run_id
                client.update_run(run_id, status="RUNNING")
                new = {k: v for k, v in flat.items() if k not in previous.data.params}
                self._log_batch(run_id, params=new, tags=all_tags)
            else:
                run = client.create_run(experiment_id, tags=_tags(all_tags), run_name=run_name)
                run_id = run.info.run_id
                self._log_batch(run_id, params=flat)
            self._attach(run_id, experiment_id, all_tags)
            return run_id

        self.parent_run_id = self._guard("start the search's parent run", start)
        return self.parent_run_id

    def _learn_parent(self, parent_run_id: str) -> None:
        """Look up the parent's experiment and the children it has already."""

        def learn() -> None:
            run = self._client().get_run(parent_run_id)
            self._attach(parent_run_id, run.info.experiment_id, run.data.tags)

        self._guard(f"attach to parent run {parent_run_id}", learn)

    def log_configuration(
        self,
        parent_run_id: str | None,
        drop_key: str,
        round: int,
        metrics: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        *,
        status: str = "complete",
        probe: str = rec.TASK_ACCURACY,
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
        artifacts: Mapping[str, Any] | None = None,
        curve: Mapping[int, float] | None = None,
    ) -> str | None:
        if parent_run_id is None or self._disabled:
            return None
        known = self._children.get(parent_run_id)
        if known is None:  # a parent this tracker did not start (another process did)
            self._learn_parent(parent_run_id)
            known = self._children.get(parent_run_id)
            if known is None:
                return None
        key = rec.child_key(drop_key, probe)
        n_dropped = len(DropSet.parse(drop_key))
        values = {
            **rec.numeric_metrics(metrics),
            "n_dropped": float(n_dropped),
            "round": float(round),
        }
        candidate = Candidate(DropSet.parse(drop_key), probe).key
        if key not in known and parent_run_id in self._study:
            shared = self._shared.setdefault(parent_run_id, {})
            if key not in shared:  # another search of the study may have logged it since
                found = self._guard(
                    f"look up configuration {drop_key or 'baseline'!r} in the study",
                    lambda: self._load_shared(parent_run_id, candidate),
                )
                shared.update(found or {})
            if key in shared:
                self._linked.setdefault(parent_run_id, set()).add(key)
                known = shared
        if key in known:
            run_id = known[key]
            if self._child_status.get(run_id) == Status.PRUNED.value != status:
                # Stopped early first, evaluated in full later: the full result replaces it.
                done = self._guard(
                    f"update configuration {drop_key or 'baseline'!r}",
                    lambda: self._update_child(run_id, values, status, curve),
                )
                if done:  # else it stays pruned here, and the next full result tries again
                    self._child_status[run_id] = status
            return run_id

        def log() -> str:
            child_tags = {
                **(tags or {}),
                rec.PARENT_TAG: parent_run_id,
                rec.KIND_TAG: "configuration",
                rec.CANDIDATE_TAG: candidate,
                rec.DROP_KEY_TAG: drop_key,
                rec.ROUND_TAG: str(round),
                rec.STATUS_TAG: status,
                rec.PROBE_TAG: probe,
            }
            if parent_run_id in self._study:
                child_tags[rec.STUDY_TAG] = self._study[parent_run_id]
            name = run_name or f"round {round} drop {drop_key or 'none'}"
            if run_name is None and probe != rec.TASK_ACCURACY:
                name += f" ({probe})"
            experiment_id = self._run_experiment[parent_run_id]
            client = self._client()
            run_id = client.create_run(experiment_id, tags=_tags(child_tags), run_name=name)
            run_id = run_id.info.run_id
            extra = rec.flatten_params(params or {})
            flat = {"drop_layers": drop_key or "none", "round": str(round), **extra}
            self._log_batch(run_id, metrics=values, params=flat)
            for file_name, content in (artifacts or {}).items():
                client.log_dict(run_id, content, file_name)
            self._log_curve(run_id, curve)
            client.set_terminated(run_id, "FINISHED")
            return run_id

        run_id = self._guard(f"log configuration {drop_key or 'baseline'!r}", log)
        if run_id is not None:
            known[key] = run_id
            self._child_status[run_id] = status
        return run_id

    def linked(self, parent_run_id: str | None) -> int:
        return len(self._linked.get(parent_run_id or "", ()))

    def log_metrics(
        self, metrics: Mapping[str, Any], *, run_id: str | None = None, step: int | None = None
    ) -> None:
        target = run_id or self.parent_run_id
        if target is None:
            return
        values = rec.numeric_metrics(metrics)
        self._guard("log metrics", lambda: self._log_batch(target, values, step=step or 0))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        parent = self.parent_run_id
        if parent is None:
            return

        def log() -> None:
            self._log_batch(parent, rec.summary_metrics(summary), tags=rec.summary_tags(summary))
            # The accepted trajectory as a metric series (step = position), which the MLflow
            # UI plots and the comparison report reads back.
            for step, obs in enumerate(summary.get("trajectory") or []):
                series = {
                    "trajectory.score": obs.get("score"),
                    "trajectory.n_dropped": obs.get("n_dropped"),
                }
                self._log_batch(parent, rec.numeric_metrics(series), step=step)

        self._guard("log the search summary", log)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        parent = self.parent_run_id
        if parent is None or not self.settings.log_artifacts:
            return
        self._guard(
            f"upload artifacts from {local_dir}",
            lambda: self._client().log_artifacts(parent, str(local_dir), artifact_path),
        )

    def finish(self, status: str = "FINISHED") -> None:
        parent = self.parent_run_id
        if parent is None:
            return
        self._guard("close the parent run", lambda: self._client().set_terminated(parent, status))
