"""Contract tests every searcher inherits (like Optuna's BasicSamplerTestCase).

Subclass `SearcherContract` in a `test_*.py` file and implement `make_searcher`. The fake
evaluator scores a drop set deterministically from a per-layer table, so runs are exact and
fast; scores are multiples of 1/64 like accuracies on a 64-example split.
"""

from __future__ import annotations

import random

from searchers.base import Searcher
from tale_opt.types import (
    ANGULAR_DISTANCE,
    BLOCK_INFLUENCE,
    PERPLEXITY,
    Candidate,
    Observation,
    SearchResult,
    angular_distance_key,
    block_influence_key,
)


def fake_score(candidate: Candidate, num_layers: int, seed: int = 0) -> float:
    """Baseline 0.5; each dropped layer moves the score by a fixed per-layer amount."""
    rng = random.Random(seed)
    effect = [rng.choice([-6, -3, -2, -1, 0, 1, 2]) for _ in range(num_layers)]
    return (32 + sum(effect[layer] for layer in candidate.drop)) / 64


def fake_probe_metrics(candidate: Candidate, num_layers: int, seed: int = 0) -> dict[str, float]:
    """Per-layer values of the hidden-state probes, deterministic in `seed` (ties included)."""
    rng = random.Random(f"{seed}:{candidate.probe}")
    if candidate.probe == BLOCK_INFLUENCE:
        return {block_influence_key(i): rng.choice([1, 2, 3, 5]) / 16 for i in range(num_layers)}
    if candidate.probe == ANGULAR_DISTANCE:
        return {
            angular_distance_key(start, n): rng.choice([1, 2, 3, 5]) / 16
            for n in range(1, num_layers + 1)
            for start in range(num_layers - n + 1)
        }
    return {}


def fake_observation(candidate: Candidate, num_layers: int, seed: int = 0) -> Observation:
    """Task accuracy or -perplexity from `fake_score`; hidden-state probes get their metrics."""
    score = fake_score(candidate, num_layers, seed)
    if candidate.probe in (BLOCK_INFLUENCE, ANGULAR_DISTANCE):
        return Observation(candidate, 0.0, fake_probe_metrics(candidate, num_layers, seed))
    if candidate.probe == PERPLEXITY:
        return Observation(candidate, score - 1, metrics={"perplexity": 1 - score})
    return Observation(candidate, score, metrics={"accuracy": score})


def run_to_completion(
    searcher: Searcher, *, seed: int = 0, max_steps: int = 10_000
) -> tuple[SearchResult, list[Observation]]:
    """Drive a searcher with the fake evaluator, one proposal batch at a time."""
    seen: list[Observation] = []
    for _ in range(max_steps):
        if searcher.done:
            return searcher.result(), seen
        batch = searcher.propose()
        assert batch, "propose() returned nothing while not done and nothing is in flight"
        obs = [fake_observation(c, searcher.num_layers, seed) for c in batch]
        seen.extend(obs)
        searcher.observe(obs)
    raise AssertionError(f"searcher did not finish within {max_steps} steps")


class SearcherContract:
    """Behaviour every searcher must have. Subclasses implement `make_searcher`."""

    num_layers = 8
    seeds = range(6)

    def make_searcher(self, num_layers: int) -> Searcher:
        raise NotImplementedError

    def test_propose_is_a_query(self) -> None:
        searcher = self.make_searcher(self.num_layers)
        first = searcher.propose()
        assert searcher.propose() == first
        assert searcher.propose() == first

    def test_never_proposes_a_candidate_twice(self) -> None:
        for seed in self.seeds:
            searcher = self.make_searcher(self.num_layers)
            proposed: set[str] = set()
            while not searcher.done:
                batch = searcher.propose()
                keys = [c.key for c in batch]
                assert len(keys) == len(set(keys)), f"duplicates within one proposal: {keys}"
                assert not proposed & set(keys), "re-proposed an observed candidate"
                proposed |= set(keys)
                searcher.observe(fake_observation(c, self.num_layers, seed) for c in batch)

    def test_terminates_with_a_result(self) -> None:
        for seed in self.seeds:
            result, seen = run_to_completion(self.make_searcher(self.num_layers), seed=seed)
            assert result.trajectory[0] == result.baseline
            assert len(result.baseline.drop) == 0
            assert result.best in result.trajectory
            assert result.bsba in result.trajectory
            assert result.stop_reason
            assert len(result.observations) == len({o.candidate.key for o in seen})

    def test_candidates_in_range_and_not_protected(self) -> None:
        for seed in self.seeds:
            searcher = self.make_searcher(self.num_layers)
            protected = set(getattr(searcher, "protected", ()))
            _, seen = run_to_completion(searcher, seed=seed)
            for obs in seen:
                assert all(0 <= layer < self.num_layers for layer in obs.drop)
                assert not protected & set(obs.drop)
                assert len(obs.drop) < self.num_layers

    def test_replay_in_any_order_rebuilds_the_same_result(self) -> None:
        for seed in self.seeds:
            reference, seen = run_to_completion(self.make_searcher(self.num_layers), seed=seed)
            shuffled = list(seen)
            random.Random(seed).shuffle(shuffled)
            replayed = self.make_searcher(self.num_layers)
            replayed.observe(shuffled)
            assert replayed.done
            assert replayed.result() == reference
            # In chunks, with duplicates: observe is idempotent.
            chunked = self.make_searcher(self.num_layers)
            for i in range(0, len(shuffled), 3):
                chunked.observe(shuffled[i : i + 3])
                chunked.observe(shuffled[i : i + 2])
            assert chunked.result() == reference

    def test_result_before_done_is_refused(self) -> None:
        searcher = self.make_searcher(self.num_layers)
        try:
            searcher.result()
        except RuntimeError:
            return
        raise AssertionError("result() must raise while the search is running")
