"""One-shot layer selection: rank layers from one round of probes, then drop by rank.

Round 0 proposes the ranking probe(s) of the full model together with the task accuracy of the
full model (the baseline). Once the probes are in, the searcher knows its drop set of every
size 1..n_drop and proposes them all at once, each scored by ``task_accuracy`` on the
optimization split. So every one-shot searcher's `SearchResult` is an accuracy-versus-layers
curve, like TALE's:

* ``baseline`` / ``trajectory[0]``: task accuracy of the full model;
* ``trajectory[k]`` (k = 1..n_drop): task accuracy with the searcher's k-layer drop set
  (nested prefixes of the ranking, except `AngularDistance`, whose best block of each size need
  not contain the smaller ones); ``trajectory[-1]`` drops exactly `n_drop` layers;
* ``best`` / ``bsba``: as for TALE, over that curve; ``threshold`` is None; ``stop_reason``
  is ``n_drop_reached``; ``observations`` includes the probe observations (their per-layer
  values are in ``metrics``).

The state is derived from a memo of observations on every change, so `observe` is idempotent
and order-insensitive like every searcher's.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Any

from searchers.base import Searcher
from searchers.options import (
    check_n_drop,
    check_num_layers,
    check_protected,
    check_text,
    require_n_drop,
)
from searchers.selection import pick_best, pick_bsba
from tale_opt.types import (
    ANGULAR_DISTANCE,
    BLOCK_INFLUENCE,
    PERPLEXITY,
    TASK_ACCURACY,
    Candidate,
    DropSet,
    Observation,
    SearchResult,
    angular_distance_key,
    block_influence_key,
)

N_DROP_REACHED = "n_drop_reached"


class OneShotSearcher(Searcher):
    """Base: probe once, then score the drop set of each size 1..n_drop by task accuracy.

    Subclasses set `name` and `probe` and implement `probe_candidates` and `drop_sets`.

    Args:
        num_layers: decoder layers of the full model.
        n_drop: layers to remove at most; drop sets of every size 1..n_drop are scored.
            Required: a one-shot ranking has no stopping rule of its own.
        protected: layers never removed (0-based).
        text: what the probe reads (`searchers.options.check_text`; default: the task's
            optimization-split text).
    """

    name = "oneshot"
    probe = TASK_ACCURACY  # the probe that ranks the layers
    # Every candidate's exact score is part of the result: none may be stopped early (the
    # base's default, `early_termination = False`).

    def __init__(
        self,
        num_layers: int,
        *,
        n_drop: int | None = None,
        protected: Iterable[int] = (),
        text: Mapping[str, Any] | None = None,
    ) -> None:
        self.num_layers = check_num_layers(num_layers)
        require_n_drop(self.name, n_drop)
        self.protected = check_protected(protected, num_layers)
        self.n_drop = check_n_drop(n_drop, num_layers, self.protected)
        self.text = check_text(text)
        self._memo: dict[str, Observation] = {}
        self._plan: tuple[tuple[Candidate, ...], tuple[DropSet, ...] | None] | None = None

    # -- what subclasses define ------------------------------------------------------------
    @abc.abstractmethod
    def probe_candidates(self) -> tuple[Candidate, ...]:
        """The probe evaluations the ranking needs (proposed in round 0)."""

    @abc.abstractmethod
    def drop_sets(self, probes: Mapping[str, Observation]) -> tuple[DropSet, ...]:
        """Drop sets of sizes 1..n_drop, in that order, from the observed probes (by key)."""

    # -- the searcher contract -------------------------------------------------------------
    def propose(self) -> list[Candidate]:
        first, sets = self._derive()
        later = () if sets is None else tuple(Candidate(d, TASK_ACCURACY) for d in sets)
        # A pruned observation settles nothing here (no round to lose): evaluate it in full.
        return [c for c in (*first, *later) if not self._observed_in_full(c)]

    def observe(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            if obs.candidate.probe not in (self.probe, TASK_ACCURACY):
                raise ValueError(
                    f"searcher '{self.name}' uses the probes {self.probe!r} and "
                    f"'{TASK_ACCURACY}', but got an observation of probe {obs.candidate.probe!r}"
                )
            key = obs.candidate.key
            self._memo[key] = self.merge(self._memo.get(key), obs)
        self._plan = None

    @property
    def done(self) -> bool:
        return self._derive()[1] is not None and not self.propose()

    def result(self) -> SearchResult:
        if not self.done:
            raise RuntimeError("the search is not finished; keep proposing and observing")
        _, sets = self._derive()
        assert sets is not None
        baseline = self._memo[Candidate(DropSet(), TASK_ACCURACY).key]
        trajectory = (baseline, *(self._memo[Candidate(d, TASK_ACCURACY).key] for d in sets))
        return SearchResult(
            baseline=baseline,
            threshold=None,
            trajectory=trajectory,
            best=pick_best(trajectory),
            bsba=pick_bsba(trajectory, baseline.score),
            stop_reason=N_DROP_REACHED,
            observations=tuple(
                sorted(
                    self._memo.values(),
                    key=lambda o: (len(o.drop), o.drop.layers, o.candidate.probe),
                )
            ),
        )

    # -- derived state ---------------------------------------------------------------------
    @property
    def accepted(self) -> tuple[Observation, ...]:
        """The accuracy-versus-layers curve so far, as `result().trajectory` will hold it: the
        baseline, then the drop sets of 1, 2, ... layers up to the first one not observed yet
        (empty until the baseline is in). accepted_configs.json is written from it after every
        candidate."""
        baseline = self._memo.get(Candidate(DropSet(), TASK_ACCURACY).key)
        if baseline is None:
            return ()
        curve = [baseline]
        for drop in self._derive()[1] or ():
            obs = self._memo.get(Candidate(drop, TASK_ACCURACY).key)
            if obs is None:
                break
            curve.append(obs)
        return tuple(curve)

    @property
    def removable(self) -> tuple[int, ...]:
        """Layers that may be dropped, ascending."""
        return tuple(i for i in range(self.num_layers) if i not in self.protected)

    def _derive(self) -> tuple[tuple[Candidate, ...], tuple[DropSet, ...] | None]:
        if self._plan is None:
            probes = self.probe_candidates()
            first = (*probes, Candidate(DropSet(), TASK_ACCURACY))
            sets = None
            if all(self._observed_in_full(c) for c in probes):
                sets = self.drop_sets({c.key: self._memo[c.key] for c in probes})
            self._plan = (first, sets)
        return self._plan

    def _observed_in_full(self, candidate: Candidate) -> bool:
        known = self._memo.get(candidate.key)
        return known is not None and known.complete

    def _metric(self, obs: Observation, key: str) -> float:
        try:
            return float(obs.metrics[key])
        except KeyError:
            raise ValueError(
                f"searcher '{self.name}': the {obs.candidate.probe!r} observation has no metric "
                f"{key!r} (got {sorted(obs.metrics)[:5]}...); the evaluator must report one "
                f"value per layer"
            ) from None


def prefixes(ranking: Iterable[int], n_drop: int) -> tuple[DropSet, ...]:
    """The first 1, 2, ..., n_drop layers of `ranking` (most removable first)."""
    order = list(ranking)
    return tuple(DropSet.of(order[:k]) for k in range(1, n_drop + 1))


class BlockInfluence(OneShotSearcher):
    """ShortGPT (Men et al., 2024): drop the layers with the lowest Block Influence.

    ``BI_l = 1 - mean over the probe text's non-pad tokens of cos(h_in_l, h_out_l)``, computed
    once on the full model (hidden states before the final norm). The k-layer drop set is the
    k lowest-BI removable layers; ties go to the lower layer index.
    """

    name = "cosine"
    probe = BLOCK_INFLUENCE

    def probe_candidates(self) -> tuple[Candidate, ...]:
        return (Candidate(DropSet(), BLOCK_INFLUENCE),)

    def drop_sets(self, probes: Mapping[str, Observation]) -> tuple[DropSet, ...]:
        obs = probes[Candidate(DropSet(), BLOCK_INFLUENCE).key]
        bi = {layer: self._metric(obs, block_influence_key(layer)) for layer in self.removable}
        return prefixes(sorted(self.removable, key=lambda layer: (bi[layer], layer)), self.n_drop)


class PerplexityRanking(OneShotSearcher):
    """Shortened LLaMA's one-shot perplexity criterion (Kim et al., 2024): remove each layer
    alone, measure the probe text's perplexity, drop the layers whose removal hurts least.

    Round 0 evaluates every single-layer removal with the ``perplexity`` probe (score =
    -perplexity); the k-layer drop set is the k best of them (ties: lower layer index).
    """

    name = "perplexity"
    probe = PERPLEXITY

    def probe_candidates(self) -> tuple[Candidate, ...]:
        return tuple(Candidate(DropSet((layer,)), PERPLEXITY) for layer in self.removable)

    def drop_sets(self, probes: Mapping[str, Observation]) -> tuple[DropSet, ...]:
        score = {
            layer: probes[Candidate(DropSet((layer,)), PERPLEXITY).key].score
            for layer in self.removable
        }
        ranking = sorted(self.removable, key=lambda layer: (-score[layer], layer))
        return prefixes(ranking, self.n_drop)


class AngularDistance(OneShotSearcher):
    """Gromov et al. (2024): drop the contiguous block whose input and output are closest.

    ``d(l, n) = arccos(cos(h_l, h_{l+n})) / pi`` on the last non-pad token of each probe text,
    averaged over texts, where ``h_l`` is the input of layer ``l`` (``h_L``: the last layer's
    output before the final norm). The n-layer drop set is the block ``[l, l + n)`` with the
    smallest ``d(l, n)`` that avoids protected layers; ties go to the lower ``l``. Blocks of
    different sizes need not be nested.
    """

    name = "angular"
    probe = ANGULAR_DISTANCE

    def __init__(
        self,
        num_layers: int,
        *,
        n_drop: int | None = None,
        protected: Iterable[int] = (),
        text: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(num_layers, n_drop=n_drop, protected=protected, text=text)
        longest = max((len(run) for run in self._runs()), default=0)
        if self.n_drop > longest:
            raise ValueError(
                f"`n_drop <= longest run of consecutive unprotected layers` must hold for a "
                f"contiguous block, but got (n_drop={self.n_drop}, longest run={longest}, "
                f"protected={list(self.protected)})"
            )

    def _runs(self) -> list[list[int]]:
        runs: list[list[int]] = [[]]
        for layer in range(self.num_layers):
            if layer in self.protected:
                runs.append([])
            else:
                runs[-1].append(layer)
        return [run for run in runs if run]

    def blocks(self, n: int) -> list[int]:
        """First layers ``l`` of the allowed blocks ``[l, l + n)``, ascending."""
        return [run[i] for run in self._runs() for i in range(len(run) - n + 1)]

    def probe_candidates(self) -> tuple[Candidate, ...]:
        return (Candidate(DropSet(), ANGULAR_DISTANCE),)

    def drop_sets(self, probes: Mapping[str, Observation]) -> tuple[DropSet, ...]:
        obs = probes[Candidate(DropSet(), ANGULAR_DISTANCE).key]
        sets = []
        for n in range(1, self.n_drop + 1):
            starts = self.blocks(n)
            d = {start: self._metric(obs, angular_distance_key(start, n)) for start in starts}
            best = min(starts, key=lambda start: (d[start], start))
            sets.append(DropSet(tuple(range(best, best + n))))
        return tuple(sets)
