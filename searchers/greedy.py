"""Greedy backward elimination: TALE's Algorithm 1.

Each round tries removing every remaining layer from the current model, keeps the removal
with the highest score, and stops once that score falls below `baseline - epsilon` (absolute)
or `max_drop` layers are gone. The state is never stored: it is re-derived from the memo of
observations, which is what makes `observe` idempotent and order-insensitive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from searchers.selection import pick_best, pick_bsba
from tale_opt.types import Candidate, DropSet, Observation, SearchResult

BELOW_THRESHOLD = "below_threshold"
MAX_DROP = "max_drop_reached"
EXHAUSTED = "no_layers_left"


@dataclass(frozen=True)
class RoundState:
    """Where the search stands, derived from the observations seen so far."""

    round: int  # 0 = baseline, k = choosing the k-th layer to drop
    current: DropSet
    pending: tuple[Candidate, ...]  # this round's candidates that have no observation yet
    trajectory: tuple[Observation, ...]  # accepted configurations, baseline first
    stop_reason: str | None
    incumbent: Observation | None  # best complete observation of the current round so far


class GreedyElimination:
    """TALE greedy layer elimination (paper, Algorithm 1).

    Args:
        num_layers: decoder layers of the full model.
        epsilon: stop when the round's best score < baseline score - epsilon (absolute).
        max_drop: optional cap on the number of layers removed.
        protected: layers that are never removed (0-based).
        min_keep: never remove so many layers that fewer than this remain.
        probe: the evaluator probe that scores candidates.

    Ties are broken deterministically like the reference implementation: highest score,
    then the lowest index of the layer added this round (the first maximum in ascending order).
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
    ) -> None:
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
            known = self._memo.get(key)
            if known is None or _preferred(obs, known):
                self._memo[key] = obs
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

    # -- derived state ---------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        baseline = self._memo.get(Candidate(DropSet(), self.probe).key)
        return None if baseline is None else baseline.score - self.epsilon

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
            pending = tuple(c for _, c in candidates if c.key not in self._memo)
            scored = [
                (layer, self._memo[c.key])
                for layer, c in candidates
                if c.key in self._memo and self._memo[c.key].complete
            ]
            # Highest score wins; among equal scores the lowest layer index (ascending scan).
            winner = max(scored, key=lambda lo: (lo[1].score, -lo[0]))[1] if scored else None
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
            current = winner.drop


def _preferred(new: Observation, known: Observation) -> bool:
    """Which of two observations of one candidate to keep, independent of arrival order."""
    if new.complete != known.complete:
        return new.complete
    return new.score > known.score
