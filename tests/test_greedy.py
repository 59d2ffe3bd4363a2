"""GreedyElimination (TALE Algorithm 1): the contract, plus known-answer tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searchers.greedy import BELOW_THRESHOLD, EXHAUSTED, MAX_DROP, GreedyElimination
from searchers.selection import ae_hm, layer_count_speedup, pick_ae_hm, pick_best, pick_bsba
from searchers.testing import SearcherContract
from tale_opt.types import Candidate, DropSet, Observation, Status


class TestGreedyContract(SearcherContract):
    def make_searcher(self, num_layers: int) -> GreedyElimination:
        return GreedyElimination(num_layers, epsilon=0.08)


class TestGreedyContractWithCapAndProtection(SearcherContract):
    def make_searcher(self, num_layers: int) -> GreedyElimination:
        return GreedyElimination(num_layers, epsilon=0.2, max_drop=4, protected=(0, 7))


def obs(layers: tuple[int, ...], score: float, status: Status = Status.COMPLETE) -> Observation:
    return Observation(Candidate(DropSet(layers)), score, {"accuracy": score}, status=status)


def table_search(num_layers: int, scores: dict[tuple[int, ...], float], **kwargs):
    """Run greedy against an explicit score table; unknown drop sets score 0."""
    searcher = GreedyElimination(num_layers, **kwargs)
    while not searcher.done:
        batch = searcher.propose()
        searcher.observe(obs(c.drop.layers, scores.get(c.drop.layers, 0.0)) for c in batch)
    return searcher.result()


def test_first_round_proposes_the_baseline_only():
    assert GreedyElimination(4).propose() == [Candidate(DropSet())]


def test_second_round_proposes_every_single_layer_removal():
    searcher = GreedyElimination(4)
    searcher.observe([obs((), 0.5)])
    assert [c.drop.layers for c in searcher.propose()] == [(0,), (1,), (2,), (3,)]


def test_known_trajectory_and_stop_below_threshold():
    scores = {
        (): 0.50,
        (0,): 0.30, (1,): 0.55, (2,): 0.52, (3,): 0.40,
        (0, 1): 0.20, (1, 2): 0.44, (1, 3): 0.47,
        (0, 1, 3): 0.10, (1, 2, 3): 0.38,
    }  # fmt: skip
    result = table_search(4, scores, epsilon=0.08)
    assert [o.drop.layers for o in result.trajectory] == [(), (1,), (1, 3)]
    assert result.threshold == pytest.approx(0.42)
    assert result.stop_reason == BELOW_THRESHOLD  # 0.38 < 0.42
    assert result.best.drop.layers == (1,)
    assert result.bsba.drop.layers == (1,)  # (1, 3) at 0.47 is below the baseline 0.50


def test_ties_go_to_the_lowest_layer_index():
    scores = {(): 0.5, (0,): 0.4, (1,): 0.6, (2,): 0.6, (3,): 0.6}
    result = table_search(4, scores, epsilon=0.0, max_drop=1)
    assert result.trajectory[1].drop.layers == (1,)


def test_accepts_exactly_at_threshold():
    scores = {(): 0.5, (0,): 0.42, (1,): 0.1, (0, 1): 0.0}
    result = table_search(2, scores, epsilon=0.08, min_keep=1)
    assert [o.drop.layers for o in result.trajectory] == [(), (0,)]
    assert result.stop_reason == EXHAUSTED


def test_max_drop_caps_the_search():
    result = table_search(6, {(): 0.5}, epsilon=1.0, max_drop=2)
    assert len(result.trajectory[-1].drop) == 2
    assert result.stop_reason == MAX_DROP


def test_protected_layers_are_never_proposed():
    searcher = GreedyElimination(5, protected=(0, 4))
    searcher.observe([obs((), 0.5)])
    assert [c.drop.layers for c in searcher.propose()] == [(1,), (2,), (3,)]


def test_pruned_candidates_never_win_a_round():
    searcher = GreedyElimination(3, epsilon=0.5, max_drop=1)
    # (1,) can reach at most 0.4, a tie with (0,) that the lower layer 0 wins: settled.
    searcher.observe([obs((), 0.5), obs((0,), 0.4), obs((1,), 0.4, Status.PRUNED)])
    assert [c.drop.layers for c in searcher.propose()] == [(2,)]
    searcher.observe([obs((2,), 0.45)])
    assert searcher.result().trajectory[-1].drop.layers == (2,)


def test_a_pruned_bound_that_nothing_outranks_is_evaluated_again():
    searcher = GreedyElimination(3, epsilon=0.5, max_drop=1)
    # (0,) may still tie (1,)'s 0.4 and win the tie (lower layer); (2,) may still reach 0.9:
    # neither bound proves a loss, so both are evaluated again, in full.
    searcher.observe([obs((), 0.5), obs((1,), 0.4), obs((0,), 0.4, Status.PRUNED)])
    searcher.observe([obs((2,), 0.9, Status.PRUNED)])
    assert [c.drop.layers for c in searcher.propose()] == [(0,), (2,)]
    searcher.observe([obs((0,), 0.3), obs((2,), 0.35)])
    assert searcher.done
    assert searcher.result().trajectory[-1].drop.layers == (1,)


def test_later_rounds_propose_by_the_previous_rounds_scores():
    searcher = GreedyElimination(5, epsilon=0.5, max_drop=2)
    searcher.observe(
        [obs((), 0.5), obs((0,), 0.2), obs((1,), 0.6), obs((2,), 0.55, Status.PRUNED)]
    )
    searcher.observe([obs((3,), 0.4), obs((4,), 0.4)])
    # Complete scores first (0.4 = 0.4: ascending layer), then pruned bounds.
    assert [c.drop.layers for c in searcher.propose()] == [(1, 3), (1, 4), (0, 1), (1, 2)]


def test_a_complete_observation_replaces_a_pruned_one_in_any_order():
    pruned, full = obs((0,), 0.3, Status.PRUNED), obs((0,), 0.2)
    for order in ([pruned, full], [full, pruned]):
        searcher = GreedyElimination(2, max_drop=1)
        searcher.observe([obs((), 0.5), *order, obs((1,), 0.1)])
        assert searcher.result().observations[1] == full


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": -0.1}, "`epsilon >= 0` must hold, but got epsilon=-0.1"),
        ({"max_drop": 0}, "max_drop=0"),
        ({"max_drop": 8}, "max_drop=8"),
        ({"protected": (8,)}, "protected layers must be in 0..7, but got [8]"),
        ({"min_keep": 0}, "min_keep=0"),
    ],
)
def test_invalid_arguments_state_the_invariant_and_the_value(kwargs, message):
    with pytest.raises(ValueError) as err:
        GreedyElimination(8, **kwargs)
    assert message in str(err.value)


@settings(max_examples=60, deadline=None)
@given(
    effects=st.lists(st.integers(-8, 4), min_size=3, max_size=9),
    epsilon_steps=st.integers(0, 10),
)
def test_greedy_never_accepts_below_the_threshold(effects, epsilon_steps):
    num_layers = len(effects)
    searcher = GreedyElimination(num_layers, epsilon=epsilon_steps / 64)
    while not searcher.done:
        searcher.observe(
            obs(c.drop.layers, (32 + sum(effects[i] for i in c.drop)) / 64)
            for c in searcher.propose()
        )
    result = searcher.result()
    assert all(o.score >= result.threshold for o in result.trajectory)
    # Each accepted config is the argmax of its round.
    for prev, nxt in zip(result.trajectory, result.trajectory[1:], strict=False):
        round_scores = [
            o.score
            for o in result.observations
            if len(o.drop) == len(nxt.drop) and set(prev.drop) < set(o.drop)
        ]
        assert nxt.score == max(round_scores)


def test_selection_helpers():
    base, a, b = obs((), 0.5), obs((1,), 0.6), obs((1, 2), 0.5)
    assert pick_best([base, a, b]) == a
    assert pick_bsba([base, a, b], 0.5) == b
    assert pick_best([base, obs((3,), 0.5)]).drop.layers == (3,)  # tie: smaller model
    assert ae_hm(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert ae_hm(1.2, 1.5, 2.0) == pytest.approx(5 * 1.2 * 1.5 / (4 * 1.5 + 1.2))
    speed = layer_count_speedup(4)
    assert speed(b) == pytest.approx(2.0)
    # λ large favours accuracy (a), λ small favours speed (b).
    assert pick_ae_hm([base, a, b], 0.5, 10.0, speed) == a
    assert pick_ae_hm([base, a, b], 0.5, 0.1, speed) == b
    with pytest.raises(ValueError, match="lam > 0"):
        ae_hm(1.0, 1.0, 0.0)
