"""What an evaluation hands back: per-example predictions and the aggregate metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prediction:
    """One example's outcome. `prediction` is None when the output could not be parsed.

    `scores` holds the per-choice log-probabilities for `letters` and `loglik` (empty for
    `generate`); `text` is the generated text, the chosen label, or the chosen continuation.
    """

    example_id: str
    prediction: Any | None
    gold: Any | None
    correct: bool
    text: str
    scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one configuration on one prepared split; predictions in example order."""

    scoring: str
    accuracy: float
    invalid_rate: float
    n_examples: int
    n_correct: int
    n_invalid: int
    predictions: list[Prediction] = field(repr=False)
    seconds: float
    accuracy_norm: float | None = None  # loglik only

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics, as stored in `Observation.metrics`."""
        metrics = {
            "accuracy": self.accuracy,
            "invalid_rate": self.invalid_rate,
            "n_examples": float(self.n_examples),
            "n_correct": float(self.n_correct),
            "n_invalid": float(self.n_invalid),
            "seconds": self.seconds,
            "seconds_per_example": self.seconds / max(self.n_examples, 1),
        }
        if self.accuracy_norm is not None:
            metrics["accuracy_norm"] = self.accuracy_norm
        return metrics
