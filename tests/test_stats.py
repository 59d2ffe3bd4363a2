"""Specification of the statistics every reported accuracy carries, pinned on hand-computed
cases: Wilson score intervals, the exact McNemar test, chance level and answer shares."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tale_opt import stats


# -- Wilson score interval -----------------------------------------------------------------
# By hand, z = 1.959964: center = (p + z²/2n) / (1 + z²/n),
# half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (5, 10, 0.236593, 0.763407),  # p = 1/2: symmetric around 1/2
        (45, 200, 0.172624, 0.287741),  # 22.5% of 200
        (10, 48, 0.117303, 0.342589),  # the old default's baseline: 20.8% of 48
        (0, 10, 0.0, 0.277533),  # no success: the lower bound is exactly 0
        (10, 10, 0.722467, 1.0),  # all successes: the upper bound is exactly 1
        (1, 1, 0.206549, 1.0),
    ],
)
def test_wilson_interval_matches_hand_computed_bounds(successes, n, low, high) -> None:
    assert stats.wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-6)


def test_wilson_interval_widens_with_confidence_and_narrows_with_n() -> None:
    low95, high95 = stats.wilson_interval(30, 60)
    low99, high99 = stats.wilson_interval(30, 60, confidence=0.99)
    assert low99 < low95 and high99 > high95
    wide, narrow = stats.wilson_interval(10, 20), stats.wilson_interval(500, 1000)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_contains_the_estimate_and_stays_in_0_1(case) -> None:
    successes, n = case
    low, high = stats.wilson_interval(successes, n)
    assert 0.0 <= low <= successes / n <= high <= 1.0


@pytest.mark.parametrize(("successes", "n"), [(1, 0), (-1, 5), (6, 5), (1.5, 5)])
def test_wilson_interval_refuses_impossible_counts(successes, n) -> None:
    with pytest.raises(ValueError, match="must hold"):
        stats.wilson_interval(successes, n)


# -- exact McNemar ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("only_a", "only_b", "p"),
    [
        (12, 4, 2 * (1 + 16 + 120 + 560 + 1820) / 2**16),  # 0.0768: not significant
        (4, 12, 2 * (1 + 16 + 120 + 560 + 1820) / 2**16),  # symmetric
        (0, 6, 2 / 2**6),  # 0.03125: six discordant pairs, all one way, are significant
        (5, 0, 2 / 2**5),  # 0.0625: five are not
        (5, 5, 1.0),  # a tie: 2 · P[X <= 5] > 1, capped at 1
        (3, 3, 1.0),
        (0, 0, 1.0),  # no discordant pair: nothing tells the two apart
        (1, 0, 1.0),
        (20, 5, 2 * sum(math.comb(25, i) for i in range(6)) / 2**25),  # 0.00408
    ],
)
def test_mcnemar_exact_matches_the_binomial_tail(only_a, only_b, p) -> None:
    assert stats.mcnemar_exact(only_a, only_b) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_has_no_underflow_for_large_counts() -> None:
    p = stats.mcnemar_exact(5000, 4000)
    assert 0.0 < p < 1e-20  # 5.6e-26


def test_mcnemar_exact_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="only_b >= 0"):
        stats.mcnemar_exact(3, -1)


def test_paired_comparison_counts_the_four_cells_and_gives_a_verdict() -> None:
    pick = [True, True, False, False, True]
    ref = [True, False, True, False, False]
    test = stats.paired_comparison(pick, ref)
    assert (test.both, test.only_pick, test.only_reference, test.neither) == (1, 2, 1, 1)
    assert test.difference == 1 and test.p_value == 1.0
    assert test.verdict == stats.NO_DIFFERENCE
    record = test.as_dict()
    assert record["only_baseline"] == 1 and record["verdict"] == "no detectable difference"


def test_paired_verdicts_better_and_worse() -> None:
    gains = [True] * 6 + [True] * 10
    base = [False] * 6 + [True] * 10
    assert stats.paired_comparison(gains, base).verdict == stats.BETTER
    assert stats.paired_comparison(base, gains).verdict == stats.WORSE
    assert "p = 0.031, better" in stats.paired_comparison(gains, base).sentence()
    assert stats.paired_comparison(base, gains).sentence().startswith("−6 examples")


def test_paired_comparison_refuses_unpaired_outcomes() -> None:
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_comparison([True, False], [True])
    with pytest.raises(ValueError, match="must not be empty"):
        stats.paired_comparison([], [])


# -- chance and answer shares -----------------------------------------------------------------
def test_chance_accuracy_is_the_mean_of_one_over_the_options() -> None:
    assert stats.chance_accuracy([4, 4, 3, 5]) == pytest.approx((0.25 + 0.25 + 1 / 3 + 0.2) / 4)
    assert stats.chance_accuracy([2] * 7) == 0.5
    assert stats.chance_accuracy([]) is None
    assert stats.chance_accuracy([4, 0]) is None  # a free-form answer: chance undefined


def test_majority_share_counts_invalid_outputs_as_one_kind() -> None:
    assert stats.majority_share(["B", "B", "A", None]) == ("B", 0.5)
    assert stats.majority_share([None, None, "A"]) == (None, pytest.approx(2 / 3))
    assert stats.majority_share([]) == (None, 0.0)


def test_accuracy_interval_reads_stored_bounds_or_computes_them_from_counts() -> None:
    stored = {stats.CI_LOW: 0.1, stats.CI_HIGH: 0.3, "n_correct": 1.0, "n_examples": 2.0}
    assert stats.accuracy_interval(stored) == (0.1, 0.3)
    assert stats.accuracy_interval({"n_correct": 45.0, "n_examples": 200.0}) == pytest.approx(
        (0.172624, 0.287741), abs=1e-6
    )
    assert stats.accuracy_interval({"upper_bound": 0.5, "n_seen": 3.0}) is None


def test_formatting_of_accuracies_and_p_values() -> None:
    assert stats.format_accuracy(0.225, (0.1726, 0.2877)) == "22.5 [17.3, 28.8]"
    assert stats.format_accuracy(0.225, (0.1726, 0.2877), "%") == "22.5% [17.3, 28.8]"
    assert stats.format_accuracy(None) == "-"
    assert (stats.format_p(0.0004), stats.format_p(0.0768), stats.format_p(1.0)) == (
        "p < 0.001",
        "p = 0.077",
        "p = 1.00",
    )
