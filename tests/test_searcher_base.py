"""The abstract searcher base: its defaults, the one merge rule, and a contract that fails a
faulty searcher instead of hanging."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable

import pytest

from searchers.base import Searcher
from searchers.greedy import GreedyElimination
from searchers.random_drop import RandomDrop
from searchers.testing import SearcherContract
from tale_opt.types import RACED_OUT, Candidate, DropSet, Observation, SearchResult, Status

# Fails a contract that stopped bounding its loops, instead of hanging (no clock involved).
BACKSTOP = 100_000


def obs(layers: tuple[int, ...], score: float, status=Status.COMPLETE, **metrics) -> Observation:
    return Observation(Candidate(DropSet(layers)), score, metrics, status=status)


def pruned(layers: tuple[int, ...], score: float) -> Observation:
    return obs(layers, score, Status.PRUNED)


class Endless(Searcher):
    """Faulty on purpose: never done; each proposal names candidates never proposed before
    (the baseline under ever new probe names: the drop sets of a small model run out)."""

    name = "endless"

    def __init__(self, num_layers: int, batch: int = 1) -> None:
        self.num_layers, self.batch = num_layers, batch
        self.told = self.calls = 0

    def propose(self) -> list[Candidate]:
        self.calls += 1
        if self.calls > BACKSTOP:
            raise RuntimeError("the contract let a searcher that proposes forever run on")
        return [Candidate(DropSet(), f"endless.{self.told + i}") for i in range(self.batch)]

    def observe(self, observations: Iterable[Observation]) -> None:
        self.told += len(list(observations))

    @property
    def done(self) -> bool:
        return False

    def result(self) -> SearchResult:
        raise RuntimeError("never finished")


# -- the base's defaults -------------------------------------------------------------------------
def test_the_base_declares_what_callers_read_with_its_defaults():
    searcher = Endless(4)
    assert searcher.probe == "task_accuracy"
    assert searcher.text is None
    assert searcher.protected == ()
    assert searcher.early_termination is False
    assert searcher.threshold is None
    assert searcher.accepted == ()


def test_a_searcher_must_implement_the_abstract_methods():
    class Incomplete(Searcher):
        name = "incomplete"

        def propose(self) -> list[Candidate]:
            return []

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


def test_greedy_reports_what_it_has_accepted_so_far():
    searcher = GreedyElimination(3, epsilon=0.5)
    searcher.observe([obs((), 0.5), obs((0,), 0.4), obs((1,), 0.45), obs((2,), 0.3)])
    assert searcher.accepted == (obs((), 0.5), obs((1,), 0.45))
    assert searcher.threshold == pytest.approx(0.0)


# -- one rule for observations of the same candidate ---------------------------------------------
@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        (pruned((1,), 0.6), obs((1,), 0.4), obs((1,), 0.4)),  # complete beats any bound
        (obs((1,), 0.4), obs((1,), 0.5), obs((1,), 0.5)),  # of two scores, the higher
        (pruned((1,), 0.3), pruned((1,), 0.45), pruned((1,), 0.45)),  # of two bounds, the higher
    ],
)
def test_merge_keeps_one_observation_whatever_the_order(first, second, kept):
    assert Searcher.merge(None, first) == first
    assert Searcher.merge(first, second) == kept
    assert Searcher.merge(second, first) == kept


def test_merge_of_equal_scores_does_not_depend_on_the_order():
    a, b = obs((1,), 0.5, seconds=1.0), obs((1,), 0.5, seconds=2.0)
    assert Searcher.merge(a, b) == Searcher.merge(b, a)
    a, b = pruned((1,), 0.5), Observation(a.candidate, 0.5, {"n_seen": 3}, status=Status.PRUNED)
    assert Searcher.merge(a, b) == Searcher.merge(b, a)


@pytest.mark.parametrize("order", [0, 1])
def test_greedy_keeps_the_higher_of_two_bounds(order):
    # (1,) may reach 0.45 by one bound, 0.3 by the other. The higher one does not prove that it
    # loses to (0,)'s 0.4, so it is evaluated again, in full (the lower one would settle it).
    bounds = [pruned((1,), 0.3), pruned((1,), 0.45)]
    searcher = GreedyElimination(3, epsilon=0.5, max_drop=1)
    searcher.observe([obs((), 0.5), obs((0,), 0.4), *bounds[order:], *bounds[:order]])
    assert [c.drop.layers for c in searcher.propose()] == [(1,), (2,)]


def test_greedy_settles_a_raced_out_candidate_whatever_its_bound():
    # (1,)'s bound 0.45 proves nothing against (0,)'s 0.4, yet a racing pruner stopped it: it
    # lost its round, so it is never proposed again and the round is decided without it.
    raced = Observation(
        Candidate(DropSet((1,))), 0.45, {}, {RACED_OUT: {"pruner": "paired"}}, Status.PRUNED
    )
    assert raced.raced_out and not pruned((1,), 0.45).raced_out
    searcher = GreedyElimination(3, epsilon=0.5, max_drop=1)
    searcher.observe([obs((), 0.5), obs((0,), 0.4), raced])
    assert [c.drop.layers for c in searcher.propose()] == [(2,)]
    searcher.observe([obs((2,), 0.3)])
    assert searcher.done and searcher.result().trajectory[-1].drop.layers == (0,)


def test_a_one_shot_searcher_evaluates_a_pruned_candidate_again():
    searcher = RandomDrop(4, n_drop=2, seed=0)
    first = {c.key: c for c in searcher.propose()}
    stopped = next(c for c in first.values() if c.drop)
    searcher.observe([Observation(stopped, 0.5, status=Status.PRUNED)])
    assert stopped in searcher.propose(), "a bound is no score: evaluate it in full"
    searcher.observe([Observation(stopped, 0.25)])
    assert stopped not in searcher.propose()


# -- the contract is bounded ---------------------------------------------------------------------
LOOPING = {
    "test_derives_from_the_base_and_declares_its_attributes",
    "test_never_proposes_a_candidate_twice",
    "test_terminates_with_a_result",
    "test_candidates_in_range_and_not_protected",
    "test_replay_in_any_order_rebuilds_the_same_result",
    "test_pruned_observations_are_settled_or_evaluated_again",
    "test_replay_with_pruned_observations_rebuilds_the_same_result",
    "test_raced_out_candidates_are_settled",
}
NOT_LOOPING = {"test_propose_is_a_query", "test_result_before_done_is_refused"}


def test_every_contract_test_is_classified_here():
    assert {name for name in dir(SearcherContract) if name.startswith("test_")} == (
        LOOPING | NOT_LOOPING
    )


@pytest.mark.parametrize(
    ("batch", "stopped_after"),
    [(1, "after 40 proposal batches (40 candidates"), (30, "after 10 proposal batches (300")],
    ids=["batch-bound", "proposal-bound"],
)
@pytest.mark.parametrize("test_name", sorted(LOOPING))
def test_a_searcher_that_proposes_forever_fails_the_contract(test_name, batch, stopped_after):
    class EndlessContract(SearcherContract):
        max_batches, max_proposals = 40, 300  # smaller than the defaults, to run fast

        def make_searcher(self, num_layers: int) -> Searcher:
            return Endless(num_layers, batch=batch)

    with pytest.raises(AssertionError, match="is not done after") as failure:
        getattr(EndlessContract(), test_name)()
    message = str(failure.value)
    assert stopped_after in message, message
    assert "allows 40 batches and 300 candidates" in message, message


def test_the_contract_needs_no_pytest_at_import():
    code = "import sys, searchers, searchers.testing; assert 'pytest' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
