"""Stop strings and stop patterns in `generate` scoring: a reply ends at the first stop of its
own text (never the prompt's), batching never changes where, and the text is cut the same way
whether generation stopped early or ran to the token limit."""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tale_opt.evaluation.evaluator import Evaluator  # noqa: E402
from tale_opt.evaluation.scoring import StopCondition  # noqa: E402
from tale_opt.tasks.base import Example, Message  # noqa: E402
from tests.conftest import make_tiny_model, make_tiny_tokenizer  # noqa: E402

QUESTIONS = [
    "what is two plus two?",
    "name a colour.",
    "which animal is the largest of all animals that live in the sea today?",
    "is fire hot?",
    "count to three.",
    "why is the sky blue on a clear day, and why is it red at sunset?",
    "hi",
]


class FakeGenerativeTask:
    name = "fake_gen"
    prompt_version = "test-1"

    def __init__(self, stop_strings=(), stop_patterns=()) -> None:
        self.stop_strings = tuple(stop_strings)
        self.stop_patterns = tuple(stop_patterns)

    def messages(self, example: Example) -> list[Message]:
        return [{"role": "user", "content": example.fields["question"]}]

    def labels(self, example: Example) -> tuple[str, ...]:
        return ()

    def continuations(self, example: Example) -> tuple[str, ...]:
        return ()

    def parse(self, text: str, example: Example) -> str | None:
        return text or None

    def is_correct(self, prediction: Any, example: Example) -> bool:
        return prediction == example.answer


EXAMPLES = [Example(f"q{i}", {"question": q}, answer="x") for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def model() -> Any:
    return make_tiny_model("llama", seed=3, num_hidden_layers=3)


def texts(model: Any, task: FakeGenerativeTask, batch_size: int, tokens: int = 16) -> list[str]:
    evaluator = Evaluator(
        model, make_tiny_tokenizer(), task, scoring="generate", max_new_tokens=tokens,
        batch_size=batch_size,
    )  # fmt: skip
    result = evaluator.evaluate(evaluator.prepare(EXAMPLES))
    return [p.text for p in result.predictions]


@pytest.mark.parametrize(
    ("strings", "patterns", "text", "expected"),
    [
        (["\nQ:"], [], "42\nQ: next", ("42", True)),
        (["\n\n", "Q:"], [], "a Q: b\n\nc", ("a ", True)),  # the earliest stop wins
        ([], [r"####[^\n]*\d[^\n]*\n"], "x\n#### 18\n#### 3", ("x\n#### 18\n", True)),
        ([], [r"####[^\n]*\d[^\n]*\n"], "x\n#### 18", ("x\n#### 18", False)),  # no newline yet
        (["Q:"], [], "", ("", False)),
        ([""], [], "abc", ("abc", False)),  # an empty stop string never stops
    ],
)
def test_stop_condition_cut(strings, patterns, text, expected) -> None:
    assert StopCondition(strings, patterns).cut(text) == expected


def test_stops_cut_the_reply_where_the_unstopped_reply_would_be_cut(model) -> None:
    free = texts(model, FakeGenerativeTask(), batch_size=1)
    assert len(set(free)) > 3 and all(len(t) > 4 for t in free)
    # Stop at characters that occur inside most replies, at different positions; "Answer:" is
    # the end of every (plain-text) prompt and must not stop anything.
    common = Counter(c for t in free for c in set(t[1:])).most_common(2)
    stop = StopCondition(["Answer:", *(c for c, _ in common)])
    expected = [stop.cut(t)[0] for t in free]
    assert sum(e != t for e, t in zip(expected, free, strict=True)) >= 3  # stops really bite
    task = FakeGenerativeTask(stop_strings=stop.strings)
    for batch_size in (1, 3, 16):
        assert texts(model, task, batch_size) == expected


def test_stop_patterns_keep_the_match_and_agree_across_batch_sizes(model) -> None:
    free = texts(model, FakeGenerativeTask(), batch_size=1)
    char = Counter(c for t in free for c in set(t[2:])).most_common(1)[0][0]
    pattern = "." + re.escape(char)  # any character, then that one
    stop = StopCondition((), [pattern])
    expected = [stop.cut(t)[0] for t in free]
    assert any(e != t for e, t in zip(expected, free, strict=True))
    task = FakeGenerativeTask(stop_patterns=[pattern])
    assert texts(model, task, 1) == texts(model, task, 4) == expected
    assert all(e.endswith(char) for e, t in zip(expected, free, strict=True) if e != t)


def test_evaluator_argument_overrides_the_tasks_stop_strings(model) -> None:
    free = texts(model, FakeGenerativeTask(), batch_size=2, tokens=8)
    task = FakeGenerativeTask(stop_strings=[free[0][2]])
    evaluator = Evaluator(
        model, make_tiny_tokenizer(), task, scoring="generate", max_new_tokens=8, stop_strings=[]
    )
    result = evaluator.evaluate(evaluator.prepare(EXAMPLES))
    assert [p.text for p in result.predictions] == free
