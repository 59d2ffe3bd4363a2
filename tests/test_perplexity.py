"""Perplexity probe: windows score every token once, batched equals a direct one-by-one
computation on a tiny model, long documents slide with a stride, and the text sources load."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tale_opt.errors import UsageError  # noqa: E402
from tale_opt.evaluation.perplexity import (  # noqa: E402
    evaluate_perplexity,
    prepare_text,
    task_texts,
    windows_of,
)
from tale_opt.tasks.text import file_texts, lambada_texts, load_texts  # noqa: E402
from tale_opt.types import DropSet  # noqa: E402

TEXTS = [
    "the cat sat on the mat.",
    "a longer document: " + " ".join(f"word{i % 7} and {i}" for i in range(40)),
    "ok",
    "x",  # one token (plus BOS): nothing to score but the token after BOS
]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    from tests.conftest import make_tiny_model, make_tiny_tokenizer

    return make_tiny_model("llama", num_hidden_layers=4), make_tiny_tokenizer()


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 60), max_length=st.integers(2, 20), stride_frac=st.floats(0.05, 1.0))
def test_windows_score_every_token_but_the_first_exactly_once(
    length: int, max_length: int, stride_frac: float
) -> None:
    stride = max(1, min(max_length, round(max_length * stride_frac)))
    ids = list(range(length))
    scored: list[int] = []
    for window in windows_of(ids, max_length, stride):
        assert 1 <= window.n_scored < len(window.ids) <= max_length
        scored += list(window.ids[-window.n_scored :])
    # Each token is scored once, in order; only the first (no context) is never scored, plus,
    # when windows do not overlap, the first token of each later window.
    assert scored == sorted(set(scored)) and 0 not in scored
    if stride < max_length:
        assert scored == ids[1:]


def _direct_nll(model: Any, ids: list[int], n_scored: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    n = len(ids)
    return -sum(logprobs[t - 1, ids[t]].item() for t in range(n - n_scored, n))


@pytest.mark.parametrize(("max_length", "stride"), [(512, 512), (16, 8), (16, 16), (12, 5)])
def test_batched_perplexity_equals_a_direct_window_by_window_computation(
    tiny, max_length: int, stride: int
) -> None:
    model, tokenizer = tiny
    prepared = prepare_text(tokenizer, TEXTS, max_length=max_length, stride=stride)
    total = sum(_direct_nll(model, list(w.ids), w.n_scored) for w in prepared.windows)
    for batch_size in (1, 3, 64):
        result = evaluate_perplexity(model, prepared, pad_id=0, batch_size=batch_size)
        assert result.n_tokens == prepared.n_scored
        assert result.nll_sum == pytest.approx(total, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / prepared.n_scored), rel=1e-5)
    assert result.score == -result.perplexity


def test_one_window_is_the_plain_full_sequence_loss(tiny) -> None:
    model, tokenizer = tiny
    text = TEXTS[1]
    ids = tokenizer.encode(text)
    prepared = prepare_text(tokenizer, [text], max_length=len(ids), stride=len(ids))
    result = evaluate_perplexity(model, prepared, pad_id=0)
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert result.mean_nll == pytest.approx(loss, rel=1e-5)


def test_dropping_layers_changes_perplexity_and_restores_the_model(tiny) -> None:
    model, tokenizer = tiny
    prepared = prepare_text(tokenizer, TEXTS, max_length=16, stride=8)
    before = evaluate_perplexity(model, prepared, pad_id=0)
    dropped = evaluate_perplexity(model, prepared, DropSet((1, 2)), pad_id=0)
    after = evaluate_perplexity(model, prepared, pad_id=0)
    assert dropped.nll_sum != pytest.approx(before.nll_sum)
    assert after.nll_sum == pytest.approx(before.nll_sum, rel=1e-6)
    assert set(before.metrics()) == {"perplexity", "mean_nll", "n_tokens", "seconds"}


@pytest.mark.parametrize(("max_length", "stride"), [(1, 1), (8, 0), (8, 9)])
def test_bad_window_sizes_are_usage_errors(tiny, max_length: int, stride: int) -> None:
    with pytest.raises(UsageError, match="stride <= max_length"):
        prepare_text(tiny[1], TEXTS, max_length=max_length, stride=stride)


def test_lambada_passages_are_context_plus_the_final_word() -> None:
    texts = lambada_texts()
    assert len(texts) == 5153
    assert texts[0].endswith("his mouth curved in a confident grin, I don't care about signs")
    assert load_texts({"lambada": True, "limit": 3}) == texts[:3]


def test_local_files_give_documents(tmp_path: Path) -> None:
    plain = tmp_path / "corpus.txt"
    plain.write_text("line one\n\nline two\n")
    assert file_texts(str(plain)) == ["line one\n\nline two\n"]
    rows = tmp_path / "docs.jsonl"
    rows.write_text('{"body": "first"}\n{"body": "second"}\n')
    assert load_texts({"path": str(rows), "column": "body"}) == ["first", "second"]
    with pytest.raises(UsageError, match="no text column 'text'"):
        load_texts({"path": str(rows)})
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(UsageError, match="is empty"):
        file_texts(str(tmp_path / "empty.txt"))
    with pytest.raises(UsageError, match="exactly one of"):
        load_texts({"lambada": True, "path": str(plain)})


def test_task_texts_are_the_prompts_with_their_gold_replies(tiny) -> None:
    from tale_opt.tasks.registry import build_task, load_splits
    from tests.test_fewshot import task_cfg

    cfg = task_cfg("boolean_expressions", 1)
    task, splits = build_task(cfg), load_splits(cfg, seed=0)
    texts = task_texts(task, splits.evaluation[:2], tiny[1])  # no chat template: plain text
    example = splits.evaluation[0]
    assert texts[0].endswith(f"{example.fields['expression']} is\nAnswer: {example.answer}")
    assert splits.fewshot[0].fields["expression"] in texts[0]
