"""The shared prompt prefix runs once per candidate and changes scores only to rounding: the
same predictions and log-probabilities within float tolerance as the plain path, on every
family whose cache allows it, with layers dropped, with prefix reuse (which stays bit-exact on
top of it) and in few-shot prompts; other families keep the plain path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tale_opt.errors import UsageError  # noqa: E402
from tale_opt.evaluation.evaluator import Evaluator  # noqa: E402
from tale_opt.evaluation.shared_prefix import (  # noqa: E402
    shared_prefix_length,
    supports_shared_prefix,
)
from tale_opt.model.surgery import decoder_layers  # noqa: E402
from tale_opt.pipeline.candidates import check_eval_options  # noqa: E402
from tale_opt.types import DropSet  # noqa: E402
from tests.conftest import TINY_FAMILIES, make_tiny_model  # noqa: E402
from tests.test_evaluator import FakeMCTask, make_examples, make_tokenizer  # noqa: E402

NUM_LAYERS = 6
BATCH = 3
# Plain-cache families; the others have sliding-window layers in these tiny configs.
SUPPORTED = ["llama", "qwen3"]
DROPS = [DropSet(), DropSet((0,)), DropSet((2,)), DropSet((1, 5)), DropSet((0, 3, 4))]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


@pytest.fixture(scope="module")
def task() -> FakeMCTask:
    return FakeMCTask(make_examples())


def evaluators(family: str, scoring: str, tokenizer: Any, task: Any) -> tuple[Any, Any, Any, Any]:
    """(shared, its split, plain, its split) over one model."""
    model = make_tiny_model(family, vocab_size=len(tokenizer), num_hidden_layers=NUM_LAYERS)
    shared = Evaluator(model, tokenizer, task, scoring=scoring, batch_size=BATCH)
    plain = Evaluator(model, tokenizer, task, scoring=scoring, batch_size=BATCH,
                      shared_prefix=False)  # fmt: skip
    return shared, shared.prepare(task.examples), plain, plain.prepare(task.examples)


def assert_same_up_to_rounding(ours: Any, theirs: Any) -> None:
    assert [p.prediction for p in ours.predictions] == [p.prediction for p in theirs.predictions]
    assert ours.accuracy == theirs.accuracy
    for a, b in zip(ours.predictions, theirs.predictions, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=1e-4, rel=1e-5)


def test_shared_prefix_length() -> None:
    assert shared_prefix_length([(1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 7, 8)]) == 5
    # Each prompt keeps its last token: identical prompts share all but one.
    assert shared_prefix_length([(1, 2, 3, 4, 5, 6)] * 3) == 5
    assert shared_prefix_length([(1, 2, 3, 4, 5), (1, 2, 3, 4, 5, 6, 7)]) == 4
    # Below the minimum the extra forward is not worth it.
    assert shared_prefix_length([(1, 2, 3, 9), (1, 2, 3, 8)]) == 0
    assert shared_prefix_length([(1, 2, 3, 9), (1, 2, 3, 8)], min_tokens=1) == 3
    assert shared_prefix_length([(5, 1), (6, 1)], min_tokens=1) == 0
    assert shared_prefix_length([]) == 0


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_only_plain_cache_families_use_it(family: str, tokenizer: Any, task: Any) -> None:
    shared, prepared, _, plain_prepared = evaluators(family, "letters", tokenizer, task)
    supported = family in SUPPORTED
    assert supports_shared_prefix(shared.model) is supported
    assert shared.shared_prefix is supported
    assert (prepared.shared_len > 0) is supported
    assert plain_prepared.shared_len == 0


@pytest.mark.parametrize("scoring", ["letters", "loglik"])
@pytest.mark.parametrize("family", SUPPORTED)
def test_scores_equal_the_plain_path_up_to_rounding(family, scoring, tokenizer, task) -> None:
    shared, prepared, plain, plain_prepared = evaluators(family, scoring, tokenizer, task)
    # The chat header and the system turn are shared by every prompt.
    assert prepared.shared_len >= 10
    assert prepared.row_prompt_ids[0] == prepared.prompt_ids[0][prepared.shared_len :]
    for drop in DROPS:
        ours = shared.evaluate(prepared, drop)
        theirs = plain.evaluate(plain_prepared, drop)
        assert_same_up_to_rounding(ours, theirs)
        if scoring == "loglik":
            assert ours.accuracy_norm == theirs.accuracy_norm


def test_rows_run_only_their_own_tokens(tokenizer: Any, task: Any) -> None:
    shared, prepared, plain, plain_prepared = evaluators("llama", "letters", tokenizer, task)
    seen: list[int] = []
    handle = decoder_layers(shared.model)[0].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].shape[0] * args[0].shape[1])
    )
    try:
        shared.evaluate(prepared, DropSet((3,)))
        with_prefix = sum(seen)
        seen.clear()
        plain.evaluate(plain_prepared, DropSet((3,)))
        without = sum(seen)
    finally:
        handle.remove()
    # One forward of the P prefix tokens, then every row of every batch is P tokens shorter.
    p, n = prepared.shared_len, len(prepared)
    assert with_prefix == without - p * n + p


@pytest.mark.parametrize("scoring", ["letters", "loglik"])
def test_prefix_reuse_on_top_stays_bit_exact(scoring: str, tokenizer: Any, task: Any) -> None:
    shared, prepared, _, _ = evaluators("qwen3", scoring, tokenizer, task)
    assert prepared.shared_len > 0
    for base in (DropSet(), DropSet((1,))):
        cache = shared.prefix_cache(prepared, base, budget_gb=1.0)
        assert cache is not None
        for layer in range(NUM_LAYERS):
            if layer in base:
                continue
            drop = base.add(layer)
            reused = shared.evaluate(prepared, drop, prefix=cache)
            plain = shared.evaluate(prepared, drop)
            assert [(p.prediction, p.scores) for p in reused.predictions] == [
                (p.prediction, p.scores) for p in plain.predictions
            ]


def test_few_shot_demonstrations_are_shared(tokenizer: Any, task: Any) -> None:
    demos = tuple(task.examples[:2])
    few_shot = FakeMCTask([dataclasses.replace(ex, demos=demos) for ex in task.examples[2:]])
    base = FakeMCTask(list(task.examples[2:]))
    model = make_tiny_model("llama", vocab_size=len(tokenizer), num_hidden_layers=NUM_LAYERS)
    zero = Evaluator(model, tokenizer, base, batch_size=BATCH).prepare(base.examples)
    shared = Evaluator(model, tokenizer, few_shot, batch_size=BATCH)
    prepared = shared.prepare(few_shot.examples)
    plain = Evaluator(model, tokenizer, few_shot, batch_size=BATCH, shared_prefix=False)
    # Rendering the demonstrations is the task's business; whatever it renders in front of
    # every question is shared, so rows are no longer than zero-shot rows.
    assert prepared.shared_len >= zero.shared_len
    assert max(map(len, prepared.row_prompt_ids)) <= max(map(len, zero.prompt_ids))
    assert_same_up_to_rounding(
        shared.evaluate(prepared, DropSet((2,))),
        plain.evaluate(plain.prepare(few_shot.examples), DropSet((2,))),
    )


@pytest.mark.parametrize("family", SUPPORTED)
def test_generation_from_the_shared_prefix_matches_the_plain_path(family, tokenizer, task):
    model = make_tiny_model(family, vocab_size=len(tokenizer), num_hidden_layers=NUM_LAYERS)
    options = {"scoring": "generate", "max_new_tokens": 5, "batch_size": BATCH}
    shared = Evaluator(model, tokenizer, task, **options)
    plain = Evaluator(model, tokenizer, task, shared_prefix=False, **options)
    prepared, plain_prepared = shared.prepare(task.examples), plain.prepare(task.examples)
    assert prepared.shared_len >= 10 and plain_prepared.shared_len == 0
    for drop in (DropSet(), DropSet((2,)), DropSet((1, 4))):
        ours = shared.evaluate(prepared, drop)
        theirs = plain.evaluate(plain_prepared, drop)
        texts = [p.text for p in theirs.predictions]
        assert len(set(texts)) > 1 and all(texts)  # real, differing continuations
        assert [p.text for p in ours.predictions] == texts
        assert ours.accuracy == theirs.accuracy


def test_the_option_must_be_a_bool() -> None:
    with pytest.raises(UsageError, match="eval.shared_prefix"):
        check_eval_options({"eval": {"scoring": "letters", "shared_prefix": "yes"}})


def test_the_prefix_cache_is_never_written(tokenizer: Any, task: Any) -> None:
    shared, prepared, _, _ = evaluators("llama", "letters", tokenizer, task)
    from tale_opt.evaluation.shared_prefix import prefix_kv

    with torch.inference_mode():
        kv = prefix_kv(shared.model, prepared.shared_prefix, torch.device("cpu"))
        before = [k.clone() for k in kv.keys]
        shared._predict(prepared, lambda _n: None, None, kv)
    assert all(torch.equal(a, b) for a, b in zip(before, kv.keys, strict=True))
    assert all(k.shape[0] == 1 and k.shape[-2] == prepared.shared_len for k in kv.keys)
