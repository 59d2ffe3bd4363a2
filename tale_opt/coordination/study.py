"""One Optuna study per search: its name, its identity check, and trials <-> observations.

A study is keyed by a fingerprint of everything that determines a candidate's score (model and
revision, dtype, task and prompt version, splits, scoring, searcher and probe, seed). Options
that only change when the search stops (epsilon, max_drop) are left out on purpose, so an
epsilon sweep or a raised cap reuses the evaluations already made instead of repeating them.

One trial is one record of one evaluation; each fact is stored once:

* the candidate key (``Candidate.key``, e.g. ``task_accuracy:3,7``) in the user attribute
  ``tale_opt.candidate``. It is also the marker that a coordinator enqueued this trial:
  workers evaluate only marked trials, the coordinator counts only marked ones. The drop set,
  the probe and the round (the number of dropped layers) are read from it, never stored apart.
* the score: a COMPLETE trial's value (the objective's return value); for a PRUNED one, the
  upper bound ``upper_bound`` in its result metrics (a PRUNED trial's value is what Optuna
  makes it: its last intermediate value, the accuracy on the examples it saw). Complete or
  pruned is the trial's state.
* the learning curve: the running accuracy (correct so far / examples seen) as the trial's
  intermediate values, step = examples seen, one per batch (`tale_opt.coordination.racing`).
* ``tale_opt.result`` -- {metrics, extras} of the evaluation, set by the worker in one write;
  its extras hold the per-example outcomes (``correct``, `tale_opt.outcomes`) and, for a
  candidate stopped early, why: ``bounded_by`` (exact) or ``raced_out`` (a racing pruner).
* ``tale_opt.prunable`` -- set by the coordinator when the worker may stop this candidate
  early, by the search's pruner (`tale_opt.coordination.racing`: the exact bound, or a racing
  pruner named in the study config); ``tale_opt.base`` -- the round's shared drop set (where
  prefix reuse starts).
* ``tale_opt.worker`` -- who evaluated it; ``tale_opt.error`` -- why the evaluation raised;
  ``tale_opt.stray`` -- a trial that `study.ask()` created when the queue emptied under a
  worker's feet (never evaluated).

Trials written by earlier versions also carry ``tale_opt.drop``, ``tale_opt.probe`` and
``tale_opt.round``, the score inside ``tale_opt.result``, a pruned trial's bound as its value
and outcomes as a ``"0110…"`` string; they read the same.

For optuna-dashboard (and `optuna.visualization`), whose slice, importance and parallel
coordinate plots read trial *params* with distributions, the coordinator also gives each
trial a view of its candidate as params (`trial_params`): ``round`` (layers dropped),
``layer`` (the layer its round adds to the round's shared drop set; -1 where there is none:
the full model, one-shot and random drop sets) and ``probe``. They are derived from the
candidate key and never read back. The objective is named (`name_objective`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from searchers.base import Searcher
from tale_opt.errors import UsageError
from tale_opt.outcomes import OUTCOMES_KEY
from tale_opt.types import PERPLEXITY, PROBES, Candidate, DropSet, Observation, Status

# Result extras key of the per-example outcomes (`tale_opt.outcomes.outcome_record`).
OUTCOMES = OUTCOMES_KEY

MARKER = "tale_opt.candidate"
PRUNABLE = "tale_opt.prunable"
BASE = "tale_opt.base"  # the round's shared drop set: where prefix reuse starts
RESULT = "tale_opt.result"
WORKER, ERROR, STRAY = "tale_opt.worker", "tale_opt.error", "tale_opt.stray"
# Study user attributes.
FINGERPRINT = "tale_opt.fingerprint"
CONFIG = "tale_opt.config"  # what a worker needs to rebuild the evaluator (JSON)
FINISHED = "tale_opt.finished"


def fingerprint_hash(fingerprint: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-serializable fingerprint."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def default_study_name(parts: list[Any], fingerprint: Mapping[str, Any]) -> str:
    """Readable prefix (e.g. task, model, searcher, seed) plus the fingerprint's hash."""
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(p)).strip("_") for p in parts)
    return f"{slug}-{fingerprint_hash(fingerprint)}"


def open_study(
    storage: Any, name: str, fingerprint: Mapping[str, Any], config: Mapping[str, Any]
) -> optuna.Study:
    """Create the study `name`, or resume it if its fingerprint is `fingerprint`.

    Raises:
        UsageError: The study exists but was made for a different search.
    """
    fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as stored: plain JSON
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),  # never asked: trials are enqueued
        load_if_exists=True,
    )
    if _check_resumable(study, fingerprint):
        study.set_user_attr(FINGERPRINT, fingerprint)
        study.set_user_attr(CONFIG, json.loads(json.dumps(config, default=str)))
    return study


def check_study(storage: Any, name: str, fingerprint: Mapping[str, Any]) -> None:
    """Raise what `open_study` would raise, without creating anything (checked before the
    model loads, so a study of another search fails in seconds, not after the load).

    Raises:
        UsageError: The study exists but was made for a different search.
    """
    try:
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
        )
    except KeyError:
        return
    _check_resumable(study, json.loads(json.dumps(fingerprint, default=str)))


def _check_resumable(study: optuna.Study, fingerprint: Mapping[str, Any]) -> bool:
    """Whether `study` is new (no fingerprint yet); raise if it is another search's."""
    name, stored = study.study_name, study.user_attrs.get(FINGERPRINT)
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise UsageError(
                f"study {name!r} exists but was not created by tale_opt; choose another study=NAME"
            )
        return True
    if stored != fingerprint:
        raise UsageError(
            f"study {name!r} belongs to a different search ({_differences(stored, fingerprint)}); "
            "use another study=NAME, or leave study unset to derive one from the configuration"
        )
    return False


def load_study(storage: Any, name: str) -> optuna.Study | None:
    """The existing tale_opt study `name`, or None while it does not exist yet."""
    try:
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
        )
    except KeyError:
        return None
    if FINGERPRINT not in study.user_attrs:
        return None  # being created right now, or not a tale_opt study
    return study


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            inner = _differences(a, b, f"{prefix}{key}.")
            diffs.extend([inner] if inner else [])
        elif a != b:
            diffs.append(f"{prefix}{key}: study has {a!r}, this run has {b!r}")
    return "; ".join(diffs)


def is_finished(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get(FINISHED, False))


def set_finished(study: optuna.Study, finished: bool) -> None:
    """Tell workers whether the search is over (they leave when it is)."""
    study.set_user_attr(FINISHED, finished)


def enqueue(
    study: optuna.Study,
    candidate: Candidate,
    *,
    prunable: bool = False,
    base: DropSet | None = None,
    num_layers: int | None = None,
) -> None:
    """Queue `candidate` as a WAITING trial carrying the marker (workers claim the oldest
    waiting trial first, so candidates run in the order they are enqueued). `base`, the drop
    set every candidate of its round shares, lets a worker start prefix reuse at once. With
    `num_layers` (the full model's) the trial also gets `trial_params`."""
    attrs: dict[str, Any] = {MARKER: candidate.key}
    if prunable:
        attrs[PRUNABLE] = True
    if base is not None:
        attrs[BASE] = base.key
    params, distributions = {}, {}
    if num_layers is not None:
        params, distributions = trial_params(candidate, num_layers, base)
    # What `Study.enqueue_trial` does, plus params with their distributions.
    study.add_trial(
        create_trial(
            state=TrialState.WAITING, params=params, distributions=distributions,
            user_attrs=attrs, system_attrs={"fixed_params": params},
        )
    )  # fmt: skip


def trial_params(
    candidate: Candidate, num_layers: int, base: DropSet | None = None
) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """The dashboard's view of a candidate: ``round``, ``layer`` and ``probe`` with their
    distributions (the same for every trial of a study, which importance plots need)."""
    added = set(candidate.drop) - set(base or ())
    layer = added.pop() if base is not None and len(added) == 1 else -1
    params = {"round": len(candidate.drop), "layer": layer, "probe": candidate.probe}
    distributions: dict[str, BaseDistribution] = {
        "round": IntDistribution(0, num_layers),
        "layer": IntDistribution(-1, num_layers - 1),
        "probe": CategoricalDistribution(PROBES),
    }
    return params, distributions


def name_objective(study: optuna.Study, score_probe: str) -> None:
    """Name the trials' value for dashboards: the optimization split's accuracy, or minus
    the probe text's perplexity for a searcher that ranks by perplexity."""
    name = "-perplexity (probe text)" if score_probe == PERPLEXITY else "accuracy (opt split)"
    if study.metric_names != [name]:
        study.set_metric_names([name])


def round_base(candidates: list[Candidate]) -> DropSet | None:
    """The drop set shared by a batch of proposed candidates of one size (a greedy round's
    current model), or None when there is no such round."""
    sizes = {len(c.drop) for c in candidates}
    if len(candidates) < 2 or len(sizes) != 1:
        return None
    shared = set.intersection(*(set(c.drop) for c in candidates))
    return DropSet.of(shared) if len(shared) == sizes.pop() - 1 else None


def base_of(trial: FrozenTrial | optuna.Trial) -> DropSet | None:
    """The round base the coordinator stored with a trial, if any."""
    key = trial.user_attrs.get(BASE)
    return None if key is None else DropSet.parse(key)


def is_prunable(trial: FrozenTrial | optuna.Trial) -> bool:
    """Whether the coordinator allowed stopping this trial's candidate early."""
    return bool(trial.user_attrs.get(PRUNABLE, False))


@dataclass(frozen=True)
class Rival:
    """A completed candidate of a round: its drop set, correct count and per-example outcomes
    (an `outcome_record`, None when the trial has none)."""

    drop: DropSet
    n_correct: int
    outcomes: Any = None


def completed_rivals(
    study: optuna.Study, candidate: Candidate, trials: Iterable[FrozenTrial] | None = None
) -> list[Rival]:
    """Every COMPLETE marked trial with `candidate`'s probe and number of dropped layers: the
    finished rivals early termination and racing compare against.

    Reads the study's complete trials, unless the caller has just read them (`trials`).
    Trials without an exact count of correct examples are left out.
    """
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out = []
    for trial in trials:
        other = candidate_of(trial)
        if other is None or trial.state != TrialState.COMPLETE:
            continue
        if other.probe != candidate.probe or len(other.drop) != len(candidate.drop):
            continue
        if other.key == candidate.key:
            continue
        result = trial.user_attrs.get(RESULT, {})
        n_correct = result.get("metrics", {}).get("n_correct")
        if n_correct is not None:
            outcomes = result.get("extras", {}).get(OUTCOMES)
            out.append(Rival(other.drop, int(n_correct), outcomes))
    return out


def completed_counts(
    study: optuna.Study, candidate: Candidate, trials: Iterable[FrozenTrial] | None = None
) -> list[tuple[DropSet, int]]:
    """``(drop set, n correct)`` of `completed_rivals`."""
    return [(r.drop, r.n_correct) for r in completed_rivals(study, candidate, trials)]


def in_round_of(candidate: Candidate, trial: FrozenTrial) -> bool:
    """Whether `trial` is `candidate`'s or one of its round's rivals (same probe and base)."""
    other = candidate_of(trial)
    if other is None or other.probe != candidate.probe:
        return False
    return other.drop == candidate.drop or Searcher.rivals(candidate.drop, other.drop) is not None


def parse_candidate_key(key: str) -> Candidate:
    """Inverse of `Candidate.key`: ``"task_accuracy:3,7"`` -> the candidate."""
    probe, sep, drop = key.rpartition(":")
    if not sep or not probe:
        raise ValueError(f"a candidate key looks like 'task_accuracy:3,7', but got {key!r}")
    return Candidate(DropSet.parse(drop), probe)


def candidate_of(trial: FrozenTrial | optuna.Trial) -> Candidate | None:
    """The candidate a marked trial stands for; None for any other trial."""
    attrs = trial.user_attrs
    if MARKER not in attrs or attrs.get(STRAY):
        return None
    return parse_candidate_key(attrs[MARKER])


def result_attrs(observation: Observation) -> dict[str, Any]:
    """The user attributes a worker stores for a finished evaluation (its score becomes the
    trial's value, its status the trial's state)."""
    return {RESULT: {"metrics": dict(observation.metrics), "extras": dict(observation.extras)}}


def observation_of(trial: FrozenTrial) -> Observation | None:
    """The observation of a finished, marked trial (COMPLETE or PRUNED); else None."""
    candidate = candidate_of(trial)
    if candidate is None or trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        return None
    result = trial.user_attrs.get(RESULT)
    if result is None:
        return None  # pruned before it reported anything
    score = trial.value
    if trial.state == TrialState.PRUNED:
        score = result.get("metrics", {}).get("upper_bound", trial.value)
    if score is None:
        return None
    return Observation(
        candidate,
        float(score),
        metrics=dict(result.get("metrics", {})),
        extras=dict(result.get("extras", {})),
        status=Status.COMPLETE if trial.state == TrialState.COMPLETE else Status.PRUNED,
    )
