"""The tracking interface of a search, and the tracker that does nothing (``tracking=none``).

A tracker records one *parent* run per search and one *child* run per evaluated configuration
(a drop set). Every method is best-effort: an implementation never raises for a backend
failure, it warns (`TrackingWarning`) and carries on, because the Optuna storage, not the
tracker, is the source of truth of a search. Methods return None when nothing was recorded.

Run ids are explicit everywhere (no "active run" state shared through a module, as MLflow's
fluent API has). Only the coordinator logs: it sees every finished evaluation, its own and
those of workers on other machines, so workers need no tracker.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class TrackingWarning(UserWarning):
    """A tracking call failed; the search goes on without it."""


class Tracker(abc.ABC):
    """Records a search (parent run) and its evaluated configurations (child runs)."""

    parent_run_id: str | None = None

    @property
    def enabled(self) -> bool:
        """False when nothing will be recorded (no backend, or switched off after failures)."""
        return False

    @abc.abstractmethod
    def start_search(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        *,
        run_name: str | None = None,
        search_key: str | None = None,
    ) -> str | None:
        """Open the parent run of a search and log its config; returns the parent run id.

        Args:
            params: The resolved config, nested or flat; flattened to dotted keys.
            tags: e.g. model, task, searcher, seed, epsilon, n_opt, scoring, study.
            run_name: Shown in the UI; defaults to the backend's choice.
            search_key: When a parent run with this key exists already (a resumed search),
                reopen it instead of starting another; its recorded children are not logged
                twice (see `log_configuration`).
        """

    @abc.abstractmethod
    def log_configuration(
        self,
        parent_run_id: str | None,
        drop_key: str,
        round: int,
        metrics: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        *,
        status: str = "complete",
        probe: str = "task_accuracy",
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
        artifacts: Mapping[str, Any] | None = None,
        curve: Mapping[int, float] | None = None,
    ) -> str | None:
        """Record one evaluated configuration as a child run of `parent_run_id`.

        One child run per (parent, drop key, probe), found by its candidate tag within a
        process and across a resume: a configuration that already has a child run is not
        logged again and its run id is returned, except that a pruned child (an upper bound)
        is updated in place with a complete result when one comes. When the parent is
        tagged with a study (`records.STUDY_TAG`), a configuration another search of that
        study has logged already is not logged again either: its run id is returned (and
        counted in `linked`), since a study's evaluation is the same for every search on it.

        Args:
            parent_run_id: From `start_search`; None records nothing.
            drop_key: The drop set's canonical key ("" for the unpruned baseline).
            round: Search round (the baseline is round 0).
            metrics: Numbers (accuracy, invalid_rate, tflops, latency...); others are skipped.
            params: Extra parameters of this configuration.
            status: "complete", or "pruned" when the score is an upper bound.
            probe: What scored it; a probe of the full model (one-shot searchers) and its
                task accuracy are two child runs.
            tags: More tags of the child run (e.g. the parent's model, task, searcher, seed).
            run_name: Shown in the UI; default ``round R drop K``.
            artifacts: File name -> JSON-able content, stored with the child run (values
                too many to be metric columns, such as a probe's per-layer values).
            curve: The learning curve, step (examples seen) -> running accuracy (the trial's
                intermediate values), logged as the metric `CURVE_METRIC` with those steps.
        """

    def linked(self, parent_run_id: str | None) -> int:
        """How many configurations of `parent_run_id` were found logged by another search
        of its study (not logged again). 0 when nothing is known."""
        return 0

    @abc.abstractmethod
    def log_metrics(
        self, metrics: Mapping[str, Any], *, run_id: str | None = None, step: int | None = None
    ) -> None:
        """Log numeric metrics to `run_id` (default: the parent run)."""

    @abc.abstractmethod
    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Log a finished search's summary.json content as parent metrics and tags."""

    @abc.abstractmethod
    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload the files under `local_dir` (plots, tables, summary) to the parent run."""

    @abc.abstractmethod
    def finish(self, status: str = "FINISHED") -> None:
        """Close the parent run: FINISHED, FAILED or KILLED."""


class NullTracker(Tracker):
    """Records nothing (``tracking=none``, or a search without a tracking config)."""

    def start_search(self, params, tags, *, run_name=None, search_key=None) -> None:
        return None

    def log_configuration(
        self,
        parent_run_id,
        drop_key,
        round,
        metrics,
        params=None,
        *,
        status="complete",
        probe="task_accuracy",
        tags=None,
        run_name=None,
        artifacts=None,
        curve=None,
    ) -> None:
        return None

    def log_metrics(self, metrics, *, run_id=None, step=None) -> None:
        return None

    def log_summary(self, summary) -> None:
        return None

    def log_artifacts(self, local_dir, artifact_path=None) -> None:
        return None

    def finish(self, status: str = "FINISHED") -> None:
        return None
