"""What tale_opt writes to a tracking backend, as plain dicts (standard library only).

Shared by the MLflow tracker (writing) and the comparison report (reading), so both agree on
names. MLflow's limits are respected here: keys may only hold alphanumerics, ``_ - . / :`` and
spaces and are at most 250 characters; parameter values at most 6000 characters. Longer
values are cut with a marker (and a hash of the whole value, so two different long values
never look equal).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
_BAD_KEY_CHARS = re.compile(r"[^\w\-./: ]")

# Tag keys (namespaced, so they never clash with MLflow's own `mlflow.*` tags).
KIND_TAG = "tale_opt.kind"  # "search" (parent) or "configuration" (child)
SEARCH_KEY_TAG = "tale_opt.search_key"
DROP_KEY_TAG = "tale_opt.drop_key"
CANDIDATE_TAG = "tale_opt.candidate"  # child: the candidate key (probe:drop key), its identity
ROUND_TAG = "tale_opt.round"
STATUS_TAG = "tale_opt.status"
PROBE_TAG = "tale_opt.probe"  # what scored the configuration (task_accuracy, perplexity, ...)
STUDY_TAG = "tale_opt.study"  # the Optuna study a search (and its configurations) belong to
SCORE_PROBE_TAG = "tale_opt.score_probe"  # parent: what its picks' optimization scores are
TASK_ACCURACY = "task_accuracy"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
# Child metric of the learning curve: accuracy on the examples seen, step = examples seen.
CURVE_METRIC = "running_accuracy"

# Config keys that say where or how a search runs, not what it searches: left out of
# `search_key`, so moving the storage or adding workers still resumes the same parent run.
WHERE_KEYS = ("debug", "workers", "study", "storage.", "tracking.", "hydra.")
# Tags of a parent run: config key -> tag name (what the MLflow UI and `report` group by).
SEARCH_TAGS = {
    "model.name": "model",
    "task.name": "task",
    "searcher.name": "searcher",
    "seed": "seed",
    "searcher.epsilon": "epsilon",
    "n_opt": "n_opt",
    "searcher.max_drop": "max_drop",
    "searcher.n_drop": "n_drop",
    "eval.scoring": "scoring",
}

# The configurations a finished search reports (summary.json keys), and their display names.
PICKS = (
    ("baseline", "Baseline"),
    ("best", "Best"),
    ("bsba", "BSBA"),
    ("ae_hm", "AE-HM"),
    ("final", "Final"),
)


def child_key(drop_key: str, probe: str = TASK_ACCURACY) -> str:
    """Identity of a child run within its parent: the drop set, and the probe unless it is
    task accuracy (a one-shot searcher scores the full model with a probe *and* accuracy)."""
    return drop_key if probe == TASK_ACCURACY else f"{probe}:{drop_key}"


def sanitize_key(key: str) -> str:
    """A valid MLflow key: bad characters become ``_``, at most 250 characters."""
    key = _BAD_KEY_CHARS.sub("_", str(key)).strip("/") or "_"
    return key[:MAX_KEY_LENGTH]


def truncate(value: str, limit: int = MAX_PARAM_LENGTH) -> str:
    """`value` if it fits in `limit` characters, else a prefix + a marker with a hash."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:12]
    marker = f"...[truncated, {len(value)} chars, sha256 {digest}]"
    return value[: limit - len(marker)] + marker


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)  # null/true/false: the YAML-ish spelling of the config
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into dotted keys with string values, e.g. ``model.dtype``.

    Lists stay one value (JSON), since their elements are rarely meaningful on their own
    (``searcher.protected: [0, 31]``). Empty mappings become ``{}``.
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, dotted))
        else:
            out[sanitize_key(dotted)] = truncate(_value_text(value))
    return out


# Config keys that only mean something beside another one: without it they change nothing.
_INERT_WITHOUT = {"multitask.aggregate": "tasks"}


def comparable_settings(params: Mapping[str, str]) -> dict[str, str]:
    """`params` as a run's settings for grouping runs: a key set to null is the same setting
    as the key missing, and a key inert without its companion (`_INERT_WITHOUT`) is dropped.

    A release that adds a config key logs it at its do-nothing value (``tasks=null``) where an
    earlier release logged nothing; the runs of one ablation started before and after an
    upgrade must still group together.
    """
    settings = {k: v for k, v in params.items() if v != "null"}
    for key, companion in _INERT_WITHOUT.items():
        if companion not in settings:
            settings.pop(key, None)
    return settings


def search_key(params: Mapping[str, str], ignore: Iterable[str] = WHERE_KEYS) -> str:
    """A stable id of a search from its flattened config, minus the keys in `ignore`.

    Entries of `ignore` ending in "." drop every key under them; others drop that exact key.

    Two runs of the same command get the same key (so a resumed search reuses its parent run);
    an epsilon sweep over one study gets different keys (different searches).
    """
    ignore = tuple(ignore)
    prefixes = tuple(i for i in ignore if i.endswith("."))  # "storage." = everything under it

    def where(key: str) -> bool:
        return key in ignore or key.startswith(prefixes)

    kept = {k: v for k, v in sorted(params.items()) if not where(k)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def search_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """The parent-run tags of a resolved search config (model falls back to its path); a
    setting that is null (e.g. `n_drop` of a search that stops by epsilon) gets no tag."""
    flat = flatten_params(config)
    flat.setdefault("model.name", flat.get("model.path", "?"))
    return {
        tag: flat[key] for key, tag in SEARCH_TAGS.items() if key in flat and flat[key] != "null"
    }


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Keep the numbers (bools as 0/1, nested mappings flattened); drop None, text and NaN."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_metrics(value, f"{name}."))
        elif isinstance(value, bool | int | float) and not (
            isinstance(value, float) and math.isnan(value)
        ):
            out[sanitize_key(name)] = float(value)
    return out


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Parent-run metrics of a finished search, from its summary.json content.

    Names: ``threshold``, ``num_layers``, ``n_opt``, ``n_eval``, and per pick (``baseline``,
    ``best``, ``bsba``, ``ae_hm``, ``final``): ``<pick>.score`` (what the searcher ranks by:
    see the `SCORE_PROBE_TAG`), ``<pick>.n_dropped``, ``<pick>.n_layers``,
    ``<pick>.speedup_estimate``, the optimization split's ``<pick>.opt.accuracy``,
    ``<pick>.opt.accuracy_ci_low`` ..., ``<pick>.opt.tflops_per_example``, the held-out
    split's ``<pick>.heldout.accuracy``, ``<pick>.heldout.tflops_per_example`` ..., and
    whatever else numeric the pick holds (``<pick>.latency.b1.ttft_ms``,
    ``<pick>.speedup_measured``). (summary.json's ``baseline_accuracy`` is ``baseline.score``
    here: for a perplexity-probe searcher it is no accuracy.)
    """
    out = numeric_metrics(
        {k: summary.get(k) for k in ("threshold", "num_layers", "n_opt", "n_eval")}
    )
    for pick, _ in PICKS:
        record = summary.get(pick)
        if isinstance(record, Mapping):
            body = {k: v for k, v in record.items() if k != "drop_layers"}
            out.update(numeric_metrics(body, f"{pick}."))
    return out


def summary_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    """Parent-run tags of a finished search: stop reason, the probe its optimization scores
    come from, and each pick's dropped layers."""
    tags = {
        "tale_opt.stop_reason": str(summary.get("stop_reason")),
        SCORE_PROBE_TAG: str(summary.get("score_probe", TASK_ACCURACY)),
    }
    for pick, _ in PICKS:
        record = summary.get(pick)
        if isinstance(record, Mapping) and "drop_layers" in record:
            tags[f"tale_opt.{pick}.drop"] = ",".join(str(i) for i in record["drop_layers"])
    return tags


def seed_order(seed: str) -> tuple[int, float, str]:
    """Sort key of seeds as tags hold them: numbers in numeric order, then any other text."""
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)
