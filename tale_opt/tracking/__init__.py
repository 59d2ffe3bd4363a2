"""Experiment tracking of searches (MLflow). The only part of tale_opt that imports mlflow.

Importing this package is cheap: mlflow itself is imported on the first backend call.

    tracker = build_tracker(cfg.get("tracking"), base_dir=launch_dir)
    parent = tracker.start_search(cfg, tags, search_key=search_key(flatten_params(cfg)))
    tracker.log_configuration(parent, "3,7", round=2, metrics={"accuracy": 0.61})
    tracker.log_summary(summary); tracker.log_artifacts(out_dir); tracker.finish()
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tale_opt.tracking.base import NullTracker, Tracker, TrackingWarning
from tale_opt.tracking.records import (
    flatten_params,
    numeric_metrics,
    search_key,
    search_tags,
    summary_metrics,
    summary_tags,
)
from tale_opt.tracking.settings import (
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    TrackingSettings,
    resolve_tracking_uri,
)

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_TRACKING_URI",
    "NullTracker",
    "Tracker",
    "TrackingSettings",
    "TrackingWarning",
    "build_tracker",
    "flatten_params",
    "numeric_metrics",
    "resolve_tracking_uri",
    "search_key",
    "search_tags",
    "summary_metrics",
    "summary_tags",
]


def build_tracker(
    node: TrackingSettings | Mapping[str, Any] | None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Tracker:
    """The tracker a `tracking` config node asks for (MLflow is imported only on first use).

    Raises:
        UsageError: Invalid settings (bad kind, key or value). Backend problems never raise.
    """
    settings = node if isinstance(node, TrackingSettings) else TrackingSettings.from_mapping(node)
    if settings.kind == "none":
        return NullTracker()
    # Here, not in settings.py: the MLflow tracker reads the settings module itself.
    from tale_opt.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker.from_settings(settings.resolved(base_dir))
