"""The behaviour every searcher must have, as tests any searcher's test suite inherits.

Like `optuna.testing`: subclass `SearcherContract` under a name pytest collects (``Test*``)
and implement `make_searcher`. Plain asserts only, so importing this module needs neither
pytest nor anything beyond the standard library and `tale_opt.types`.

The fake evaluator scores a drop set deterministically from a per-layer table, so runs are
exact and fast; scores are multiples of 1/64, like accuracies on a 64-example split. Every
loop is bounded (`SearcherContract.max_batches`, `SearcherContract.max_proposals`): a searcher
that keeps proposing fails with an assertion naming the bound instead of hanging the run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from searchers.base import Searcher
from tale_opt.types import (
    ANGULAR_DISTANCE,
    BLOCK_INFLUENCE,
    PERPLEXITY,
    PROBES,
    RACED_OUT,
    TASK_ACCURACY,
    Candidate,
    DropSet,
    Observation,
    SearchResult,
    Status,
    angular_distance_key,
    block_influence_key,
)

N_EXAMPLES = 64  # the fake split: a task-accuracy score is a count of correct examples / 64
MAX_BATCHES = 1_000  # proposal batches before a searcher that is never done fails
MAX_PROPOSALS = 20_000  # candidates proposed in all before it fails


def fake_score(candidate: Candidate, num_layers: int, seed: int = 0) -> float:
    """Baseline 0.5; each dropped layer moves the score by a fixed per-layer amount."""
    rng = random.Random(seed)
    effect = [rng.choice([-6, -3, -2, -1, 0, 1, 2]) for _ in range(num_layers)]
    return (N_EXAMPLES // 2 + sum(effect[layer] for layer in candidate.drop)) / N_EXAMPLES


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


@dataclass(frozen=True)
class FakeEvaluator:
    """`fake_observation` as an evaluator of one model size and seed."""

    num_layers: int
    seed: int = 0

    def __call__(self, candidate: Candidate) -> Observation:
        return fake_observation(candidate, self.num_layers, self.seed)


class ProposedOnce:
    """A proposal check: no duplicates in a batch, no candidate proposed in an earlier one."""

    def __init__(self) -> None:
        self.proposed: set[str] = set()

    def __call__(self, batch: list[Candidate]) -> None:
        keys = [c.key for c in batch]
        assert len(keys) == len(set(keys)), f"duplicates within one proposal: {keys}"
        again = self.proposed & set(keys)
        assert not again, f"re-proposed observed candidates {sorted(again)}"
        self.proposed.update(keys)


def pruned_observation(candidate: Candidate, max_correct: int) -> Observation:
    """A task-accuracy evaluation stopped early: at most `max_correct` of the fake split's
    examples can be right, so the score is that upper bound."""
    metrics = {"n_examples": N_EXAMPLES, "max_correct": max_correct}
    return Observation(candidate, max_correct / N_EXAMPLES, metrics, status=Status.PRUNED)


def drive(
    searcher: Searcher,
    evaluate: Callable[[Candidate], Observation],
    *,
    on_batch: Callable[[list[Candidate]], None] = lambda batch: None,
    max_batches: int = MAX_BATCHES,
    max_proposals: int = MAX_PROPOSALS,
) -> list[Observation]:
    """Propose, evaluate and observe, one batch at a time, until the searcher is done.

    `on_batch` sees each proposal before it is evaluated (to check it). Returns every
    observation made, in order.

    Raises:
        AssertionError: An empty proposal while not done (nothing is in flight here), a
            candidate naming a layer the model does not have, or the searcher was still not
            done after `max_batches` batches or `max_proposals` candidates.
    """
    seen: list[Observation] = []
    batches = proposals = 0
    while not searcher.done:
        assert batches < max_batches and proposals < max_proposals, (
            f"searcher {searcher.name!r} is not done after {batches} proposal batches "
            f"({proposals} candidates; the contract allows {max_batches} batches and "
            f"{max_proposals} candidates): propose() keeps returning work and `done` never "
            "turns true"
        )
        batch = searcher.propose()
        assert batch, (
            f"searcher {searcher.name!r}: propose() returned nothing while not done and nothing "
            "is in flight"
        )
        batches, proposals = batches + 1, proposals + len(batch)
        for candidate in batch:
            assert all(0 <= layer < searcher.num_layers for layer in candidate.drop), (
                f"searcher {searcher.name!r} proposed {candidate.drop}, but the model has "
                f"layers 0..{searcher.num_layers - 1}"
            )
        on_batch(batch)
        observations = [evaluate(candidate) for candidate in batch]
        seen.extend(observations)
        searcher.observe(observations)
    return seen


def run_to_completion(
    searcher: Searcher,
    *,
    seed: int = 0,
    max_batches: int = MAX_BATCHES,
    max_proposals: int = MAX_PROPOSALS,
) -> tuple[SearchResult, list[Observation]]:
    """Drive a searcher with the fake evaluator until done (bounded, see `drive`)."""
    seen = drive(
        searcher,
        FakeEvaluator(searcher.num_layers, seed),
        max_batches=max_batches,
        max_proposals=max_proposals,
    )
    return searcher.result(), seen


class PruningEvaluator:
    """The fake evaluator, stopping task-accuracy candidates early with valid upper bounds.

    Each bound is the candidate's true count of correct examples plus a seeded slack of 0, 1
    or 3, so it is never below the true score. As in a search through a study:

    * first evaluation: when the searcher declares `early_termination` and
      `Searcher.can_still_win` says the bound cannot beat the best completed rival, stopped
      by that rule (as a worker does); otherwise, by a seeded coin, evaluated in full or
      stopped with a bound that proves nothing (as from a study shared with another run);
    * second evaluation: stopped early again, with another bound (two runs sharing a study
      can both stop one candidate), so the searcher has two bounds to merge;
    * from the third on: evaluated in full (the coordinator re-queues a candidate the
      searcher proposes again without early stopping).

    `check` is a proposal check: a searcher must never propose again a candidate observed in
    full, or one whose kept bound (the higher, `Searcher.merge`) the rule proves cannot win.
    """

    def __init__(self, searcher: Searcher, seed: int) -> None:
        self.searcher, self.seed = searcher, seed
        self.attempts: dict[str, int] = {}
        self.completed: list[tuple[DropSet, int]] = []  # (drop set, n correct), task accuracy
        self.bounds: dict[str, int] = {}  # the highest bound given per candidate
        self.proved: set[str] = set()  # candidates whose highest bound cannot win
        self.in_full: set[str] = set()  # observed complete

    def check(self, batch: list[Candidate]) -> None:
        keys = {c.key for c in batch}
        assert not keys & self.in_full, f"re-proposed {sorted(keys & self.in_full)}, seen in full"
        assert not keys & self.proved, (
            f"re-proposed {sorted(keys & self.proved)}, whose bound `Searcher.can_still_win` "
            "proves cannot win its round"
        )

    def __call__(self, candidate: Candidate) -> Observation:
        full = fake_observation(candidate, self.searcher.num_layers, self.seed)
        attempt = self.attempts.get(candidate.key, 0)
        self.attempts[candidate.key] = attempt + 1
        correct = round(full.score * N_EXAMPLES)
        rng = random.Random(f"{self.seed}:{candidate.key}:{attempt}")
        bound = correct + rng.choice([0, 1, 3])
        kept = max(bound, self.bounds.get(candidate.key, bound))
        rival = Searcher.best_rival(candidate.drop, self.completed)
        proves_a_loss = (
            self.searcher.early_termination
            and rival is not None
            and not Searcher.can_still_win(candidate.drop, kept, *rival)
        )
        stop = attempt == 1 or (attempt == 0 and (proves_a_loss or rng.random() < 0.5))
        if candidate.probe != TASK_ACCURACY or not stop:
            if candidate.probe == TASK_ACCURACY:
                self.completed.append((candidate.drop, correct))
            self.in_full.add(candidate.key)
            return full
        self.bounds[candidate.key] = kept
        if proves_a_loss:
            self.proved.add(candidate.key)
        return pruned_observation(candidate, bound)


class RacingEvaluator:
    """The fake evaluator, with a racing pruner that stops task-accuracy candidates whose
    round already has a completed candidate (as `tale_opt.coordination.racing` does).

    A candidate is raced out (PRUNED, ``extras["raced_out"]``, its score a valid upper bound)
    when it truly scores below its round's best completed rival (`Searcher.best_rival`), or,
    with `mistakes`, also by a seeded coin whatever its score: racing is a statistical rule and
    may stop a candidate that would have won. Every other evaluation is complete.

    `check` is a proposal check: a searcher must never propose a raced-out candidate again.
    """

    def __init__(self, searcher: Searcher, seed: int, mistakes: bool = False) -> None:
        self.searcher, self.seed, self.mistakes = searcher, seed, mistakes
        self.completed: list[tuple[DropSet, int]] = []
        self.raced: set[str] = set()

    def check(self, batch: list[Candidate]) -> None:
        again = {c.key for c in batch} & self.raced
        assert not again, f"re-proposed {sorted(again)}, which a racing pruner raced out"

    def __call__(self, candidate: Candidate) -> Observation:
        full = fake_observation(candidate, self.searcher.num_layers, self.seed)
        if candidate.probe != TASK_ACCURACY:
            return full
        correct = round(full.score * N_EXAMPLES)
        rival = Searcher.best_rival(candidate.drop, self.completed)
        rng = random.Random(f"{self.seed}:{candidate.key}:race")
        loses = rival is not None and not Searcher.can_still_win(candidate.drop, correct, *rival)
        coin = self.mistakes and rival is not None and rng.random() < 0.5
        if not self.searcher.early_termination or not (loses or coin):
            self.completed.append((candidate.drop, correct))
            return full
        self.raced.add(candidate.key)
        seen = N_EXAMPLES // 2
        bound = min(N_EXAMPLES, correct + rng.choice([0, 1, 3]) + N_EXAMPLES - seen)
        metrics = {"n_examples": N_EXAMPLES, "n_seen": seen, "max_correct": bound}
        extras = {RACED_OUT: {"pruner": "fake", "leader": rival[0].key}}
        return Observation(candidate, bound / N_EXAMPLES, metrics, extras, Status.PRUNED)


def same_search(result: SearchResult, reference: SearchResult) -> None:
    """Everything but `observations` (which keep pruned bounds) is the reference's."""
    for field in ("baseline", "threshold", "trajectory", "best", "bsba", "stop_reason"):
        got, want = getattr(result, field), getattr(reference, field)
        assert got == want, f"`{field}` differs: got {got!r}, expected {want!r}"


class SearcherContract:
    """Behaviour every searcher must have. Subclasses implement `make_searcher`."""

    num_layers = 8
    seeds = range(6)
    max_batches = MAX_BATCHES
    max_proposals = MAX_PROPOSALS

    def make_searcher(self, num_layers: int) -> Searcher:
        raise NotImplementedError("a searcher's contract test implements make_searcher")

    # -- helpers (bounded) -----------------------------------------------------------------
    def run(self, searcher: Searcher, seed: int = 0) -> tuple[SearchResult, list[Observation]]:
        return run_to_completion(
            searcher, seed=seed, max_batches=self.max_batches, max_proposals=self.max_proposals
        )

    def drive(
        self,
        searcher: Searcher,
        evaluate: Callable[[Candidate], Observation],
        on_batch: Callable[[list[Candidate]], None] = lambda batch: None,
    ) -> list[Observation]:
        return drive(
            searcher,
            evaluate,
            on_batch=on_batch,
            max_batches=self.max_batches,
            max_proposals=self.max_proposals,
        )

    def replay(self, observations: Iterable[Observation], seed: int) -> Searcher:
        """A fresh searcher told `observations` shuffled, in chunks, with repeats."""
        shuffled = list(observations)
        random.Random(seed).shuffle(shuffled)
        searcher = self.make_searcher(self.num_layers)
        for i in range(0, len(shuffled), 3):
            searcher.observe(shuffled[i : i + 3])
            searcher.observe(shuffled[i : i + 2])
        return searcher

    # -- the contract ----------------------------------------------------------------------
    def test_derives_from_the_base_and_declares_its_attributes(self) -> None:
        searcher = self.make_searcher(self.num_layers)
        assert isinstance(searcher, Searcher)
        assert isinstance(searcher.name, str) and searcher.name
        assert searcher.num_layers == self.num_layers
        assert searcher.probe in PROBES, f"unknown probe {searcher.probe!r}"
        assert isinstance(searcher.protected, tuple)
        assert all(0 <= layer < self.num_layers for layer in searcher.protected)
        assert searcher.text is None or isinstance(searcher.text, dict)
        assert isinstance(searcher.early_termination, bool)
        assert searcher.threshold is None  # nothing is known before the baseline
        assert searcher.accepted == ()
        result, _ = self.run(searcher)
        assert searcher.threshold == result.threshold
        # One at a time as they are accepted, or only in the result.
        assert searcher.accepted in ((), result.trajectory)

    def test_propose_is_a_query(self) -> None:
        searcher = self.make_searcher(self.num_layers)
        first = searcher.propose()
        assert searcher.propose() == first
        assert searcher.propose() == first

    def test_never_proposes_a_candidate_twice(self) -> None:
        for seed in self.seeds:
            searcher = self.make_searcher(self.num_layers)
            self.drive(searcher, FakeEvaluator(self.num_layers, seed), ProposedOnce())

    def test_terminates_with_a_result(self) -> None:
        for seed in self.seeds:
            result, seen = self.run(self.make_searcher(self.num_layers), seed=seed)
            assert result.trajectory[0] == result.baseline
            assert len(result.baseline.drop) == 0
            assert result.best in result.trajectory
            assert result.bsba in result.trajectory
            assert result.stop_reason
            assert len(result.observations) == len({o.candidate.key for o in seen})

    def test_candidates_in_range_and_not_protected(self) -> None:
        for seed in self.seeds:
            searcher = self.make_searcher(self.num_layers)
            protected = set(searcher.protected)
            _, seen = self.run(searcher, seed=seed)
            for obs in seen:
                assert all(0 <= layer < self.num_layers for layer in obs.drop)
                assert not protected & set(obs.drop)
                assert len(obs.drop) < self.num_layers

    def test_replay_in_any_order_rebuilds_the_same_result(self) -> None:
        for seed in self.seeds:
            reference, seen = self.run(self.make_searcher(self.num_layers), seed=seed)
            replayed = self.replay(seen, seed)
            assert replayed.done
            assert replayed.result() == reference

    def test_result_before_done_is_refused(self) -> None:
        searcher = self.make_searcher(self.num_layers)
        try:
            searcher.result()
        except RuntimeError:
            return
        raise AssertionError("result() must raise RuntimeError while the search is running")

    def test_pruned_observations_are_settled_or_evaluated_again(self) -> None:
        """Upper bounds instead of scores change the work, never the search: a candidate is
        proposed again until observed in full, unless its bound proves it loses; one that
        early termination stopped (`Searcher.can_still_win`) is never proposed again."""
        for seed in self.seeds:
            reference, _ = self.run(self.make_searcher(self.num_layers), seed=seed)
            searcher = self.make_searcher(self.num_layers)
            evaluate = PruningEvaluator(searcher, seed)
            self.drive(searcher, evaluate, evaluate.check)
            result = searcher.result()
            same_search(result, reference)
            assert all(o.complete for o in result.trajectory), "a bound was accepted as a score"

    def test_raced_out_candidates_are_settled(self) -> None:
        """A candidate a racing pruner stopped lost its round: it is never proposed again,
        never accepted, and racing out only true losers changes nothing of the search."""
        for seed in self.seeds:
            reference, _ = self.run(self.make_searcher(self.num_layers), seed=seed)
            for mistakes in (False, True):
                searcher = self.make_searcher(self.num_layers)
                evaluate = RacingEvaluator(searcher, seed, mistakes)
                seen = self.drive(searcher, evaluate, evaluate.check)
                result = searcher.result()
                assert all(o.complete for o in result.trajectory), "a raced-out bound accepted"
                if not mistakes:
                    same_search(result, reference)
                replayed = self.replay(seen, seed)
                assert replayed.done and replayed.result() == result

    def test_replay_with_pruned_observations_rebuilds_the_same_result(self) -> None:
        """Observations of one candidate merge by `Searcher.merge` in any order."""
        for seed in self.seeds:
            searcher = self.make_searcher(self.num_layers)
            seen = self.drive(searcher, PruningEvaluator(searcher, seed))
            replayed = self.replay(seen, seed)
            assert replayed.done
            assert replayed.result() == searcher.result()
