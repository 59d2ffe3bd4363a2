"""`predictions/*.jsonl`: written atomically like every other result file, and in `loglik`
mode each row carries the per-choice log-likelihoods the prediction was made from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tale_opt.evaluation.evaluator import Evaluator
from tale_opt.pipeline.candidates import prediction_rows
from tale_opt.pipeline.outputs import RunWriter
from tests.test_evaluator import FakeMCTask, make_examples, make_model, make_tokenizer


def rows_then_failure(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"id": f"q{i}", "prediction": 0}
    raise RuntimeError("the evaluation died while its rows were being written")


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    with RunWriter(tmp_path) as writer:
        path = writer.write_predictions("heldout_best", [{"id": "q0", "prediction": 1}])
        before = path.read_text()
        with pytest.raises(RuntimeError, match="evaluation died"):
            writer.write_predictions("heldout_best", rows_then_failure(3))
    assert path.read_text() == before
    assert sorted(p.name for p in writer.predictions_dir.iterdir()) == ["heldout_best.jsonl"]


def test_a_predictions_file_is_one_json_object_per_line_readable_by_others(
    tmp_path: Path,
) -> None:
    with RunWriter(tmp_path) as writer:
        path = writer.write_predictions("optimization_baseline", [{"id": "a"}, {"id": "b"}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"id": "a"},
        {"id": "b"},
    ]
    assert path.stat().st_mode & 0o044 == 0o044  # not the private mode of a temp file


def first_max(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


@pytest.fixture(scope="module")
def loglik_result() -> tuple[Any, Any]:
    tokenizer = make_tokenizer()
    task = FakeMCTask(make_examples())
    evaluator = Evaluator(make_model(len(tokenizer)), tokenizer, task, scoring="loglik")
    return task, evaluator.evaluate(evaluator.prepare(task.examples))


def test_loglik_rows_carry_each_choices_loglik_and_its_length_normalized_value(
    loglik_result,
) -> None:
    task, res = loglik_result
    rows = prediction_rows(res)
    assert len(rows) == len(task.examples)
    for row, example in zip(rows, task.examples, strict=True):
        logliks, normed = row["loglik"], row["loglik_norm"]
        assert len(logliks) == len(normed) == len(example.choices)
        assert all(v < 0 for v in logliks)
        # lm-evaluation-harness's acc_norm: divided by the choice text's characters, without
        # the " " that joins it to the prompt.
        for value, norm, text in zip(logliks, normed, example.choices, strict=True):
            assert norm == pytest.approx(value / len(text))
        assert row["prediction"] == first_max(logliks)
        json.dumps(row)  # plain JSON: floats, not tensors


def test_the_normalized_logliks_give_the_reported_accuracy_norm(loglik_result) -> None:
    task, res = loglik_result
    rows = prediction_rows(res)
    picks = [first_max(row["loglik_norm"]) for row in rows]
    right = sum(p == ex.answer_index for p, ex in zip(picks, task.examples, strict=True))
    assert res.accuracy_norm == right / len(rows)


def test_letters_rows_have_no_loglik_fields() -> None:
    tokenizer = make_tokenizer()
    task = FakeMCTask(make_examples())
    evaluator = Evaluator(make_model(len(tokenizer)), tokenizer, task, scoring="letters")
    rows = prediction_rows(evaluator.evaluate(evaluator.prepare(task.examples)))
    assert not {"loglik", "loglik_norm"} & set(rows[0])
