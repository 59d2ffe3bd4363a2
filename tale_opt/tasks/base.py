"""What every task provides to the evaluator: examples, a chat rendering, and a scorer.

A task is data + render + score. The evaluator only talks to this interface, so task families
(multiple choice, generative math, boolean expressions) slot in without touching it.

Few-shot demonstrations travel with the example (`Example.demos`): the splits loader draws them
once per run from a pool disjoint from both splits and attaches the same tuple to every example,
so whoever renders an example renders its demonstrations too.
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
    answer: str | None = None  # normalized gold answer for generative tasks
    meta: Mapping[str, Any] = field(default_factory=dict)
    # Few-shot demonstrations shown before this example (empty = zero-shot).
    demos: tuple[Example, ...] = ()


@dataclass(frozen=True)
class Splits:
    """Disjoint optimization and evaluation splits, and the few-shot demonstrations (all three
    pairwise disjoint, checked when built)."""

    optimization: Sequence[Example]
    evaluation: Sequence[Example]
    fingerprint: str  # hash of every part's example ids, for study/run identity
    # How the splits were drawn (pool sizes, duplicates dropped, overlap excluded), for reports.
    info: Mapping[str, Any] = field(default_factory=dict)
    # The k demonstrations, in the order they are shown (empty = zero-shot).
    fewshot: Sequence[Example] = ()


class Task(Protocol):
    name: str
    # Hash of everything that shapes the prompt (few-shot layout included) and of the stop
    # settings and answer parser that shape what is scored; changes invalidate studies.
    prompt_version: str
    # Generation ends at any of these strings (cut before it) or once a pattern matches (kept up
    # to the end of the match); both empty for tasks that decode one token.
    stop_strings: tuple[str, ...]
    stop_patterns: tuple[str, ...]

    def messages(self, example: Example) -> list[Message]:
        """Chat messages for the example, ending with the user turn."""

    def target(self, example: Example) -> str:
        """The ideal assistant reply (a demonstration's answer turn)."""

    def labels(self, example: Example) -> tuple[str, ...]:
        """Display labels of the choices, in order ("A", "B", ...); empty for generative tasks."""

    def continuations(self, example: Example) -> tuple[str, ...]:
        """Per-choice continuations scored by log-likelihood (`loglik` scoring)."""

    def n_options(self, example: Example) -> int:
        """How many answers the example allows (choices; True/False: 2); 0 = free-form."""

    def parse(self, text: str, example: Example) -> Any | None:
        """The answer parsed from generated text (a choice index for multiple choice, a
        normalized answer for generative tasks); None when unparseable (counted as invalid)."""

    def is_correct(self, prediction: Any | None, example: Example) -> bool:
        """Whether a parsed prediction is right."""
