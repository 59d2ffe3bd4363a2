"""Inputs that would make every configuration score alike, refused before any candidate runs:
questions with fewer than two options, and prompts longer than the model's context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tale_opt.errors import UsageError
from tale_opt.evaluation.evaluator import Evaluator, context_length
from tale_opt.tasks.base import Example
from tale_opt.tasks.registry import load_splits
from tests.test_evaluator import FakeMCTask, make_examples, make_model, make_tokenizer

# -- questions with one option --------------------------------------------------------------


def sums_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"q{i}", "question": f"What is {i} + 1?", "options": [str(i + 1), "0"], "gold": 0}
        for i in range(start, start + n)
    ]


def sums_task(tmp_path: Path, optimization: list[dict], evaluation: list[dict]) -> dict:
    paths = {}
    for role, rows in (("optimization", optimization), ("evaluation", evaluation)):
        paths[role] = tmp_path / f"{role}.jsonl"
        paths[role].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "name": "sums",
        "sources": {role: {"path": str(path)} for role, path in paths.items()},
        "row_format": {"name": "choice_list", "choices": "options", "answer": "gold"},
        "prompt": {"user": "Q: {question}\n{choices}"},
        "n_opt": 4,
        "n_eval": 4,
    }


def test_a_question_with_one_option_is_refused_naming_task_split_and_row(tmp_path) -> None:
    evaluation = sums_rows(6, start=100)
    evaluation[3] = {**evaluation[3], "options": ["104"]}
    cfg = sums_task(tmp_path, sums_rows(6), evaluation)
    with pytest.raises(UsageError) as err:
        load_splits(cfg, seed=0)
    message = str(err.value)
    for fragment in ("task 'sums'", "evaluation", "row 3", "id 'q103'", "1 option",
                     "at least two", "remove the row or give it its options"):  # fmt: skip
        assert fragment in message, message


def test_a_question_without_options_is_refused_too(tmp_path) -> None:
    optimization = sums_rows(6)
    optimization[0] = {**optimization[0], "options": [], "gold": 0}
    with pytest.raises(UsageError, match=r"task 'sums'.*optimization.*row 0"):
        load_splits(sums_task(tmp_path, optimization, sums_rows(6, start=100)), seed=0)


def test_two_options_are_enough(tmp_path) -> None:
    splits = load_splits(sums_task(tmp_path, sums_rows(6), sums_rows(6, start=100)), seed=0)
    assert all(len(e.choices) == 2 for e in splits.optimization)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


@pytest.mark.parametrize("scoring", ["letters", "loglik"])
def test_the_evaluator_refuses_a_one_option_example_of_any_task(tokenizer, scoring) -> None:
    examples = make_examples()
    examples[2] = Example("lonely", {"question": "is fire hot ?"}, ("yes",), 0)
    task = FakeMCTask(examples)
    evaluator = Evaluator(make_model(len(tokenizer)), tokenizer, task, scoring=scoring)
    with pytest.raises(UsageError, match=r"task 'fake_mc'.*example 2 \(id 'lonely'\).*1 option"):
        evaluator.prepare(examples)


# -- prompts longer than the context ---------------------------------------------------------


def prompt_lengths(tokenizer: Any, task: FakeMCTask) -> list[int]:
    from tale_opt.evaluation.prompts import PromptEncoder

    encoder = PromptEncoder(tokenizer)
    return [len(encoder.encode(task.messages(e))) for e in task.examples]


@pytest.mark.parametrize(
    ("scoring", "extra", "what"),
    [
        ("letters", 0, "prompt"),
        ("loglik", 3, "longest choice"),  # example 2's longest choice: 3 tokens
        ("generate", 5, "tokens to generate"),
    ],
)
def test_a_prompt_beyond_the_context_is_refused_with_its_lengths(
    tokenizer, scoring: str, extra: int, what: str
) -> None:
    task = FakeMCTask(make_examples())
    lengths = prompt_lengths(tokenizer, task)
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    assert longest == 2
    needed = lengths[longest] + extra
    model = make_model(len(tokenizer), max_position_embeddings=needed - 1)
    evaluator = Evaluator(model, tokenizer, task, scoring=scoring, max_new_tokens=5)
    with pytest.raises(UsageError) as err:
        evaluator.prepare(task.examples, split="optimization")
    message = str(err.value)
    for fragment in (
        "task 'fake_mc'", "optimization split", "example 2 (id 'q2')", f"needs {needed} tokens",
        f"{lengths[longest]} of prompt", what, f"context is {needed - 1} tokens",
    ):  # fmt: skip
        assert fragment in message, message
    # Exactly at the limit is fine.
    model = make_model(len(tokenizer), max_position_embeddings=needed)
    Evaluator(model, tokenizer, task, scoring=scoring, max_new_tokens=5).prepare(task.examples)


def test_the_context_is_the_smaller_of_the_real_limits(tokenizer) -> None:
    model = make_model(len(tokenizer), max_position_embeddings=256)
    tokenizer = make_tokenizer()
    tokenizer.model_max_length = int(1e30)  # what transformers sets when nobody said
    assert context_length(model, tokenizer) == (256, "max_position_embeddings")
    tokenizer.model_max_length = 128
    assert context_length(model, tokenizer) == (128, "tokenizer.model_max_length")
    tokenizer.model_max_length = 4096
    assert context_length(model, tokenizer) == (256, "max_position_embeddings")
