"""Multi-task search: one drop set scored on several tasks, each on its own splits.

``tasks=[arc_easy_cloze,boolq]`` (composed per task by the CLI, `tale_opt.commands.tasks`)
makes a search whose candidate score is an aggregate of per-task optimization accuracies:
the mean (``multitask.aggregate=mean``, default) or the minimum (``min``: a layer set must not
hurt any task). Each task keeps everything a single-task search of it would have: its own task
config, scoring mode, prompt rendering, split sizes and seeded optimization / held-out splits
(the same ones a single-task search with that seed draws), so a candidate's per-task accuracy
equals that search's score of the candidate, and the aggregate is computed from them.

What is recorded per candidate, beside the aggregate ``accuracy`` (= the score):
``task.<name>.accuracy`` with its Wilson interval, ``n_correct``, ``n_examples`` and
``invalid_rate`` per task -- in the trial's result attribute, `candidate_results.csv` columns
and the MLflow child run. The per-example outcomes (for the paired round tests) are the tasks'
outcomes one after the other. After the search every pick is scored on each task's held-out
split, with its interval and the paired test against Baseline on that task's examples.

A multi-task search neither bounds nor races its candidates: every candidate is scored in
full. The ``exact`` pruner (the default) compares counts of correct examples of one split; an
aggregate of accuracies over splits of different sizes is no such count, and a count bound on
the task being scored says nothing about the tasks not scored yet. The exact version would be
the per-task bound (finished tasks at their accuracy, the current one at correct + remaining,
later ones at 1, aggregated) against the leader's aggregate; it is not implemented, so
``pruner=exact`` runs as ``pruner=none`` here (`suite_pruner` says so once). The racing
pruners (``paired``, ``successive_halving``, ``hyperband``) read one split's per-example
outcomes and learning curve against the round's leader, which an aggregate does not have, so
they are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tale_opt.coordination.racing import EXACT, NONE, PrunerSettings
from tale_opt.errors import ConfigValueError, UsageError, did_you_mean
from tale_opt.outcomes import decode_outcomes, outcome_record
from tale_opt.pipeline.candidates import (
    DEFAULT_PREFIX_CACHE_GB,
    CandidateEvaluator,
    check_eval_options,
    check_model_files,
    check_splits,
    load_spec,
    load_task_and_splits,
    model_spec,
    study_config,
)
from tale_opt.pipeline.significance import CORRECT
from tale_opt.stats import CI_HIGH, CI_LOW
from tale_opt.types import TASK_ACCURACY, Candidate, Observation

log = logging.getLogger("tale_opt")

AGGREGATES = ("mean", "min")
# Evaluation keys that belong to each task (its scoring defaults); the rest are shared.
PER_TASK_EVAL = ("scoring", "max_new_tokens", "chat_template")
# Per-task metrics kept on a candidate's observation, as ``task.<name>.<key>``.
TASK_METRICS = ("accuracy", CI_LOW, CI_HIGH, "accuracy_norm", "n_correct", "n_examples",
                "invalid_rate")  # fmt: skip
CSV_METRICS = ("accuracy", CI_LOW, CI_HIGH, "n_correct", "n_examples", "invalid_rate")


def task_metric(name: str, key: str) -> str:
    """The metric key of task `name`'s `key` on a multi-task candidate."""
    return f"task.{name}.{key}"


def task_metrics(metrics: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Task `name`'s metrics of a multi-task candidate, under their single-task keys."""
    prefix = task_metric(name, "")
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


def is_multitask(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("tasks"))


def aggregate(values: Sequence[float], how: str) -> float:
    """The candidate score of per-task accuracies: their mean or their minimum."""
    if how == "mean":
        return sum(values) / len(values)
    if how == "min":
        return min(values)
    raise ConfigValueError(f"multitask.aggregate must be mean or min, but got {how!r}")


def aggregate_option(cfg: Mapping[str, Any]) -> str:
    """``multitask.aggregate``, checked.

    Raises:
        ConfigValueError: Not one of `AGGREGATES`.
    """
    how = dict(cfg.get("multitask") or {}).get("aggregate", "mean")
    if how not in AGGREGATES:
        raise ConfigValueError(
            f"multitask.aggregate must be one of {', '.join(AGGREGATES)}, but got {how!r}"
            f".{did_you_mean(str(how), AGGREGATES)}"
        )
    return how


def _entries(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``tasks`` of a search config: task name -> its composed task, eval and split sizes."""
    tasks = cfg["tasks"]
    if not isinstance(tasks, Mapping) or not all(
        isinstance(e, Mapping) and isinstance(e.get("task"), Mapping) for e in tasks.values()
    ):
        raise UsageError(
            f"tasks={tasks!r} holds task names, not composed task configs; start a multi-task "
            "search with `python -m tale_opt 'tasks=[A,B]'`, which composes each task"
        )
    if len(tasks) < 2:
        raise UsageError("a multi-task search needs at least two tasks (one task: task=NAME)")
    return {str(name): dict(entry) for name, entry in tasks.items()}


def suite_search_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A multi-task search config as the pipeline reads it: ``task`` only names the tasks
    (``arc_easy_cloze+boolq``, for run names and tags), ``eval`` keeps the keys every task
    shares (scoring mode, tokens to decode and chat template are each task's), and the top-level
    split sizes are the tasks' common ones (None where they differ: see each task's entry).

    Raises:
        UsageError: ``tasks`` without composed task configs, fewer than two, a bad aggregate.
    """
    entries = _entries(cfg)
    aggregate_option(cfg)
    out = dict(cfg)
    out["task"] = {"name": "+".join(entries)}
    out["eval"] = {k: v for k, v in dict(cfg["eval"]).items() if k not in PER_TASK_EVAL}
    for key in ("n_opt", "n_eval"):
        values = {e.get(key) for e in entries.values()}
        out[key] = values.pop() if len(values) == 1 else None
    return out


def suite_study_config(cfg: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """`study_config` of a multi-task search: the shared `config` plus, per task, the keys
    a single-task study config has for it (``task``, ``eval``, ``n_opt``, ``n_eval``), and the
    aggregate. Every task's evaluation options are checked.

    Raises:
        UsageError: A bad option of any task, or a bad aggregate.
    """
    tasks = {}
    for name, entry in _entries(cfg).items():
        single = study_config({**cfg, **entry})
        tasks[name] = {k: single[k] for k in ("task", "eval", "n_opt", "n_eval")}
        check_eval_options(task_view(config, tasks[name]))
    return {**config, "tasks": tasks, "aggregate": aggregate_option(cfg)}


def task_view(config: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The single-task study config of one task of a multi-task study config."""
    view = {k: v for k, v in config.items() if k not in ("tasks", "aggregate")}
    return {**view, **entry}


@dataclass(frozen=True)
class SuiteTask:
    """One task of a multi-task search: its single-task config view, task and splits."""

    name: str
    config: dict[str, Any]
    task: Any
    splits: Any


def load_suite(config: Mapping[str, Any]) -> list[SuiteTask]:
    """Every task of a multi-task study config with its splits, in the listed order.

    Raises:
        UsageError: A task's data or split settings are bad.
    """
    suite = []
    for name, entry in config["tasks"].items():
        view = task_view(config, entry)
        task, splits = load_task_and_splits(view)
        suite.append(SuiteTask(name, view, task, splits))
    return suite


def suite_pruner(pruner: PrunerSettings) -> PrunerSettings:
    """The pruner a multi-task search runs with: ``none`` (see the module docstring).

    ``exact`` (the default) becomes ``none``, saying so once, since it would only be asked
    for by leaving the default; a racing pruner is refused.

    Raises:
        UsageError: `pruner` races (``paired``, ``successive_halving``, ``hyperband``).
    """
    if pruner.races:
        raise UsageError(
            f"pruner={pruner.name} races candidates on one task's examples, but a multi-task "
            "search scores an aggregate of several tasks' accuracies, which it cannot race; "
            "use pruner=none (every candidate scored in full, as the default does here)"
        )
    if pruner.name == EXACT:
        log.info(
            "multi-task search: every candidate is scored in full (exact early termination "
            "bounds one task's count of correct examples, not an aggregate of accuracies)"
        )
    return PrunerSettings(NONE)


def check_searcher(searcher: Any) -> None:
    """A multi-task search scores candidates by task accuracy only.

    Raises:
        UsageError: The searcher ranks layers by a probe that reads one text.
    """
    if searcher.probe != TASK_ACCURACY:
        raise UsageError(
            f"searcher '{searcher.name}' ranks layers by {searcher.probe}, but a multi-task "
            "search scores candidates by their task accuracies; use searcher=tale (or random)"
        )


def suite_fingerprint(
    config: Mapping[str, Any], model_identity: Mapping[str, Any], suite: Sequence[SuiteTask]
) -> dict[str, Any]:
    """Everything that determines a multi-task candidate's score: the model, every task (its
    prompt version, splits and scoring options, in order) and the aggregate."""
    return {
        "model": dict(model_identity),
        "tasks": [
            {
                "task": t.name,
                "prompt_version": t.task.prompt_version,
                "splits": t.splits.fingerprint,
                "eval": dict(t.config["eval"]),
            }
            for t in suite
        ],
        "aggregate": config["aggregate"],
        "searcher": config["searcher"],
        "probe": config["probe"],
        "seed": config["seed"],
    }


class MultiTaskEvaluator:
    """Scores candidates on every task's optimization split with one model; callable as
    ``evaluate(candidate)`` like `CandidateEvaluator` (one of which it holds per task).

    Args:
        config: `suite_study_config` of the search.
        expected: The study's fingerprint; every task's splits and the model files are
            checked against it.
        device, model_path: As for `CandidateEvaluator`.
        suite: The tasks, already loaded by the caller (the coordinator).
        progress: Show a progress bar per task and candidate.

    Raises:
        UsageError: Splits or model files that are not the study's.
    """

    # No `race` hook (so workers call it without one): the count bound and the racing rules
    # of one task are no bound of the aggregate (module docstring), and the search's pruner is
    # ``none`` anyway (`suite_pruner`).
    supports_race = False
    takes_base = True

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        expected: Mapping[str, Any] | None = None,
        device: str | None = None,
        model_path: str | None = None,
        suite: Sequence[SuiteTask] | None = None,
        progress: bool = False,
    ) -> None:
        suite = list(suite) if suite is not None else load_suite(config)
        spec = model_spec(config, device, model_path)
        if expected is not None:
            wanted = [t.get("splits") for t in expected.get("tasks", [])]
            if len(wanted) != len(suite):
                raise UsageError("the study's tasks are not this search's; start a new study")
            for part, splits in zip(suite, wanted, strict=True):
                check_splits(part.task, part.splits, splits)
            check_model_files(spec, expected, model_path)
        self.aggregate = str(config["aggregate"])
        self.model, self.tokenizer = load_spec(spec)
        # The prefix-reuse memory is shared out between the tasks' caches.
        budget = float(config.get("prefix_cache_gb", DEFAULT_PREFIX_CACHE_GB)) / len(suite)
        self.suite = suite
        self.parts = {
            t.name: CandidateEvaluator(
                {**t.config, "prefix_cache_gb": budget},
                task=t.task,
                splits=t.splits,
                progress=progress,
                loaded=(self.model, self.tokenizer),
            )  # fmt: skip
            for t in suite
        }

    def __call__(self, candidate: Candidate, *, base: Any = None) -> Observation:
        if candidate.probe != TASK_ACCURACY:
            raise UsageError(
                f"a multi-task search scores task accuracy, not probe {candidate.probe!r}"
            )
        observations = {name: part(candidate, base=base) for name, part in self.parts.items()}
        return combine(candidate, observations, self.aggregate)

    def release_caches(self) -> None:
        for part in self.parts.values():
            part.release_caches()


def combine(
    candidate: Candidate, observations: Mapping[str, Observation], how: str
) -> Observation:
    """One candidate's multi-task observation from its per-task ones (all complete).

    The score and ``accuracy`` are the aggregate; there is no interval for it (its per-task
    parts have theirs). TFLOPs and seconds add up over the tasks; ``invalid_rate`` is over
    every example scored. The per-example outcomes follow one another in task order (the
    paired round tests pool them); the baseline's predictions carry their task.
    """
    scores = [obs.score for obs in observations.values()]
    n_examples = sum(obs.metrics.get("n_examples", 0) for obs in observations.values())
    n_invalid = sum(obs.metrics.get("n_invalid", 0) for obs in observations.values())
    metrics: dict[str, Any] = {
        "accuracy": aggregate(scores, how),
        "invalid_rate": n_invalid / n_examples if n_examples else None,
        "n_examples": n_examples,
        "seconds": sum(obs.metrics.get("seconds", 0.0) for obs in observations.values()),
        "tflops": sum(obs.metrics.get("tflops", 0.0) for obs in observations.values()),
    }
    extras: dict[str, Any] = {}
    # One outcome record over the tasks' examples, task after task (example i of the second
    # task is bit n_first + i), so the paired tests pair a pick with Baseline example by example.
    joined: dict[int, bool] | None = {}
    offset = 0
    for obs in observations.values():
        seen = decode_outcomes(obs.extras.get(CORRECT))
        if seen is None or joined is None:
            joined = None
            break
        joined.update({offset + i: right for i, right in seen.items()})
        offset += int(obs.metrics.get("n_examples", len(seen)))
    if joined is not None:
        extras[CORRECT] = outcome_record(offset, joined)
    predictions = []
    for name, obs in observations.items():
        for key in TASK_METRICS:
            if obs.metrics.get(key) is not None:
                metrics[task_metric(name, key)] = obs.metrics[key]
        predictions += [{"task": name, **row} for row in obs.extras.get("predictions", [])]
    if predictions:
        extras["predictions"] = predictions
    return Observation(candidate, metrics["accuracy"], metrics, extras)


def evaluator_for(config: Mapping[str, Any], **options: Any) -> Any:
    """The candidate evaluator of a study config: `MultiTaskEvaluator` for a multi-task
    search, else `CandidateEvaluator` (what a worker rebuilds from the study)."""
    if "tasks" in config:
        return MultiTaskEvaluator(config, **options)
    return CandidateEvaluator(config, **options)


def candidate_fields(suite: Sequence[SuiteTask]) -> tuple[str, ...]:
    """The `candidate_results.csv` columns of the per-task metrics."""
    return tuple(task_metric(t.name, key) for t in suite for key in CSV_METRICS)
