"""What one search records in its tracker: a parent run, a child run per configuration.

The coordinator is the one process that sees every finished evaluation (its own and those of
workers on other machines), so it logs each child run as the observation arrives; a resumed
search reopens its parent run (same `search_key`) and does not log a configuration twice.
Tracking is best-effort throughout: the tracker warns on backend failures, never raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.credentials import mask, mask_values
from tale_opt.tracking import (
    NullTracker,
    Tracker,
    TrackingSettings,
    build_tracker,
    flatten_params,
    search_key,
    search_tags,
)
from tale_opt.types import BOUNDED_BY, RACED_OUT, DropSet, Observation

# Config nodes that are not about the search itself (Hydra's own node never reaches here).
_NOT_PARAMS = ("debug",)


class SearchTracking:
    """The tracker of one search and its parent run id.

    Use `SearchTracking.start(cfg, launch_dir=...)`; `tracking=none` (or no `tracking` node)
    gives an instance that records nothing.
    """

    def __init__(self, tracker: Tracker, parent_run_id: str | None = None) -> None:
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self._children: dict[str, str] = {}

    @classmethod
    def start(
        cls, cfg: Mapping[str, Any], *, launch_dir: str | Path | None, run_name: str
    ) -> SearchTracking:
        """Validate `cfg["tracking"]` and open (or reopen) the search's parent run.

        Raises:
            UsageError: An invalid tracking node. An unreachable backend only warns.
        """
        settings = TrackingSettings.from_mapping(cfg.get("tracking"))
        if settings.kind == "none":
            return cls(NullTracker())
        tracker = build_tracker(settings, base_dir=launch_dir)
        # The resolved config, passwords masked (storage.url, tracking.uri, MLFLOW_TRACKING_URI).
        params = mask_values({k: v for k, v in cfg.items() if k not in _NOT_PARAMS})
        parent = tracker.start_search(
            params,
            search_tags(params),
            run_name=run_name,
            search_key=search_key(flatten_params(params)),
        )
        return cls(tracker, parent)

    @property
    def uri(self) -> str | None:
        """The tracking URI, password masked (it goes into summary.json)."""
        settings = getattr(self.tracker, "settings", None)
        return None if self.parent_run_id is None or settings is None else mask(settings.uri)

    def log_configuration(
        self, obs: Observation, curve: Mapping[int, float] | None = None
    ) -> None:
        """One child run for an evaluated configuration (score, accuracy, TFLOPs, ...), with
        its learning curve (the trial's intermediate values) and, for a candidate stopped
        early, why: ``stopped_by`` and the rule's numbers (``raced_out.*`` / ``bounded_by.*``)."""
        if self.parent_run_id is None:
            return
        metrics: dict[str, Any] = {"score": obs.score, **dict(obs.metrics)}
        params: dict[str, Any] = {}
        for key in (RACED_OUT, BOUNDED_BY):
            detail = obs.extras.get(key)
            if not obs.complete and isinstance(detail, Mapping):
                params["stopped_by"] = detail.get("pruner", "exact")
                for name, value in detail.items():
                    numeric = isinstance(value, int | float) and not isinstance(value, bool)
                    (metrics if numeric else params)[f"{key}.{name}"] = value
        run_id = self.tracker.log_configuration(
            self.parent_run_id,
            obs.drop.key,
            len(obs.drop),
            metrics,
            params or None,
            status=obs.status.value,
            probe=obs.candidate.probe,
            curve=curve,
        )
        if run_id is not None:
            self._children[obs.candidate.key] = run_id

    def log_costs(
        self, accepted: Sequence[Observation], costs: Mapping[DropSet, Mapping[str, Any]]
    ) -> None:
        """Latency and measured speed-up of accepted configurations, into their child runs."""
        for obs in accepted:
            run_id = self._children.get(obs.candidate.key)
            if run_id is not None and obs.drop in costs:
                self.tracker.log_metrics(costs[obs.drop], run_id=run_id)

    def finish(self, summary: Mapping[str, Any], out_dir: Path) -> None:
        """Summary metrics and tags, the run's tables and plots, then close the parent run."""
        if self.parent_run_id is None:
            return
        self.tracker.log_summary(summary)
        self.tracker.log_artifacts(out_dir)
        self.tracker.finish("FINISHED")

    def abort(self, status: str) -> None:
        """Close the parent run as FAILED or KILLED (a resume reopens it)."""
        if self.parent_run_id is not None:
            self.tracker.finish(status)
