"""Racing: when to stop evaluating a candidate, decided after every batch (the `pruner` group).

A worker evaluates every task-accuracy trial with a `TrialRace` as the evaluator's race hook
(`Evaluator.evaluate(race=...)`). After each batch it

1. reports the running accuracy (correct so far / examples seen) as the trial's intermediate
   value at step = examples seen: the learning curve that optuna-dashboard and MLflow show and
   that Optuna's pruners read. Examples are scored in an order fixed by the split (the same
   for every candidate of a run), so the curves of a round share their steps;
2. for a trial the coordinator enqueued `prunable`, asks the search's pruner whether to go on:

   * ``exact`` (default): exact early termination -- stop once even a perfect remainder cannot
     beat the best completed rival of the round (`Searcher.can_still_win`, tie rule
     included). Changes no pick.
   * ``paired``: the exact bound, then the predictive probability that the candidate still
     finishes ahead of that leader on this split, from the examples both have scored
     (`tale_opt.stats.paired_win_probability`); raced out once it falls below ``delta``.
   * ``successive_halving`` / ``hyperband``: the exact bound, then Optuna's own pruner
     (examples are the resource) on a view of the study that holds only the candidate's round
     (same base and probe), so each round is a bracket of its own.

   A racing pruner never races a candidate out while its round has no completed candidate
   (there is no one to lose to, and a round must keep a winner) nor before it has scored
   anything (``paired`` waits for ``min_examples``, Optuna's pruners for their first rung).
   With ``none`` the coordinator enqueues no trial `prunable`: every candidate runs in full.

A stopped candidate ends PRUNED with why in its extras: ``bounded_by`` (the exact bound; the
searcher settles it once a complete rival outranks the bound, else evaluates it again in full)
or ``raced_out`` (the pruner and its numbers: it lost its round, and the searcher never
proposes it again). The exact and none settings change no result, so they stay out of the
study's fingerprint; a racing pruner's settings are in it (and in the study config, where
every worker reads them).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from searchers.base import Searcher
from tale_opt import validate
from tale_opt.coordination import study as st
from tale_opt.coordination.optuna_adapter import completed_rungs, round_view
from tale_opt.errors import UsageError, did_you_mean
from tale_opt.outcomes import RaceState, decode_outcomes
from tale_opt.stats import paired_win_probability
from tale_opt.types import BOUNDED_BY, RACED_OUT, Candidate, Observation, Status

log = logging.getLogger("tale_opt.worker")

EXACT, NONE = "exact", "none"
PAIRED, SUCCESSIVE_HALVING, HYPERBAND = "paired", "successive_halving", "hyperband"
RACING = (PAIRED, SUCCESSIVE_HALVING, HYPERBAND)
PRUNERS = (EXACT, NONE, *RACING)
INCUMBENT_REFRESH_S = 5.0  # how stale the round's leader may get

# Each pruner's options and their defaults (conf/pruner/*.yaml ships the same values).
DEFAULTS: dict[str, dict[str, Any]] = {
    EXACT: {},
    NONE: {},
    PAIRED: {"delta": 0.05, "min_examples": 16, "prior_correct": 1.0, "prior_wrong": 1.0},
    SUCCESSIVE_HALVING: {
        "min_resource": 16, "reduction_factor": 3, "min_early_stopping_rate": 0,
        "bootstrap_count": 0,
    },
    HYPERBAND: {
        "min_resource": 16, "max_resource": None, "reduction_factor": 3, "bootstrap_count": 0,
    },
}  # fmt: skip


def _check_option(name: str, key: str, value: Any) -> Any:
    where = f"pruner.{key}"
    if key == "delta":
        value = validate.number(value, where, above=0)
        if value >= 1:
            raise UsageError(f"{where} must be a number > 0 and < 1, but got {value!r}")
        return value
    if key in ("prior_correct", "prior_wrong"):
        return validate.number(value, where, above=0)
    if key in ("min_examples", "min_resource"):
        return validate.integer(value, where, minimum=1)
    if key == "max_resource":
        return validate.integer(value, where, minimum=1, allow_none=True)
    if key == "reduction_factor":
        return validate.integer(value, where, minimum=2)
    return validate.integer(value, where, minimum=0)  # min_early_stopping_rate, bootstrap_count


@dataclass(frozen=True)
class PrunerSettings:
    """The search's pruner and its options, checked (`from_mapping`).

    Attributes:
        name: One of `PRUNERS`.
        options: Every option of that pruner (`DEFAULTS` filled in).
    """

    name: str = EXACT
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> PrunerSettings:
        """The settings of a `pruner` config node (None: ``exact``, as before the group).

        Raises:
            UsageError: An unknown pruner or option, or a value out of range, named as
                ``pruner.KEY``.
        """
        if node is None:
            return cls()
        options = dict(node)
        name = options.pop("name", None)
        if name not in DEFAULTS:
            raise UsageError(f"unknown pruner {name!r}.{did_you_mean(str(name), PRUNERS)}")
        validate.known_keys(options, DEFAULTS[name], f"pruner '{name}'")
        checked = {
            key: _check_option(name, key, options.get(key, default))
            for key, default in DEFAULTS[name].items()
        }
        return cls(name, checked)

    @property
    def races(self) -> bool:
        """Whether this pruner may stop a candidate that could still win (changes picks)."""
        return self.name in RACING

    def study_entry(self) -> dict[str, Any] | None:
        """What goes into the study config and fingerprint: a racing pruner's settings; None
        for ``exact`` and ``none``, which change no pick (studies keep their fingerprint)."""
        return {"name": self.name, **self.options} if self.races else None

    @classmethod
    def of_study(cls, study: optuna.Study) -> PrunerSettings:
        """The racing settings a study's config names; ``exact`` when it names none."""
        entry = dict(study.user_attrs.get(st.CONFIG) or {}).get("pruner")
        return cls.from_mapping(entry) if entry else cls()


def check_searcher(settings: PrunerSettings, searcher: Searcher) -> None:
    """Refuse a racing pruner for a searcher without rounds of task accuracy to race.

    Raises:
        UsageError: `settings` races and `searcher.early_termination` is false.
    """
    if settings.races and not searcher.early_termination:
        raise UsageError(
            f"pruner={settings.name} races the candidates of a round ranked by task accuracy, "
            f"but searcher '{searcher.name}' (probe {searcher.probe}) has no such rounds; use "
            "pruner=exact or pruner=none with it"
        )


@dataclass(frozen=True)
class Stop:
    """Why a trial's evaluation stopped: `key` is ``bounded_by`` or ``raced_out``."""

    key: str
    detail: dict[str, Any]


class Incumbent:
    """The leader of a candidate's round: its best completed rival in the study (same probe
    and base, `Searcher.best_rival`), read on the first call (from `trials` when the caller
    has just read them) and again at most every `refresh` seconds. A stale leader is a weaker
    one, so the exact bound stays exact and racing only more cautious."""

    def __init__(
        self,
        study: optuna.Study,
        candidate: Candidate,
        refresh: float = INCUMBENT_REFRESH_S,
        trials: Sequence[FrozenTrial] | None = None,
    ) -> None:
        self.study, self.candidate, self.refresh = study, candidate, refresh
        self.leader: st.Rival | None = None
        self._read_at: float | None = None
        self._trials = trials

    def __call__(self) -> st.Rival | None:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.refresh:
            self._read_at = now
            rivals = st.completed_rivals(self.study, self.candidate, self._trials)
            self._trials = None  # later refreshes read the study
            best = Searcher.best_rival(
                self.candidate.drop, [(r.drop, r.n_correct) for r in rivals]
            )
            if best is not None:
                self.leader = next(r for r in rivals if r.drop == best[0])
        return self.leader

    def can_still_win(self, max_correct: int) -> bool:
        leader = self()
        if leader is None:
            return True
        return Searcher.can_still_win(
            self.candidate.drop, max_correct, leader.drop, leader.n_correct
        )


Policy = Callable[[RaceState], Stop | None]


class ExactBound:
    """``exact``: stop once the candidate cannot beat its round's leader even with every
    example left right."""

    def __init__(self, incumbent: Incumbent) -> None:
        self.incumbent = incumbent

    def __call__(self, state: RaceState) -> Stop | None:
        if self.incumbent.can_still_win(state.max_correct):
            return None
        leader = self.incumbent.leader
        assert leader is not None  # can_still_win is True without one
        return Stop(BOUNDED_BY, {"drop": leader.drop.key, "n_correct": leader.n_correct})


class PairedRace(ExactBound):
    """``paired``: the exact bound, then race the candidate out once the predictive
    probability that it finishes ahead of the round's leader falls below ``delta``."""

    def __init__(self, incumbent: Incumbent, options: Mapping[str, Any]) -> None:
        super().__init__(incumbent)
        self.delta = float(options["delta"])
        self.min_examples = int(options["min_examples"])
        self.prior = (float(options["prior_correct"]), float(options["prior_wrong"]))
        self._decoded: tuple[Any, dict[int, bool] | None] = (None, None)

    def __call__(self, state: RaceState) -> Stop | None:
        bounded = super().__call__(state)
        if bounded is not None:
            return bounded
        if state.n_seen < max(1, self.min_examples) or state.n_seen >= state.n_examples:
            return None
        leader = self.incumbent.leader
        outcomes = self._leader_outcomes(leader)
        if leader is None or outcomes is None or len(outcomes) != state.n_examples:
            return None  # no leader yet, or one recorded without its outcomes: exact only
        # The candidate must beat the leader's count, or tie it and win the tie (rank_key).
        wins_ties = Searcher.can_still_win(
            self.incumbent.candidate.drop, leader.n_correct, leader.drop, leader.n_correct
        )
        need = leader.n_correct + (0 if wins_ties else 1)
        p = paired_win_probability(state.correct, outcomes, need, self.prior)
        if p >= self.delta:
            return None
        return Stop(RACED_OUT, {
            "pruner": PAIRED, "win_probability": p, "delta": self.delta,
            "leader": leader.drop.key, "leader_correct": leader.n_correct,
            "n_seen": state.n_seen, "n_correct_so_far": state.n_correct,
        })  # fmt: skip

    def _leader_outcomes(self, leader: st.Rival | None) -> dict[int, bool] | None:
        if leader is None:
            return None
        if self._decoded[0] is not leader:
            self._decoded = (leader, decode_outcomes(leader.outcomes))
        return self._decoded[1]


class OptunaRace(ExactBound):
    """``successive_halving`` / ``hyperband``: the exact bound, then Optuna's pruner on a
    view of the study restricted to the candidate's round."""

    def __init__(
        self,
        incumbent: Incumbent,
        name: str,
        options: Mapping[str, Any],
        study: optuna.Study,
        number: int,
    ) -> None:
        super().__init__(incumbent)
        self.name, self.options, self.number = name, dict(options), number
        candidate = incumbent.candidate
        self.view = round_view(study, lambda trial: st.in_round_of(candidate, trial))
        self.pruner: optuna.pruners.BasePruner | None = None
        # Before the first rung Optuna's pruners never prune: no need to read the study.
        self.first_rung = self.options["min_resource"] * self.options["reduction_factor"] ** (
            self.options.get("min_early_stopping_rate", 0)
        )
        if name == HYPERBAND:
            self.first_rung = self.options["min_resource"]

    def _make(self, n_examples: int) -> optuna.pruners.BasePruner:
        o = self.options
        if self.name == SUCCESSIVE_HALVING:
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=o["min_resource"],
                reduction_factor=o["reduction_factor"],
                min_early_stopping_rate=o["min_early_stopping_rate"],
                bootstrap_count=o["bootstrap_count"],
            )
        return optuna.pruners.HyperbandPruner(
            min_resource=o["min_resource"],
            max_resource=o["max_resource"] or n_examples,  # default: the whole split
            reduction_factor=o["reduction_factor"],
            bootstrap_count=o["bootstrap_count"],
        )

    def __call__(self, state: RaceState) -> Stop | None:
        bounded = super().__call__(state)
        if bounded is not None:
            return bounded
        if state.n_seen < self.first_rung or state.n_seen >= state.n_examples:
            return None
        if self.incumbent.leader is None:
            return None  # nobody to lose to yet
        if self.pruner is None:
            self.pruner = self._make(state.n_examples)
        me = self._frozen()
        if me is None or not self.pruner.prune(self.view, me):
            return None
        now = self._frozen()
        return Stop(RACED_OUT, {
            "pruner": self.name, "step": state.n_seen, "accuracy_so_far": state.accuracy,
            "rung": completed_rungs(now if now is not None else me) - 1,  # 0-based
            "leader": self.incumbent.leader.drop.key,
        })  # fmt: skip

    def _frozen(self) -> FrozenTrial | None:
        for trial in self.view.get_trials(deepcopy=False):
            if trial.number == self.number:
                return trial
        return None


def make_policy(
    settings: PrunerSettings,
    study: optuna.Study,
    trial: optuna.Trial,
    candidate: Candidate,
    trials: Sequence[FrozenTrial] | None = None,
) -> Policy:
    """The pruner of one prunable trial (``none`` is never asked: its trials are not
    prunable, so it is served by the exact bound like a study without settings)."""
    incumbent = Incumbent(study, candidate, trials=trials)
    if settings.name == PAIRED:
        return PairedRace(incumbent, settings.options)
    if settings.name in (SUCCESSIVE_HALVING, HYPERBAND):
        return OptunaRace(incumbent, settings.name, settings.options, study, trial.number)
    return ExactBound(incumbent)


class TrialRace:
    """The race hook of one trial (`tale_opt.outcomes.Race`): reports the learning curve and,
    with a `policy`, stops the evaluation when the policy says so (kept in `stop`)."""

    def __init__(self, trial: optuna.Trial, policy: Policy | None = None) -> None:
        self.trial, self.policy = trial, policy
        self.reported = 0  # the last step reported (a batch may finish no example)
        self.stop: Stop | None = None

    def __call__(self, state: RaceState) -> bool:
        if state.n_seen > self.reported:
            self.trial.report(state.n_correct / state.n_seen, step=state.n_seen)
            self.reported = state.n_seen
        if self.policy is None:
            return True
        self.stop = self.policy(state)
        return self.stop is None

    def annotate(self, observation: Observation) -> Observation:
        """A pruned observation with why it stopped in its extras; its metrics carry the
        upper bound (the score a pruned trial keeps, `st.observation_of`)."""
        if observation.status is not Status.PRUNED:
            return observation
        extras = dict(observation.extras)
        if self.stop is not None:
            extras[self.stop.key] = self.stop.detail
        metrics = {"upper_bound": observation.score, **dict(observation.metrics)}
        return replace(observation, metrics=metrics, extras=extras)


def describe_stop(observation: Observation) -> str:
    """One line on why a pruned observation stopped, e.g. ``paired: win probability 0.012 <
    0.05 against drop {3} (38 right)``; "" for one that was not stopped."""
    if observation.complete:
        return ""
    raced = observation.extras.get(RACED_OUT)
    if isinstance(raced, Mapping):
        name = raced.get("pruner", "?")
        leader = f"drop {{{raced.get('leader', '?')}}}"
        if name == PAIRED:
            return (
                f"paired: win probability {raced.get('win_probability', math.nan):.3g} < "
                f"{raced.get('delta')} against {leader} ({raced.get('leader_correct')} right)"
            )
        return (
            f"{name}: below the promotion quantile at rung {raced.get('rung')} "
            f"({raced.get('step')} examples; leader {leader})"
        )
    bounded = observation.extras.get(BOUNDED_BY)
    if isinstance(bounded, Mapping):
        return (
            f"exact: cannot beat drop {{{bounded.get('drop', '?')}}} "
            f"({bounded.get('n_correct')} right)"
        )
    return ""
