"""What every task provides to the evaluator: examples, a chat rendering, and a scorer.

A task is data + render + score. The evaluator only talks to this interface, so new task
families (generative math, boolean expressions) slot in without touching it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@dataclass(frozen=True)
class Example:
    """One evaluation item.

    `id` is stable across runs (the dataset's native id, else a hash of the content) and is
    what split-disjointness checks and prediction files use. For multiple choice, `choices`
    holds the answer texts in display order and `answer_index` points at the gold one.
    """

    id: str
    fields: Mapping[str, Any]
    choices: tuple[str, ...] = ()
    answer_index: int | None = None
    answer: str | None = None  # gold answer text for generative tasks
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Splits:
    """Disjoint optimization and evaluation splits (checked when built)."""

    optimization: Sequence[Example]
    evaluation: Sequence[Example]
    fingerprint: str  # hash of both splits' example ids, for study/run identity
    # How the splits were drawn (pool sizes, duplicates dropped, overlap excluded), for reports.
    info: Mapping[str, Any] = field(default_factory=dict)


class Task(Protocol):
    name: str
    prompt_version: str  # hash of everything that shapes the prompt; changes invalidate studies

    def messages(self, example: Example) -> list[Message]:
        """Chat messages for the example, ending with the user turn."""

    def labels(self, example: Example) -> tuple[str, ...]:
        """Display labels of the choices, in order ("A", "B", ...); empty for generative tasks."""

    def continuations(self, example: Example) -> tuple[str, ...]:
        """Per-choice continuations scored by log-likelihood (`loglik` scoring)."""

    def parse(self, text: str, example: Example) -> Any | None:
        """The answer parsed from generated text (a choice index for multiple choice, a
        normalized answer for generative tasks); None when unparseable (counted as invalid)."""

    def is_correct(self, prediction: Any | None, example: Example) -> bool:
        """Whether a parsed prediction is right."""
