"""The abstract base of every search strategy, and the rules all of them share.

Like Optuna's `BaseSampler`: a searcher implements the abstract `propose`, `observe`, `done`
and `result`; the attributes its callers read have documented defaults here, so callers use
plain attribute access whatever the searcher. The rules that must be the same for every
searcher live here too, not in one concrete strategy:

* `Searcher.merge`: which of two observations of one candidate counts;
* `Searcher.rank_key` / `Searcher.can_still_win` / `Searcher.best_rival`: how a round is won,
  and so when a candidate provably cannot win it (exact early termination). Workers apply them
  without a searcher instance, from the completed trials in the study.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable
from typing import Any, ClassVar, final

from tale_opt.types import TASK_ACCURACY, Candidate, DropSet, Observation, SearchResult


class Searcher(abc.ABC):
    """A pure search strategy: it proposes candidates and is told their observations.

    Contract (pinned by `searchers.testing.SearcherContract`, which every searcher's tests
    inherit):

    * `propose()` is a query: it returns the same candidates until `observe` is called, and
      never a candidate that was already observed in full. A candidate observed only as pruned
      is proposed again (to be evaluated in full) unless its upper bound proves it cannot win
      or a racing pruner raced it out (`Observation.raced_out`: it lost its round).
      An empty list while not `done` means "wait for results still in flight".
    * `observe()` is idempotent and order-insensitive: state is derived from a memo keyed by
      candidate (merged with `merge`), so replaying completed trials in any order rebuilds the
      same searcher.
    * `result()` raises RuntimeError until `done`.
    * Candidates never name an out-of-range or protected layer.

    Attributes callers read (defaults in brackets; a subclass sets what differs):
        name: the registry name, also in study names and reports.
        num_layers: decoder layers of the full model (set by every constructor).
        probe: the probe that ranks layers [``task_accuracy``].
        text: the normalized probe-text spec that text-reading probes read, or None when
            the searcher reads no text [None].
        protected: layers never removed, 0-based [()].
        early_termination: whether workers may stop a candidate once `can_still_win` says it
            cannot win its round, or race it out against its round's leader (racing
            pruners); only for searchers whose rounds are won by `rank_key`, over counts of
            correct examples [False].
        threshold: the score an accepted configuration must reach, None without one [None].
        accepted: the configurations accepted so far, baseline first; searchers that accept
            one at a time report them as they go, the others only in `result()` [()].
    """

    name: ClassVar[str]
    num_layers: int
    probe: str = TASK_ACCURACY
    text: dict[str, Any] | None = None
    protected: tuple[int, ...] = ()
    early_termination: bool = False

    @property
    def threshold(self) -> float | None:
        return None

    @property
    def accepted(self) -> tuple[Observation, ...]:
        return ()

    # -- what every searcher implements ----------------------------------------------------
    @abc.abstractmethod
    def propose(self) -> list[Candidate]:
        """The candidates to evaluate now (a query: no side effect on the search)."""

    @abc.abstractmethod
    def observe(self, observations: Iterable[Observation]) -> None:
        """Take results in (idempotent, order-insensitive; merge repeats with `merge`)."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """Whether the search has finished (then `result()` answers)."""

    @abc.abstractmethod
    def result(self) -> SearchResult:
        """The finished search; RuntimeError while not `done`."""

    # -- rules shared by every searcher ----------------------------------------------------
    @final
    @staticmethod
    def merge(known: Observation | None, new: Observation) -> Observation:
        """Which of two observations of one candidate counts, whatever order they came in.

        * A complete observation beats a pruned one: it is the candidate's score, the pruned
          one only a bound on it.
        * Of two complete ones, the higher score.
        * Of two pruned ones, the higher upper bound. Each bound holds for the evaluation that
          produced it; were evaluations exactly reproducible the lower would be the tighter
          and just as sound, but they are not always (another device, another batch order),
          and only the higher bounds both. Keeping it costs at most one full evaluation that
          the lower bound would have saved; keeping the lower could settle a candidate that
          would have won.
        * Equal scores: the smaller canonical form (`_canonical`), so that replay order never
          decides which metrics and extras are kept.
        """
        if known is None:
            return new
        if new.complete != known.complete:
            return new if new.complete else known
        if new.score != known.score:
            return new if new.score > known.score else known
        return min(known, new, key=_canonical)

    @final
    @staticmethod
    def rank_key(score: Any, added_layer: int) -> tuple[Any, int]:
        """How one round's candidates rank: higher score first, then the lower index of the
        layer added this round (the reference's first maximum in ascending layer order).

        `score` may be an accuracy or a count of correct examples: within one round every
        candidate is scored on the same examples, so both rank alike.
        """
        return (score, -added_layer)

    @final
    @staticmethod
    def rivals(drop: DropSet, other: DropSet) -> tuple[int, int] | None:
        """``(l, i)`` when ``drop = B + {l}`` and ``other = B + {i}`` for one base B (the two
        compete in the same round); None otherwise."""
        if len(drop) != len(other):
            return None
        mine, theirs = set(drop) - set(other), set(other) - set(drop)
        if len(mine) != 1 or len(theirs) != 1:
            return None
        return mine.pop(), theirs.pop()

    @final
    @staticmethod
    def can_still_win(
        drop: DropSet, max_correct: int, incumbent: DropSet, incumbent_correct: int
    ) -> bool:
        """Whether a candidate that can still get at most `max_correct` examples right might
        win its round against the completed `incumbent` (the exact bound of early termination).

        Counts, not accuracies: both are scored on the same examples. The candidate wins only
        with a higher count, or an equal one and a lower added layer (`rank_key`); a candidate
        that is no rival of `incumbent` (another round or base) is never stopped by it.
        """
        layers = Searcher.rivals(drop, incumbent)
        if layers is None:
            return True
        mine, theirs = layers
        return Searcher.rank_key(max_correct, mine) > Searcher.rank_key(incumbent_correct, theirs)

    @final
    @staticmethod
    def best_rival(
        drop: DropSet, completed: Iterable[tuple[DropSet, int]]
    ) -> tuple[DropSet, int] | None:
        """The completed rival `drop` has to beat: among ``(drop set, n correct)`` pairs of its
        round and base, the one that ranks first (`rank_key`); None when there is none yet."""
        best: tuple[tuple[int, int], DropSet, int] | None = None
        for rival, n_correct in completed:
            layers = Searcher.rivals(drop, rival)
            if layers is None:
                continue
            key = Searcher.rank_key(n_correct, layers[1])
            if best is None or key > best[0]:
                best = (key, rival, n_correct)
        return None if best is None else (best[1], best[2])


def _canonical(obs: Observation) -> str:
    """A total order on observations of equal score (metrics and extras may hold anything)."""
    return json.dumps(
        [obs.status.value, dict(obs.metrics), dict(obs.extras)], sort_keys=True, default=repr
    )
