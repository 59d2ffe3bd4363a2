"""Greedy backward elimination: TALE's Algorithm 1.

Each round tries removing every remaining layer from the current model, keeps the removal
with the highest score, and stops once that score falls below `baseline - epsilon` (absolute)
or `max_drop` layers are gone. The state is never stored: it is re-derived from the memo of
observations, which is what makes `observe` idempotent and order-insensitive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from searchers.base import Searcher
from searchers.options import check_n_drop, check_text
from searchers.selection import pick_best, pick_bsba
from tale_opt.types import Candidate, DropSet, Observation, SearchResult

BELOW_THRESHOLD = "below_threshold"
MAX_DROP = "max_drop_reached"
EXHAUSTED = "no_layers_left"
# Probes whose score ranks candidates (the hidden-state probes only describe the full model).
SCORING_PROBES = ("task_accuracy", "perplexity")


@dataclass(frozen=True)
class RoundState:
    """Where the search stands, derived from the observations seen so far."""

    round: int  # 0 = baseline, k = choosing the k-th layer to drop
    current: DropSet
    pending: tuple[Candidate, ...]  # this round's unsettled: unseen, or bounded and not outranked
    trajectory: tuple[Observation, ...]  # accepted configurations, baseline first
    stop_reason: str | None
    incumbent: Observation | None  # best complete observation of the current round so far


class GreedyElimination(Searcher):
    """TALE greedy layer elimination (paper, Algorithm 1).

    Args:
        num_layers: decoder layers of the full model.
        epsilon: stop when the round's best score < baseline score - epsilon (absolute).
        max_drop: optional cap on the number of layers removed.
        protected: layers that are never removed (0-based).
        min_keep: never remove so many layers that fewer than this remain.
        probe: the evaluator probe that scores candidates: ``task_accuracy`` (TALE) or
            ``perplexity`` (score = -perplexity; then `epsilon` is in perplexity points).
        n_drop: remove exactly this many layers (k greedy rounds), for comparing criteria at
            equal sparsity: `epsilon` and `max_drop` are then ignored and `threshold` is None.
            None (default): stop by `epsilon` and `max_drop` as above.
        text: what a ``perplexity`` probe reads (`searchers.options.check_text`; default: the
            task's optimization-split text); unused by ``task_accuracy``.

    Ties are broken deterministically like the reference implementation: highest score,
    then the lowest index of the layer added this round (the first maximum in ascending order).

    A round's candidates are proposed likely winners first, so that early termination
    (`Searcher.can_still_win`) meets a strong incumbent soon: round 1 in ascending layer order,
    later rounds by the score the same layer's removal got in the previous round (best first).
    A pruned observation settles its candidate only while a complete observation of the same
    round outranks its upper bound (the proof that it cannot win), or when a racing pruner
    raced it out (`Observation.raced_out`: it lost its round by the pruner's rule); otherwise
    the candidate is proposed again, to be evaluated in full.
    """

    name = "tale"

    def __init__(
        self,
        num_layers: int,
        *,
        epsilon: float = 0.08,
        max_drop: int | None = None,
        protected: Iterable[int] = (),
        min_keep: int = 1,
        probe: str = "task_accuracy",
        n_drop: int | None = None,
        text: Mapping[str, Any] | None = None,
    ) -> None:
        if probe not in SCORING_PROBES:
            raise ValueError(
                f"`probe` must be one of {', '.join(SCORING_PROBES)} (greedy elimination ranks "
                f"candidates by its score), but got probe={probe!r}"
            )
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"`num_layers >= 1` must hold, but got num_layers={num_layers!r}")
        if not epsilon >= 0:
            raise ValueError(f"`epsilon >= 0` must hold, but got epsilon={epsilon!r}")
        if not 1 <= min_keep <= num_layers:
            raise ValueError(
                f"`1 <= min_keep <= num_layers` must hold, but got (min_keep={min_keep}, "
                f"num_layers={num_layers})"
            )
        protected = tuple(sorted(set(protected)))
        bad = [layer for layer in protected if not 0 <= layer < num_layers]
        if bad:
            raise ValueError(
                f"protected layers must be in 0..{num_layers - 1}, but got {bad} "
                f"(layer indices are 0-based)"
            )
        if max_drop is not None and not 1 <= max_drop <= num_layers - min_keep:
            raise ValueError(
                f"`1 <= max_drop <= num_layers - min_keep` must hold, but got "
                f"(max_drop={max_drop}, num_layers={num_layers}, min_keep={min_keep})"
            )
        self.num_layers = num_layers
        self.epsilon = float(epsilon)
        self.max_drop = max_drop
        self.protected = protected
        self.min_keep = min_keep
        self.probe = probe
        self.n_drop = n_drop
        if n_drop is not None:
            self.max_drop = check_n_drop(n_drop, num_layers, protected, min_keep=min_keep)
            self.epsilon = math.inf  # exactly n_drop rounds: no accuracy stop
        self.text = check_text(text)
        self._memo: dict[str, Observation] = {}
        self._state: RoundState | None = None

    # -- the searcher contract -------------------------------------------------------------
    def propose(self) -> list[Candidate]:
        return list(self.state.pending)

    def observe(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            if obs.candidate.probe != self.probe:
                raise ValueError(
                    f"this searcher scores with probe {self.probe!r}, but got an observation "
                    f"of probe {obs.candidate.probe!r}"
                )
            key = obs.candidate.key
            self._memo[key] = self.merge(self._memo.get(key), obs)
        self._state = None

    @property
    def done(self) -> bool:
        return self.state.stop_reason is not None

    def result(self) -> SearchResult:
        state = self.state
        if state.stop_reason is None:
            raise RuntimeError("the search is not finished; keep proposing and observing")
        baseline = state.trajectory[0]
        return SearchResult(
            baseline=baseline,
            threshold=self.threshold,
            trajectory=state.trajectory,
            best=pick_best(state.trajectory),
            bsba=pick_bsba(state.trajectory, baseline.score),
            stop_reason=state.stop_reason,
            observations=tuple(
                sorted(self._memo.values(), key=lambda o: (len(o.drop), o.drop.layers))
            ),
        )

    @property
    def early_termination(self) -> bool:
        """Whether candidates may be stopped early (exact, see `Searcher.can_still_win`):
        only when scores are accuracies, i.e. counts of correct examples (task_accuracy)."""
        return self.probe == "task_accuracy"

    # -- derived state ---------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        baseline = self._memo.get(Candidate(DropSet(), self.probe).key)
        if baseline is None or not baseline.complete or self.n_drop is not None:
            return None  # with n_drop, no threshold applies
        return baseline.score - self.epsilon

    @property
    def accepted(self) -> tuple[Observation, ...]:
        """The configurations accepted so far, baseline first (what accepted_configs.json
        holds after every candidate)."""
        return self.state.trajectory

    @property
    def state(self) -> RoundState:
        if self._state is None:
            self._state = self._derive()
        return self._state

    def _derive(self) -> RoundState:
        start = Candidate(DropSet(), self.probe)
        baseline = self._memo.get(start.key)
        if baseline is None or not baseline.complete:
            return RoundState(0, DropSet(), (start,), (), None, None)
        threshold = baseline.score - self.epsilon
        trajectory = [baseline]
        current = DropSet()
        previous: DropSet | None = None  # the base of the previous round
        while True:
            round_no = len(current) + 1
            if self.max_drop is not None and len(current) >= self.max_drop:
                return RoundState(round_no, current, (), tuple(trajectory), MAX_DROP, None)
            layers = [
                layer
                for layer in range(self.num_layers)
                if layer not in current and layer not in self.protected
            ]
            if not layers or self.num_layers - len(current) <= self.min_keep:
                return RoundState(round_no, current, (), tuple(trajectory), EXHAUSTED, None)
            candidates = [(layer, Candidate(current.add(layer), self.probe)) for layer in layers]
            scored = [
                (layer, self._memo[c.key])
                for layer, c in candidates
                if c.key in self._memo and self._memo[c.key].complete
            ]
            # Highest score wins; among equal scores the lowest layer index (ascending scan).
            best = (
                max(scored, key=lambda lo: self.rank_key(lo[1].score, lo[0])) if scored else None
            )
            winner = None if best is None else best[1]
            pending = tuple(
                c
                for layer, c in self._by_promise(candidates, previous)
                if not self._settled(c, layer, best)
            )
            if pending:
                return RoundState(round_no, current, pending, tuple(trajectory), None, winner)
            if winner is None:
                raise RuntimeError(
                    f"round {round_no}: every candidate was pruned, so none can be accepted; "
                    "a pruned candidate must be bounded by a completed one"
                )
            if winner.score < threshold:
                return RoundState(
                    round_no, current, (), tuple(trajectory), BELOW_THRESHOLD, winner
                )
            trajectory.append(winner)
            previous, current = current, winner.drop

    def _settled(
        self, candidate: Candidate, layer: int, best: tuple[int, Observation] | None
    ) -> bool:
        """Observed in full, raced out, or pruned with a bound that this round's best
        outranks."""
        known = self._memo.get(candidate.key)
        if known is None:
            return False
        if known.complete or known.raced_out:
            return True
        if best is None:
            return False
        best_layer, best_obs = best
        return self.rank_key(best_obs.score, best_layer) > self.rank_key(known.score, layer)

    def _by_promise(
        self, candidates: list[tuple[int, Candidate]], previous: DropSet | None
    ) -> list[tuple[int, Candidate]]:
        """Likely winners first: by the previous round's score of the same layer's removal
        (complete scores before pruned bounds, then unknown), ties in ascending layer order."""
        if previous is None:
            return candidates

        def promise(item: tuple[int, Candidate]) -> tuple[int, float, int]:
            layer = item[0]
            known = self._memo.get(Candidate(previous.add(layer), self.probe).key)
            if known is None:
                return (2, 0.0, layer)
            return (0 if known.complete else 1, -known.score, layer)

        return sorted(candidates, key=promise)
