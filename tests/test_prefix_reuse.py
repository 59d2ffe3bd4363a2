"""Prefix reuse never changes a result: a candidate started from the base model's cached hidden
states scores exactly what the plain forward scores, on every supported family and every
scoring mode that uses it, with a full cache or checkpoints, whatever order candidates arrive
in; a cache that does not apply is ignored, never misused."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from searchers.greedy import GreedyElimination  # noqa: E402
from tale_opt.evaluation.evaluator import Evaluator  # noqa: E402
from tale_opt.evaluation.prefix import (  # noqa: E402
    GIB,
    checkpoint_stride,
    forward_sequences,
    state_bytes_per_layer,
)
from tale_opt.evaluation.prefix_reuse import PrefixReuse  # noqa: E402
from tale_opt.model.surgery import decoder_layers  # noqa: E402
from tale_opt.types import Candidate, DropSet, Observation  # noqa: E402
from tests.conftest import TINY_FAMILIES, make_tiny_model  # noqa: E402
from tests.test_evaluator import FakeMCTask, make_examples, make_tokenizer  # noqa: E402

NUM_LAYERS = 6
BATCH = 3  # 8 examples: batches of 3, 3, 2 (loglik: more rows, more batches)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


@pytest.fixture(scope="module")
def task() -> FakeMCTask:
    return FakeMCTask(make_examples())


def setup(family: str, scoring: str, tokenizer: Any, task: FakeMCTask, **kwargs: Any):
    model = make_tiny_model(family, vocab_size=len(tokenizer), num_hidden_layers=NUM_LAYERS)
    evaluator = Evaluator(model, tokenizer, task, scoring=scoring, batch_size=BATCH, **kwargs)
    return evaluator, evaluator.prepare(task.examples)


def outcome(result: Any) -> list[tuple[Any, tuple[float, ...]]]:
    """Everything a result says per example: prediction and the exact scores."""
    return [(p.prediction, p.scores) for p in result.predictions]


def round_candidates(base: DropSet) -> list[DropSet]:
    return [base.add(layer) for layer in range(NUM_LAYERS) if layer not in base]


class LayerCalls:
    """Counts forward calls of each original decoder layer (by original index)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = [0] * NUM_LAYERS
        self.handles = [
            layer.register_forward_hook(self._hook(i))
            for i, layer in enumerate(decoder_layers(model))
        ]

    def _hook(self, i: int) -> Any:
        def hook(*_: Any) -> None:
            self.calls[i] += 1

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("scoring", ["letters", "loglik"])
@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
@pytest.mark.parametrize("base", [DropSet(), DropSet((0, 4))], ids=str)
def test_every_candidate_scores_exactly_as_the_plain_path(family, scoring, base, tokenizer, task):
    evaluator, prepared = setup(family, scoring, tokenizer, task)
    cache = evaluator.prefix_cache(prepared, base, budget_gb=1.0)
    assert cache is not None and cache.stride == 1
    for drop in round_candidates(base):
        plain = evaluator.evaluate(prepared, drop)
        reused = evaluator.evaluate(prepared, drop, prefix=cache)
        assert outcome(reused) == outcome(plain), drop
        assert reused.accuracy == plain.accuracy


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_a_candidate_runs_only_its_layers_above_the_first_extra_drop(family, tokenizer, task):
    evaluator, prepared = setup(family, "letters", tokenizer, task)
    cache = evaluator.prefix_cache(prepared, DropSet(), budget_gb=1.0)
    n_batches = len(cache.checksums)
    for layer in range(1, NUM_LAYERS):
        calls = LayerCalls(evaluator.model)
        evaluator.evaluate(prepared, DropSet((layer,)), prefix=cache)
        calls.close()
        # The shared prompt prefix (llama; not gemma3's sliding cache) runs once through
        # every kept layer; the batches only through the layers above the dropped one.
        once = 1 if prepared.shared_len else 0
        expected = [once] * layer + [0] + [once + n_batches] * (NUM_LAYERS - layer - 1)
        assert calls.calls == expected


@pytest.mark.parametrize("scoring", ["letters", "loglik"])
def test_checkpoints_under_a_small_budget_recompute_from_below_and_stay_exact(
    scoring, tokenizer, task
):
    evaluator, prepared = setup("qwen2", scoring, tokenizer, task)
    per_layer = state_bytes_per_layer(
        forward_sequences(prepared), BATCH, evaluator.model.config.hidden_size, torch.float32
    )
    budget = 2 * per_layer + per_layer // 2  # room for 2 of the 5 storable layers
    cache = evaluator.prefix_cache(prepared, DropSet(), budget_gb=budget / GIB)
    assert cache.stride == 2 and sorted(cache.states) == [2, 4]
    assert cache.nbytes == 2 * per_layer <= budget
    for drop in round_candidates(DropSet()):
        plain = evaluator.evaluate(prepared, drop)
        assert outcome(evaluator.evaluate(prepared, drop, prefix=cache)) == outcome(plain)
    calls = LayerCalls(evaluator.model)
    evaluator.evaluate(prepared, DropSet((3,)), prefix=cache)  # starts at checkpoint 2
    calls.close()
    n = len(cache.checksums)
    assert calls.calls == [0, 0, n, 0, n, n]


def test_footprint_is_the_exact_size_of_the_stored_tensors(tokenizer, task):
    evaluator, prepared = setup("llama", "letters", tokenizer, task)
    cache = evaluator.prefix_cache(prepared, DropSet((1,)), budget_gb=1.0)
    stored = [t for states in cache.states.values() for t in states]
    assert cache.nbytes == sum(t.numel() * t.element_size() for t in stored)
    per_layer = state_bytes_per_layer(forward_sequences(prepared), BATCH, 32, torch.float32)
    assert cache.nbytes == per_layer * len(cache.states) == per_layer * (NUM_LAYERS - 2)


def test_checkpoint_stride_is_the_smallest_that_fits():
    assert checkpoint_stride(29, 10, 290) == 1
    assert checkpoint_stride(29, 10, 289) == 2  # 14 layers at stride 2
    assert checkpoint_stride(29, 10, 10) == 15  # one layer: position 15
    assert checkpoint_stride(29, 10, 9) is None
    assert checkpoint_stride(0, 10, 100) is None
    for budget in range(10, 300, 7):
        k = checkpoint_stride(29, 10, budget)
        assert (29 // k) * 10 <= budget and (k == 1 or (29 // (k - 1)) * 10 > budget)


def test_no_cache_when_the_budget_is_zero_too_small_or_the_mode_generates(tokenizer, task):
    evaluator, prepared = setup("llama", "letters", tokenizer, task)
    assert evaluator.prefix_cache(prepared, DropSet(), budget_gb=0) is None
    assert evaluator.prefix_cache(prepared, DropSet(), budget_gb=1e-9) is None
    generator, gen_prepared = setup("llama", "generate", tokenizer, task, max_new_tokens=2)
    assert generator.prefix_cache(gen_prepared, DropSet(), budget_gb=1.0) is None


def test_a_cache_that_does_not_apply_is_ignored(tokenizer, task):
    evaluator, prepared = setup("mistral", "letters", tokenizer, task)
    cache = evaluator.prefix_cache(prepared, DropSet((2,)), budget_gb=1.0)
    # Not a superset of the base, the base itself, another split, another batching.
    for drop in (DropSet((0, 1)), DropSet((2,)), DropSet((3,))):
        assert cache.start_layer(drop) is None
        plain = evaluator.evaluate(prepared, drop)
        assert outcome(evaluator.evaluate(prepared, drop, prefix=cache)) == outcome(plain)
    other_split = evaluator.prepare(task.examples[:5])
    drop = DropSet((2, 4))
    plain = evaluator.evaluate(other_split, drop)
    assert outcome(evaluator.evaluate(other_split, drop, prefix=cache)) == outcome(plain)
    rebatched = Evaluator(evaluator.model, tokenizer, task, scoring="letters", batch_size=2)
    assert not cache.fits(rebatched.model, prepared, rebatched.batch_size, rebatched.pad_id)
    plain = rebatched.evaluate(prepared, drop)
    assert outcome(rebatched.evaluate(prepared, drop, prefix=cache)) == outcome(plain)


def test_a_state_of_the_wrong_batch_raises_instead_of_scoring(tokenizer, task):
    evaluator, prepared = setup("llama", "letters", tokenizer, task)
    cache = evaluator.prefix_cache(prepared, DropSet(), budget_gb=1.0)
    cache.checksums[1] += 1.0  # as if batch 1 had been captured from other tokens
    with pytest.raises(RuntimeError, match="out of step"):
        evaluator.evaluate(prepared, DropSet((3,)), prefix=cache)
    assert len(decoder_layers(evaluator.model)) == NUM_LAYERS  # restored after the error


def test_reuse_infers_each_rounds_base_and_rebuilds_when_it_changes(tokenizer, task):
    evaluator, prepared = setup("gemma2", "loglik", tokenizer, task)
    reuse = PrefixReuse(evaluator, prepared, budget_gb=1.0)
    stream = [DropSet()]  # baseline, round 1 in a shuffled order, round 2, a straggler
    stream += [DropSet((k,)) for k in (4, 1, 5, 0, 2, 3)]
    stream += [DropSet((3, k)) for k in (5, 0, 4, 1, 2)]
    stream += [DropSet((1,)), DropSet((3, 0, 1))]
    bases = []
    for drop in stream:
        reused = reuse.evaluate(drop)
        assert outcome(reused) == outcome(evaluator.evaluate(prepared, drop)), drop
        bases.append(None if reuse.cache is None else reuse.cache.base)
    # The first candidate of a round runs plainly; the second reveals the base.
    assert bases[:3] == [None, None, DropSet()]
    assert bases[7] == DropSet() and bases[8] == DropSet((3,))
    assert reuse.captures == 2


def test_a_hint_sets_the_base_at_once_and_a_wrong_hint_is_ignored(tokenizer, task):
    evaluator, prepared = setup("qwen3", "letters", tokenizer, task)
    reuse = PrefixReuse(evaluator, prepared, budget_gb=1.0)
    drop = DropSet((1, 4))
    plain = outcome(evaluator.evaluate(prepared, drop))
    assert outcome(reuse.evaluate(drop, base=DropSet((0,)))) == plain  # not a subset
    assert reuse.cache is None
    assert outcome(reuse.evaluate(drop, base=DropSet((1,)))) == plain
    assert reuse.cache.base == DropSet((1,)) and reuse.captures == 1


def test_zero_budget_or_generate_never_captures(tokenizer, task):
    evaluator, prepared = setup("llama", "letters", tokenizer, task)
    off = PrefixReuse(evaluator, prepared, budget_gb=0)
    generator, gen_prepared = setup("llama", "generate", tokenizer, task, max_new_tokens=2)
    decoding = PrefixReuse(generator, gen_prepared, budget_gb=1.0)
    for reuse in (off, decoding):
        for drop in (DropSet((1,)), DropSet((2,)), DropSet((3,))):
            reuse.evaluate(drop)
        assert reuse.captures == 0 and reuse.cache is None
    with pytest.raises(ValueError, match="eval.prefix_cache_gb must be a number >= 0"):
        PrefixReuse(evaluator, prepared, budget_gb=-1)


def test_early_termination_and_prefix_reuse_combine_exactly(tokenizer, task):
    evaluator, prepared = setup("llama", "letters", tokenizer, task)
    cache = evaluator.prefix_cache(prepared, DropSet(), budget_gb=1.0)

    def stop_after_first_batch(state) -> bool:
        return state.n_seen == 0  # True before the first batch only

    plain = evaluator.evaluate(prepared, DropSet((2,)), race=stop_after_first_batch)
    reused = evaluator.evaluate(prepared, DropSet((2,)), prefix=cache, race=stop_after_first_batch)
    assert outcome(reused) == outcome(plain) and reused.n_seen == plain.n_seen == BATCH


@pytest.mark.parametrize("scoring", ["letters", "loglik"])
def test_greedy_search_picks_the_same_layers_with_and_without_reuse(scoring, tokenizer, task):
    evaluator, prepared = setup("qwen2", scoring, tokenizer, task)
    reuse = PrefixReuse(evaluator, prepared, budget_gb=1.0)

    def search(evaluate: Any) -> tuple[Any, dict[str, float]]:
        searcher = GreedyElimination(NUM_LAYERS, epsilon=1.0, max_drop=3)
        scores: dict[str, float] = {}
        while not searcher.done:
            observations = []
            for candidate in searcher.propose():
                result = evaluate(candidate.drop)
                scores[candidate.drop.key] = result.accuracy
                observations.append(Observation(Candidate(candidate.drop), result.accuracy))
            searcher.observe(observations)
        return searcher.result(), scores

    plain_result, plain_scores = search(lambda drop: evaluator.evaluate(prepared, drop))
    reuse_result, reuse_scores = search(reuse.evaluate)
    assert reuse_scores == plain_scores
    assert [o.drop for o in reuse_result.trajectory] == [o.drop for o in plain_result.trajectory]
    assert [o.score for o in reuse_result.trajectory] == [o.score for o in plain_result.trajectory]
    assert reuse.captures == 3  # one base per round that has two or more candidates


def test_the_cache_budget_reaches_workers_but_not_the_study_fingerprint():
    from types import SimpleNamespace

    from tale_opt.errors import UsageError
    from tale_opt.pipeline.candidates import check_eval_options, search_fingerprint, study_config

    def config(budget: float) -> dict[str, Any]:
        eval_cfg = {"scoring": "letters", "batch_size": 8, "max_new_tokens": 1}
        return study_config({
            "model": {"path": "m", "name": "m"}, "task": {"name": "t"},
            "eval": {**eval_cfg, "prefix_cache_gb": budget}, "seed": 0,
            "searcher": {"name": "tale"},
        })  # fmt: skip

    task, splits = SimpleNamespace(name="t", prompt_version="1"), SimpleNamespace(fingerprint="f")
    big, off = config(16), config(0)
    assert (big["prefix_cache_gb"], off["prefix_cache_gb"]) == (16, 0)
    assert search_fingerprint(big, {}, task, splits) == search_fingerprint(off, {}, task, splits)
    check_eval_options(big)
    with pytest.raises(UsageError, match="eval.prefix_cache_gb must be a number >= 0"):
        check_eval_options(config(-1))
