"""The MLflow run of one fine-tune: settings as params, the training loss and learning rate
as step series, held-out accuracy before and after, the adapter and summary as artifacts.

When the fine-tuned model comes from a search, the run is created in the search's experiment
and nested under its parent run (`mlflow.parentRunId`), so the MLflow UI shows the fine-tune
beside the configurations the search evaluated. A resumed fine-tune (same output directory and
settings: the same `run_key`) reopens its run instead of starting another. Like every tracker
call, a backend failure is a warning, never a failed fine-tune.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tale_opt.tracking import records as rec
from tale_opt.tracking.base import NullTracker, Tracker
from tale_opt.tracking.settings import TrackingSettings

FINETUNE_KEY_TAG = "tale_opt.finetune_key"
FINETUNE_KIND = "finetune"


class FinetuneRun:
    """One fine-tune's run; records nothing with ``tracking=none`` or no backend."""

    def __init__(self, tracker: Tracker, run_id: str | None = None) -> None:
        self.tracker = tracker
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        node: Mapping[str, Any] | None,
        *,
        base_dir: str | Path | None,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_key: str,
        run_name: str,
        parent_run_id: str | None = None,
    ) -> FinetuneRun:
        """Open (or reopen, by `run_key`) the fine-tune's run.

        Raises:
            UsageError: An invalid tracking node. An unreachable backend only warns.
        """
        from tale_opt.tracking import build_tracker

        settings = TrackingSettings.from_mapping(node)
        tracker = build_tracker(settings, base_dir=base_dir)
        if isinstance(tracker, NullTracker):
            return cls(tracker)
        all_tags = {**tags, rec.KIND_TAG: FINETUNE_KIND, FINETUNE_KEY_TAG: run_key}
        if parent_run_id:
            all_tags[rec.PARENT_TAG] = parent_run_id

        def open_run() -> str:
            client = tracker._client()
            experiment_id = tracker._experiment()
            if parent_run_id:  # a nested run must live in its parent's experiment
                experiment_id = client.get_run(parent_run_id).info.experiment_id
            found = client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{FINETUNE_KEY_TAG}` = '{run_key}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if found:
                run_id = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
                return run_id
            run = client.create_run(
                experiment_id, tags={k: str(v) for k, v in all_tags.items()}, run_name=run_name
            )
            tracker._log_batch(run.info.run_id, params=rec.flatten_params(params))
            return run.info.run_id

        return cls(tracker, tracker._guard("start the fine-tune's run", open_run))

    @property
    def uri(self) -> str | None:
        settings = getattr(self.tracker, "settings", None)
        return None if self.run_id is None or settings is None else settings.uri

    def log_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Metrics of one training step (loss, learning rate, ...) as series points."""
        if self.run_id is not None:
            self.tracker.log_metrics(metrics, run_id=self.run_id, step=step)

    def log_result(self, metrics: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """The finished fine-tune's numbers (held-out accuracy before and after, ...)."""
        if self.run_id is None:
            return
        tracker, run_id = self.tracker, self.run_id
        numbers = rec.numeric_metrics(metrics)
        tracker._guard(
            "log the fine-tune's result",
            lambda: tracker._log_batch(run_id, numbers, tags=dict(tags)),
        )

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is None or not self.tracker.settings.log_artifacts:
            return
        tracker, run_id = self.tracker, self.run_id
        tracker._guard(
            f"upload artifacts from {local_dir}",
            lambda: tracker._client().log_artifacts(run_id, str(local_dir), artifact_path),
        )

    def log_file(self, path: str | Path) -> None:
        """Upload one file (summary, loss curve) to the run's artifact root."""
        if self.run_id is None or not self.tracker.settings.log_artifacts:
            return
        tracker, run_id = self.tracker, self.run_id
        tracker._guard(f"upload {path}", lambda: tracker._client().log_artifact(run_id, str(path)))

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        tracker, run_id = self.tracker, self.run_id
        tracker._guard(
            "close the fine-tune's run", lambda: tracker._client().set_terminated(run_id, status)
        )
