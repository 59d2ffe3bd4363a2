"""What an evaluation hands back: per-example predictions and the aggregate metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tale_opt.stats import (
    CI_HIGH,
    CI_LOW,
    SO_FAR,
    SO_FAR_CI_HIGH,
    SO_FAR_CI_LOW,
    wilson_interval,
)


@dataclass(frozen=True)
class Prediction:
    """One example's outcome. `prediction` is None when the output could not be parsed.

    `scores` holds the per-choice log-probabilities for `letters` and `loglik` (empty for
    `generate`); `norm_scores` (`loglik` only) each choice's log-likelihood divided by the
    length of its text in characters, what `accuracy_norm` ranks by; `text` is the generated
    text, the chosen label, or the chosen continuation.
    """

    example_id: str
    prediction: Any | None
    gold: Any | None
    correct: bool
    text: str
    scores: tuple[float, ...] = ()
    norm_scores: tuple[float, ...] = ()

    def record(self, scoring: str) -> dict[str, Any]:
        """The example's line in `predictions/*.jsonl` (plain JSON values).

        With `loglik` scoring it also holds per choice, in order, the summed log-likelihood
        (`loglik`) and the length-normalized one (`loglik_norm`), so `acc` and `acc_norm` can
        be recomputed or compared with lm-evaluation-harness example by example.
        """
        row: dict[str, Any] = {
            "id": self.example_id,
            "prediction": self.prediction,
            "gold": self.gold,
            "correct": self.correct,
            "output": self.text,
        }
        if scoring == "loglik":
            row["loglik"] = [float(s) for s in self.scores]
            row["loglik_norm"] = [float(s) for s in self.norm_scores]
        return row


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one configuration on one prepared split; predictions in example order.

    An evaluation stopped early (exact early termination) has ``n_seen < n_examples``:
    `predictions`, `n_correct` and `n_invalid` cover the `n_seen` examples scored, and
    `accuracy` is the upper bound ``max_correct / n_examples``.
    """

    scoring: str
    accuracy: float
    invalid_rate: float
    n_examples: int
    n_correct: int
    n_invalid: int
    predictions: list[Prediction] = field(repr=False)
    seconds: float
    accuracy_norm: float | None = None  # loglik only
    n_seen: int | None = None  # examples scored when stopped early; None = all of them

    @property
    def complete(self) -> bool:
        """Whether every example was scored (not stopped early)."""
        return self.n_seen is None

    @property
    def max_correct(self) -> int:
        """Most examples this configuration gets right: `n_correct`, or when stopped early,
        the correct ones so far plus every example not scored."""
        if self.n_seen is None:
            return self.n_correct
        return self.n_correct + self.n_examples - self.n_seen

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics, as stored in `Observation.metrics`.

        A stopped evaluation has no accuracy: it reports `upper_bound` (= ``max_correct /
        n_examples``), `n_seen`, `n_correct_so_far` and `max_correct` instead, and once it
        scored anything `accuracy_so_far` (``n_correct_so_far / n_seen``) with its 95% Wilson
        interval (`accuracy_so_far_ci_low` / `_high`): what the examples it saw say.
        """
        if not self.complete:
            so_far: dict[str, float] = {}
            if self.n_seen:
                low, high = wilson_interval(self.n_correct, self.n_seen)
                so_far = {
                    SO_FAR: self.n_correct / self.n_seen,
                    SO_FAR_CI_LOW: low,
                    SO_FAR_CI_HIGH: high,
                }
            return {
                "upper_bound": self.accuracy,
                "n_examples": float(self.n_examples),
                "n_seen": float(self.n_seen),
                "n_correct_so_far": float(self.n_correct),
                "max_correct": float(self.max_correct),
                "n_invalid_so_far": float(self.n_invalid),
                "seconds": self.seconds,
                "seconds_per_example": self.seconds / max(self.n_seen, 1),
                **so_far,
            }
        low, high = wilson_interval(self.n_correct, self.n_examples)
        metrics = {
            "accuracy": self.accuracy,
            CI_LOW: low,
            CI_HIGH: high,
            "invalid_rate": self.invalid_rate,
            "n_examples": float(self.n_examples),
            "n_correct": float(self.n_correct),
            "n_invalid": float(self.n_invalid),
            "seconds": self.seconds,
            "seconds_per_example": self.seconds / max(self.n_examples, 1),
        }
        if self.accuracy_norm is not None:
            metrics["accuracy_norm"] = self.accuracy_norm
            n_norm = round(self.accuracy_norm * self.n_examples)
            low, high = wilson_interval(n_norm, self.n_examples)
            metrics["accuracy_norm_ci_low"], metrics["accuracy_norm_ci_high"] = low, high
        return metrics


@dataclass(frozen=True)
class ResultDiff:
    """How two evaluations of the same examples differ, example by example (`compare_results`).

    `max_abs_diff` is over every per-choice score (log-probability or summed log-likelihood);
    `outside` names the examples with a score farther apart than the tolerance;
    `different_predictions` those whose picks differ, and `unexplained` those among them
    where the picks' scores are farther apart than twice the tolerance (within it, two
    choices tie up to rounding and either pick is right).
    """

    n_examples: int
    max_abs_diff: float
    tolerance: tuple[float, float]  # (absolute, relative to the second result's score)
    outside: tuple[str, ...]
    different_predictions: tuple[str, ...]
    unexplained: tuple[str, ...]
    same_accuracy: bool

    @property
    def bit_identical(self) -> bool:
        return self.max_abs_diff == 0.0 and not self.different_predictions

    @property
    def within_tolerance(self) -> bool:
        return not self.outside and not self.unexplained

    def record(self) -> dict[str, Any]:
        """Plain JSON values (example ids cut to the first 10)."""
        return {
            "n_examples": self.n_examples,
            "max_abs_diff": self.max_abs_diff,
            "abs_tolerance": self.tolerance[0],
            "rel_tolerance": self.tolerance[1],
            "n_outside_tolerance": len(self.outside),
            "n_different_predictions": len(self.different_predictions),
            "n_unexplained_predictions": len(self.unexplained),
            "predictions_agree": not self.different_predictions,
            "same_accuracy": self.same_accuracy,
            "bit_identical": self.bit_identical,
            "within_tolerance": self.within_tolerance,
            "examples_outside": list(self.outside[:10]),
            "examples_unexplained": list(self.unexplained[:10]),
        }


def compare_results(
    ours: EvalResult, theirs: EvalResult, *, abs_tol: float = 0.0, rel_tol: float = 0.0
) -> ResultDiff:
    """Compare two complete evaluations of the same examples (`theirs` is the reference).

    A score of `ours` is within tolerance when ``|a - b| <= abs_tol + rel_tol * |b|``;
    the default (0, 0) asks for bit-identical scores.

    Raises:
        ValueError: The results cover different examples (not the same split or order).
    """
    ids = [p.example_id for p in ours.predictions]
    if ids != [p.example_id for p in theirs.predictions]:
        raise ValueError("the two results do not cover the same examples in the same order")
    max_diff, outside, different, unexplained = 0.0, [], [], []
    for a, b in zip(ours.predictions, theirs.predictions, strict=True):
        if len(a.scores) != len(b.scores):
            raise ValueError(f"example {a.example_id!r}: different numbers of choices")
        gaps = [abs(x - y) for x, y in zip(a.scores, b.scores, strict=True)]
        max_diff = max([max_diff, *gaps])
        if any(g > abs_tol + rel_tol * abs(y) for g, y in zip(gaps, b.scores, strict=True)):
            outside.append(a.example_id)
        if a.prediction != b.prediction:
            different.append(a.example_id)
            if not _near_tie(a, b, abs_tol, rel_tol):
                unexplained.append(a.example_id)
    return ResultDiff(
        n_examples=len(ids), max_abs_diff=max_diff, tolerance=(abs_tol, rel_tol),
        outside=tuple(outside), different_predictions=tuple(different),
        unexplained=tuple(unexplained), same_accuracy=ours.accuracy == theirs.accuracy,
    )  # fmt: skip


def _near_tie(a: Prediction, b: Prediction, abs_tol: float, rel_tol: float) -> bool:
    """Whether the two picks' scores in the reference `b` are within twice the tolerance (a
    tie up to rounding). Without per-choice scores (generated text) nothing explains a
    different prediction."""
    picks = (a.prediction, b.prediction)
    if not b.scores or not all(isinstance(p, int) and 0 <= p < len(b.scores) for p in picks):
        return False
    x, y = (b.scores[p] for p in picks)
    return abs(x - y) <= 2 * (abs_tol + rel_tol * max(abs(x), abs(y)))
