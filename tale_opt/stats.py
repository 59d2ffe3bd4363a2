"""How sure an accuracy is: intervals, paired tests and chance levels (standard library only).

Every accuracy tale_opt reports is a proportion of examples answered correctly, so

* its uncertainty is a **Wilson score interval** (better than the normal approximation for
  small splits and accuracies near 0 or 1, and never outside [0, 1]);
* two configurations scored on the *same* examples are compared with the **exact McNemar
  test**: only the discordant examples (right for one, wrong for the other) carry
  information, and under "no difference" each of them is a fair coin flip, so the two-sided
  p-value is an exact binomial tail. A paired test is far more sensitive than comparing two
  intervals, because most examples are right (or wrong) for both configurations;
* whether a candidate still beats its round's leader, on a split where the leader's outcome on
  every example is known and the candidate's on some: the **paired beta-binomial predictive
  probability** (`paired_win_probability`) that racing uses;
* a multiple-choice task's **chance accuracy** is the mean over its examples of 1 / number of
  options: a model that guesses uniformly scores that on average. A baseline whose interval
  contains it cannot be told apart from guessing, and a search on it ranks noise.

Pure functions of counts and per-example outcomes, shared by the summary, the printed table,
the result files, tracking and reports.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

CONFIDENCE = 0.95
ALPHA = 0.05

# Metric keys of the 95% Wilson interval of a recorded `accuracy`.
CI_LOW, CI_HIGH = "accuracy_ci_low", "accuracy_ci_high"
# Metric keys of a stopped evaluation's accuracy on the examples it scored, with its interval.
SO_FAR = "accuracy_so_far"
SO_FAR_CI_LOW, SO_FAR_CI_HIGH = f"{SO_FAR}_ci_low", f"{SO_FAR}_ci_high"

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`0 < confidence < 1` must hold, but got confidence={confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the proportion `successes / n`.

    Raises:
        ValueError: `n < 1`, or `successes` outside ``0..n``.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"`n >= 1` must hold, but got n={n!r}")
    if int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"`0 <= successes <= n` must hold, but got ({successes=}, {n=})")
    z = _z(confidence)
    p = successes / n
    z2n = z * z / n
    center = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    # Clamp rounding at the edges: the exact bounds for 0 and n successes are 0 and 1.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts.

    `only_a` examples are right for A and wrong for B, `only_b` the reverse. Under no
    difference each discordant example favours A with probability 1/2, so the p-value is
    ``min(1, 2 * P[Binomial(only_a + only_b, 1/2) <= min(only_a, only_b)])``; with no
    discordant example it is 1 (nothing tells the two apart).
    """
    for name, value in (("only_a", only_a), ("only_b", only_b)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"`{name} >= 0` must be an integer, but got {name}={value!r}")
    n = int(only_a) + int(only_b)
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    # Exact integer arithmetic, then one division: no underflow for large n.
    tail = sum(math.comb(n, i) for i in range(int(k) + 1))
    return min(1.0, 2 * tail / 2**n)  # int / int: exact, correctly rounded, any size


@dataclass(frozen=True)
class PairedComparison:
    """A configuration against a reference (Baseline) on the same examples.

    `only_pick`: examples the configuration gets right and the reference wrong;
    `only_reference`: the reverse. `verdict` is "better" / "worse" when the exact McNemar
    p-value is below `alpha`, else "no detectable difference".
    """

    n: int
    only_pick: int
    only_reference: int
    both: int
    neither: int
    p_value: float
    alpha: float = ALPHA

    @property
    def difference(self) -> int:
        """Examples gained over the reference (negative: lost)."""
        return self.only_pick - self.only_reference

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    @property
    def verdict(self) -> str:
        if not self.significant:
            return NO_DIFFERENCE
        return BETTER if self.difference > 0 else WORSE

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "n": self.n,
            "only_pick": self.only_pick,
            "only_baseline": self.only_reference,
            "both": self.both,
            "neither": self.neither,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "verdict": self.verdict,
        }

    def sentence(self) -> str:
        """E.g. ``+8 examples over baseline (12 vs 4 discordant), p = 0.077, not significant``."""
        sign = "+" if self.difference >= 0 else "−"
        verdict = f"{self.verdict}" if self.significant else "not significant"
        return (
            f"{sign}{abs(self.difference)} examples over baseline "
            f"({self.only_pick} vs {self.only_reference} discordant), "
            f"{format_p(self.p_value)}, {verdict}"
        )


def paired_comparison(
    pick: Sequence[bool], reference: Sequence[bool], alpha: float = ALPHA
) -> PairedComparison:
    """Exact McNemar comparison of per-example correctness on the same examples, same order.

    Raises:
        ValueError: the two sequences differ in length or are empty; `alpha` not in (0, 1).
    """
    if len(pick) != len(reference):
        raise ValueError(
            "paired outcomes must cover the same examples, but got "
            f"{len(pick)} and {len(reference)} outcomes"
        )
    if not pick:
        raise ValueError("paired outcomes must not be empty")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"`0 < alpha < 1` must hold, but got alpha={alpha!r}")
    counts = Counter((bool(a), bool(b)) for a, b in zip(pick, reference, strict=True))
    only_pick, only_ref = counts[(True, False)], counts[(False, True)]
    return PairedComparison(
        n=len(pick),
        only_pick=only_pick,
        only_reference=only_ref,
        both=counts[(True, True)],
        neither=counts[(False, False)],
        p_value=mcnemar_exact(only_pick, only_ref),
        alpha=alpha,
    )


def beta_binomial_pmf(n: int, a: float, b: float) -> list[float]:
    """P[X = k] for k = 0..n of X ~ BetaBinomial(n, a, b): the number of successes in `n` more
    trials whose success rate has a Beta(a, b) distribution.

    Raises:
        ValueError: `n < 0`, or `a` or `b` not positive.
    """
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"`n >= 0` must be an integer, but got n={n!r}")
    if not (a > 0 and b > 0):
        raise ValueError(f"`a > 0` and `b > 0` must hold, but got (a={a!r}, b={b!r})")

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    base = log_beta(a, b)
    log_n = math.lgamma(n + 1)
    return [
        math.exp(
            log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + log_beta(k + a, n - k + b) - base
        )
        for k in range(n + 1)
    ]  # fmt: skip


def paired_win_probability(
    mine: Mapping[int, bool],
    leader: Mapping[int, bool],
    need: int,
    prior: tuple[float, float] = (1.0, 1.0),
) -> float:
    """The predictive probability that a candidate ends with at least `need` examples right.

    `leader` holds the round leader's outcome on every example of the split (index -> right),
    `mine` the candidate's on the examples scored so far. The examples are split by the
    leader's outcome: the candidate's chance of being right where the leader is right, and
    where it is wrong, each get a Beta(`prior`) prior updated with the examples both have seen
    (the pairing: they answer the same questions, and a candidate tends to get right what the
    leader gets right). The candidate's count on the examples still to score is then the sum
    of two independent beta-binomial counts, one per stratum, sized by how many of those
    examples the leader got right or wrong (known), and the probability is exact.

    `need` is the leader's count, plus one when the candidate loses a tie (`rank_key`).

    Raises:
        ValueError: `mine` names an example `leader` does not have; a prior count not > 0.
    """
    unknown = set(mine) - set(leader)
    if unknown:
        raise ValueError(
            f"the candidate's outcomes name examples the leader's do not: {sorted(unknown)[:5]}"
        )
    seen = {True: [0, 0], False: [0, 0]}  # leader right / wrong -> [candidate right, seen]
    for i, right in mine.items():
        counts = seen[leader[i]]
        counts[0] += bool(right)
        counts[1] += 1
    left = {True: 0, False: 0}  # examples not scored yet, by the leader's outcome
    for i, right in leader.items():
        if i not in mine:
            left[bool(right)] += 1
    short = need - (seen[True][0] + seen[False][0])
    if short <= 0:
        return 1.0
    if short > left[True] + left[False]:
        return 0.0
    a, b = prior
    pmfs = {
        stratum: beta_binomial_pmf(
            left[stratum], a + seen[stratum][0], b + seen[stratum][1] - seen[stratum][0]
        )
        for stratum in (True, False)
    }
    # tail[j] = P[right where the leader is right >= j], j = 0 .. left[True] + 1.
    tail = [0.0] * (left[True] + 2)
    for j in range(left[True], -1, -1):
        tail[j] = tail[j + 1] + pmfs[True][j]
    total = 0.0
    for k, p in enumerate(pmfs[False]):
        j = short - k
        total += p * (1.0 if j <= 0 else tail[j] if j <= left[True] else 0.0)
    return min(1.0, max(0.0, total))


def chance_accuracy(option_counts: Iterable[int]) -> float | None:
    """Expected accuracy of uniform guessing: the mean of 1 / options over the examples.

    None when there are no examples or any has no fixed options (free-form answers, where
    chance is essentially zero and not defined by this rule).
    """
    counts = list(option_counts)
    if not counts or any(c < 1 for c in counts):
        return None
    return sum(1.0 / c for c in counts) / len(counts)


def majority_share(predictions: Iterable[Hashable | None]) -> tuple[Hashable | None, float]:
    """The most frequent prediction and its share (invalid outputs, None, count as one kind).

    A model that answers one label for most questions scores the base rate of that label,
    whatever it knows; this share shows it. ``(None, 0.0)`` for no predictions.
    """
    counts = Counter(predictions)
    total = sum(counts.values())
    if not total:
        return None, 0.0
    value, count = max(counts.items(), key=lambda item: (item[1], str(item[0])))
    return value, count / total


def accuracy_interval(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    """The 95% interval of a complete evaluation's accuracy from its metrics: the stored
    bounds, else computed from `n_correct` / `n_examples` (results recorded before intervals
    were); None for a stopped evaluation or metrics without counts (e.g. a perplexity)."""
    if metrics.get(CI_LOW) is not None and metrics.get(CI_HIGH) is not None:
        return float(metrics[CI_LOW]), float(metrics[CI_HIGH])
    n, correct = metrics.get("n_examples"), metrics.get("n_correct")
    if not n or correct is None:
        return None
    return wilson_interval(int(correct), int(n))


def so_far_interval(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    """The 95% interval of a stopped evaluation's `accuracy_so_far`; None without one."""
    low, high = metrics.get(SO_FAR_CI_LOW), metrics.get(SO_FAR_CI_HIGH)
    return None if low is None or high is None else (float(low), float(high))


def format_p(p: float) -> str:
    """``p = 0.077``, ``p < 0.001``, ``p = 1.00``: as people write p-values."""
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.995 else "p = 1.00"


def format_accuracy(
    accuracy: float | None, interval: Sequence[float] | None = None, unit: str = ""
) -> str:
    """``22.5 [17.3, 28.7]``: percent with its interval (``unit="%"``: ``22.5% [17.3, 28.7]``);
    ``-`` when unknown."""
    if accuracy is None:
        return "-"
    text = f"{100 * accuracy:.1f}{unit}"
    if interval is not None and len(interval) == 2:
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


__all__ = [
    "ALPHA",
    "BETTER",
    "CI_HIGH",
    "CI_LOW",
    "CONFIDENCE",
    "NO_DIFFERENCE",
    "SO_FAR",
    "SO_FAR_CI_HIGH",
    "SO_FAR_CI_LOW",
    "WORSE",
    "PairedComparison",
    "accuracy_interval",
    "beta_binomial_pmf",
    "chance_accuracy",
    "format_accuracy",
    "format_p",
    "majority_share",
    "mcnemar_exact",
    "paired_comparison",
    "paired_win_probability",
    "so_far_interval",
    "wilson_interval",
]
