"""What one search records in its tracker: a parent run, a child run per configuration.

The coordinator is the one process that sees every finished evaluation (its own and those of
workers on other machines), so it logs each child run as the observation arrives; a resumed
search reopens its parent run (same `search_key`) and does not log a configuration twice.
Tracking is best-effort throughout: the tracker warns on backend failures, never raises.

Metric names say what they were measured on (`outputs.OPT`, `HELDOUT`, `PROBE`), so one
name never holds two splits' values: a child run has ``opt.accuracy``, ``opt.tflops_per_example``
... from the search, and, once the search is over, ``heldout.tflops_per_example``, latency and
(for the reported picks) ``heldout.accuracy``. A probe's per-layer values (``bi.<layer>``,
``angular.<n>.<layer>``) are a JSON artifact of the child, not metric columns.

Children carry the parent's tags (model, task, searcher, seed, epsilon, ...) and the study's
name, so configuration runs can be filtered like searches. A configuration belongs to its
study: a second search on the same study (another epsilon, say) finds the child another
search logged, and counts it as linked instead of logging it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tale_opt.credentials import mask, mask_values
from tale_opt.pipeline.outputs import HELDOUT, OPT, PROBE, observation_record
from tale_opt.tracking import (
    NullTracker,
    Tracker,
    TrackingSettings,
    build_tracker,
    flatten_params,
    search_key,
    search_tags,
)
from tale_opt.tracking.records import PICKS, STUDY_TAG
from tale_opt.types import BOUNDED_BY, RACED_OUT, TASK_ACCURACY, Candidate, DropSet, Observation

# Config nodes that are not about the search itself (Hydra's own node never reaches here).
_NOT_PARAMS = ("debug",)
# Child-run artifact with a probe's per-layer values.
PROBE_VALUES = "probe_values.json"
# Per accepted configuration, what the search adds to its child run after the search.
_COST_KEYS = ("latency", "speedup_measured", "speedup_check")


def search_run_name(tags: Mapping[str, str]) -> str:
    """A parent run's name from its tags: searcher, model, task, seed and the settings an
    ablation varies, e.g. ``tale · smollm2 · arc_easy · seed 0 · ε 0.08 · max_drop 2``."""
    parts = [tags.get(k) for k in ("searcher", "model", "task")]
    labels = (
        ("seed", "seed"), ("epsilon", "ε"), ("n_drop", "n_drop"), ("max_drop", "max_drop"),
        ("n_opt", "n_opt"), ("scoring", "scoring"),
    )  # fmt: skip
    parts += [f"{label} {tags[k]}" for k, label in labels if tags.get(k)]
    return " · ".join(p for p in parts if p)


def configuration_run_name(searcher: str, obs: Observation, seed: str | None) -> str:
    """A child run's name: searcher, drop set (and probe), seed, e.g. ``tale drop 3,7 s0``."""
    name = f"{searcher} drop {obs.drop.key or 'none'}"
    if obs.candidate.probe != TASK_ACCURACY:
        name += f" ({obs.candidate.probe})"
    return name if seed is None else f"{name} s{seed}"


def configuration_metrics(obs: Observation) -> tuple[dict[str, Any], dict[str, float]]:
    """A child run's metrics (nested: flattened to ``opt.accuracy``, ``probe.perplexity``...)
    and a probe's per-layer values (dotted keys such as ``bi.3``; for an artifact)."""
    record = observation_record(obs)
    if OPT in record:
        return {OPT: record[OPT]}, {}
    values = record[PROBE]
    scalars = {k: v for k, v in values.items() if "." not in k}
    layers = {k: v for k, v in values.items() if "." in k}
    return {PROBE: scalars}, layers


def accepted_metrics(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per accepted configuration (drop key), what the finished search knows beyond its
    optimization result: held-out TFLOPs, latency and measured speed-up, and for the reported
    picks their held-out accuracy (with interval and paired test)."""
    out: dict[str, dict[str, Any]] = {}
    entries = [*(summary.get("trajectory") or [])]
    entries += [summary[p] for p, _ in PICKS if isinstance(summary.get(p), Mapping)]
    for entry in entries:
        key = DropSet.of(entry.get("drop_layers", [])).key
        metrics = out.setdefault(key, {})
        for name in _COST_KEYS:
            if entry.get(name) is not None:
                metrics[name] = entry[name]
        held = {k: v for k, v in (entry.get(HELDOUT) or {}).items() if v is not None}
        if held:
            metrics.setdefault(HELDOUT, {}).update(held)
    return out


class SearchTracking:
    """The tracker of one search and its parent run id.

    Use `SearchTracking.start(cfg, launch_dir=..., study=...)`; `tracking=none` (or no
    `tracking` node) gives an instance that records nothing.
    """

    def __init__(
        self,
        tracker: Tracker,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})  # the parent's tags, which every child carries too
        self._children: dict[str, str] = {}

    @classmethod
    def start(
        cls, cfg: Mapping[str, Any], *, launch_dir: str | Path | None, study: str
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
        tags = {**search_tags(params), STUDY_TAG: study}
        parent = tracker.start_search(
            params,
            tags,
            run_name=search_run_name(tags),
            search_key=search_key(flatten_params(params)),
        )
        return cls(tracker, parent, tags)

    @property
    def uri(self) -> str | None:
        """The tracking URI, password masked (it goes into summary.json)."""
        settings = getattr(self.tracker, "settings", None)
        return None if self.parent_run_id is None or settings is None else mask(settings.uri)

    def log_configuration(
        self, obs: Observation, curve: Mapping[int, float] | None = None
    ) -> None:
        """One child run for an evaluated configuration (accuracy and TFLOPs on the
        optimization split, or a probe's values), unless it has one already; with its learning
        curve (the trial's intermediate values) and, for a candidate stopped early, why:
        ``stopped_by`` and the rule's numbers (``raced_out.*`` / ``bounded_by.*``)."""
        if self.parent_run_id is None:
            return
        metrics, layers = configuration_metrics(obs)
        searcher = self.tags.get("searcher", "search")
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
            tags={k: v for k, v in self.tags.items() if k != STUDY_TAG},
            run_name=configuration_run_name(searcher, obs, self.tags.get("seed")),
            artifacts={PROBE_VALUES: layers} if layers else None,
            curve=curve,
        )
        if run_id is not None:
            self._children[obs.candidate.key] = run_id

    def finish(self, summary: Mapping[str, Any], out_dir: Path) -> None:
        """Held-out and cost metrics into the accepted configurations' child runs, summary
        metrics and tags, the run's tables and plots, then close the parent run."""
        if self.parent_run_id is None:
            return
        probe = str(summary.get("score_probe", TASK_ACCURACY))
        for drop_key, metrics in accepted_metrics(summary).items():
            run_id = self._children.get(Candidate(DropSet.parse(drop_key), probe).key)
            if run_id is not None:
                self.tracker.log_metrics(metrics, run_id=run_id)
        self.tracker.log_summary(summary)
        linked = self.tracker.linked(self.parent_run_id)
        self.tracker.log_metrics({"linked_configurations": linked})
        self.tracker.log_artifacts(out_dir)
        self.tracker.finish("FINISHED")

    def abort(self, status: str) -> None:
        """Close the parent run as FAILED or KILLED (a resume reopens it)."""
        if self.parent_run_id is not None:
            self.tracker.finish(status)
