"""Experiment tracking of searches (MLflow). The only part of tale_opt that imports mlflow.

Importing this package is cheap: mlflow itself is imported on the first backend call.

    tracker = build_tracker(cfg.get("tracking"), base_dir=launch_dir)
    parent = tracker.start_search(cfg, tags, search_key=search_key(flatten_params(cfg)))
    tracker.log_configuration(parent, "3,7", round=2, metrics={"accuracy": 0.61})
    tracker.log_summary(summary); tracker.log_artifacts(out_dir); tracker.finish()

Other processes log into the same search with `tracker_from_info(tracker.worker_info())`.
"""

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
    build_tracker,
    resolve_tracking_uri,
    tracker_from_info,
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
    "tracker_from_info",
]
