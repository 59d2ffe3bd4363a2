"""Per-example outcomes of a task-accuracy evaluation: the running state a race hook sees, and
the compact record a trial stores (standard library only).

An evaluation scores its examples batch by batch, in an order fixed by the prepared split (the
same for every candidate of a run). After each batch its race hook gets a `RaceState` -- which
examples were scored and which of them were right -- and answers whether to go on: exact early
termination, the racing pruners and the learning curve all read it.

A trial keeps the outcomes as `outcome_record`: two hexadecimal bit masks over the split's
example indices (bit i = example i), so any process can pair two candidates example by example
(`decode_outcomes`) without the evaluator: ``{"n": 48, "correct": "9f3a…", "seen": "ffff…"}``,
``seen`` left out when every example was scored. 500 examples take 125 characters each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The key of `Observation.extras` (and of a trial's result extras) that holds the record.
OUTCOMES_KEY = "correct"


@dataclass(frozen=True)
class RaceState:
    """What an evaluation has scored so far.

    Attributes:
        n_examples: Examples in the split.
        correct: Example index -> whether it was answered right, for the examples scored so
            far (in the order they were scored). A live view: read it during the call only.
        n_correct: How many of them were right.
    """

    n_examples: int
    correct: Mapping[int, bool]
    n_correct: int

    @property
    def n_seen(self) -> int:
        return len(self.correct)

    @property
    def max_correct(self) -> int:
        """The most examples this configuration can still get right: correct so far plus
        every example not scored yet (what exact early termination bounds)."""
        return self.n_correct + self.n_examples - self.n_seen

    @property
    def accuracy(self) -> float | None:
        """Correct so far / scored so far; None before the first batch."""
        return self.n_correct / self.n_seen if self.correct else None


# Called before the first batch and after each one; False stops the evaluation there.
Race = Callable[[RaceState], bool]


def _mask(indices: Sequence[int] | Any) -> str:
    value = 0
    for i in indices:
        value |= 1 << i
    return format(value, "x")


def outcome_record(n_examples: int, correct: Mapping[int, bool]) -> dict[str, Any]:
    """The trial's record of the outcomes `correct` (index -> right) of a split of
    `n_examples` examples (see the module docstring)."""
    record: dict[str, Any] = {
        "n": n_examples,
        "correct": _mask(i for i, right in correct.items() if right),
    }
    if len(correct) < n_examples:
        record["seen"] = _mask(correct)
    return record


def decode_outcomes(record: Any) -> dict[int, bool] | None:
    """Index -> right of the examples an `outcome_record` covers, in index order; None when
    `record` is not one.

    A plain ``"0110…"`` string (one character per example, all scored: how complete
    evaluations were recorded before) reads as well.
    """
    if isinstance(record, str):
        if not record or set(record) - {"0", "1"}:
            return None
        return {i: bit == "1" for i, bit in enumerate(record)}
    if not isinstance(record, Mapping) or not isinstance(record.get("n"), int):
        return None
    n = record["n"]
    try:
        correct = int(record.get("correct") or "0", 16)
        seen = int(record["seen"], 16) if "seen" in record else (1 << n) - 1
    except (TypeError, ValueError):
        return None
    return {i: bool(correct >> i & 1) for i in range(n) if seen >> i & 1}
