"""Analytic FLOPs agree with torch's FlopCounterMode on every supported family (eager attention).

FlopCounterMode counts the matmuls torch really runs, so it is the reference: a forward with
logits of the last position only, a forward with logits everywhere, and HF `generate` with a KV
cache (prefill + decode steps, sliding-window caches included) must agree within 5%.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tale_opt.cost import count_flops, evaluation_flops, padded_lengths, tflops_for
from tale_opt.cost.flops import GATED_MLP_FAMILIES, ModelShape
from tale_opt.model.surgery import SUPPORTED_FAMILIES, dropped_layers
from tale_opt.types import DropSet

FAMILIES = ["llama", "qwen2", "mistral", "qwen3", "gemma2", "gemma3_text"]
TOLERANCE = 0.05
PROMPT = 20  # longer than the tiny models' sliding window (4), so windows matter
NEW = 6


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _ids(n: int = PROMPT, batch: int = 1) -> torch.Tensor:
    return torch.randint(4, 128, (batch, n), generator=torch.Generator().manual_seed(0))


def _close(analytic: int, measured: int) -> bool:
    return abs(analytic - measured) <= TOLERANCE * measured


def test_every_family_layer_surgery_supports_has_a_flop_model():
    assert set(SUPPORTED_FAMILIES) <= GATED_MLP_FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("drop", [DropSet(), DropSet((1, 4))], ids=["full", "drop1,4"])
def test_analytic_flops_match_flop_counter(tiny_model, family, drop):
    # head_dim != hidden/heads and GQA on purpose: both must come from the config.
    model = tiny_model(family, head_dim=16, intermediate_size=48)
    full_config = copy.deepcopy(model.config)
    ids = _ids()
    with dropped_layers(model, drop), torch.no_grad():
        last = _counted(lambda: model(input_ids=ids, logits_to_keep=1, use_cache=False))
        every = _counted(lambda: model(input_ids=ids, use_cache=False))
        generated = _counted(
            lambda: model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
        )
    expect_last = count_flops(full_config, drop, [PROMPT], logits_kept=1).total
    expect_every = count_flops(full_config, drop, [PROMPT], logits_kept=None).total
    expect_gen = count_flops(full_config, drop, [PROMPT], new_tokens=NEW).total
    assert _close(expect_last, last), (expect_last, last)
    assert _close(expect_every, every), (expect_every, every)
    assert _close(expect_gen, generated), (expect_gen, generated)


def test_batches_of_equal_prompts_count_once_per_sequence(tiny_model):
    model = tiny_model("llama")
    ids = _ids(12, batch=3)
    with torch.no_grad():
        measured = _counted(lambda: model(input_ids=ids, logits_to_keep=1, use_cache=False))
    assert _close(count_flops(model.config, (), [12, 12, 12]).total, measured)


def test_fewer_layers_cost_proportionally_fewer_layer_flops(tiny_config):
    config = tiny_config("qwen3")
    full = count_flops(config, (), [50, 70], new_tokens=4)
    pruned = count_flops(config, (0, 3), [50, 70], new_tokens=4)
    assert len(full.per_layer) == 6 and len(pruned.per_layer) == 4
    assert pruned.lm_head == full.lm_head  # the head runs whatever the depth
    assert pruned.total < full.total
    # Every layer of a full-attention model costs the same.
    assert pruned.total - pruned.lm_head == pytest.approx(4 / 6 * (full.total - full.lm_head))
    assert full.total == sum(full.per_layer) + full.lm_head


def test_sliding_window_layers_attend_to_the_window_only_when_decoding(tiny_config):
    config = tiny_config("mistral")  # every layer slides (window 4)
    shape = ModelShape.from_config(config)
    assert shape.keys("sliding_attention", past=0, new=100) == 100  # prefill: full T x T
    assert shape.keys("sliding_attention", past=100, new=1) == 4  # window - 1 cached + 1
    assert shape.keys("full_attention", past=100, new=1) == 101


def test_tflops_for_scales_with_prompts_and_tokens(tiny_config):
    config = tiny_config("llama")
    one = tflops_for(config, (), [10])
    assert tflops_for(config, (), [10, 10]) == pytest.approx(2 * one)
    assert tflops_for(config, (), [10], new_tokens=5) > one
    assert tflops_for(config, (), [10], new_tokens=1) == pytest.approx(one)  # prefill only
    assert count_flops(config, (), [10]).as_dict()["tflops"] == pytest.approx(one)


def test_per_prompt_generated_tokens(tiny_config):
    config = tiny_config("gemma2")
    both = count_flops(config, (), [10, 20], new_tokens=[3, 5]).total
    apart = count_flops(config, (), [10], new_tokens=3).total
    apart += count_flops(config, (), [20], new_tokens=5).total
    assert both == apart
    with pytest.raises(ValueError, match="one per prompt"):
        count_flops(config, (), [10, 20], new_tokens=[3])


def test_invalid_input_is_rejected(tiny_config):
    config = tiny_config("llama")
    with pytest.raises(ValueError, match="out of range"):
        count_flops(config, (6,), [10])
    with pytest.raises(ValueError, match=">= 0"):
        count_flops(config, (), [-1])
    unsupported = SimpleNamespace(model_type="gpt2")
    with pytest.raises(ValueError, match="no FLOP model for model_type='gpt2'"):
        count_flops(unsupported, (), [10])


def test_padded_lengths_follow_length_sorted_batches():
    assert padded_lengths([5, 9, 3, 7], batch_size=2) == [5, 9, 5, 9]  # {9,7} {5,3}
    assert padded_lengths([5, 9, 3, 7], batch_size=1) == [5, 9, 3, 7]


def test_evaluation_flops_per_scoring_mode(tiny_config):
    config = tiny_config("llama")
    prompts = ((1,) * 10, (1,) * 14)
    letters = SimpleNamespace(scoring="letters", prompt_ids=prompts, continuation_ids=())
    generate = SimpleNamespace(scoring="generate", prompt_ids=prompts, continuation_ids=())
    loglik = SimpleNamespace(
        scoring="loglik",
        prompt_ids=prompts,
        # First prompt: one-token choices share one forward; second: one forward per choice.
        continuation_ids=(((5,), (6,)), ((5, 6), (7, 8, 9))),
    )
    assert evaluation_flops(config, (), letters).total == count_flops(config, (), [10, 14]).total
    assert (
        evaluation_flops(config, (), generate, max_new_tokens=4).total
        == count_flops(config, (), [10, 14], new_tokens=4).total
    )
    expected = (
        count_flops(config, (), [10]).total
        + count_flops(config, (), [16], logits_kept=3).total
        + count_flops(config, (), [17], logits_kept=4).total
    )
    assert evaluation_flops(config, (), loglik).total == expected


@pytest.mark.parametrize("layer_type", ["sliding_attention", "full_attention"])
def test_closed_form_decode_keys_equal_the_step_by_step_sum(tiny_config, layer_type):
    shape = ModelShape.from_config(tiny_config("gemma2"))  # window 4
    for prompt in range(1, 9):
        for generated in range(0, 12):
            steps = sum(shape.keys(layer_type, prompt + i - 1, 1) for i in range(1, generated))
            assert shape.decode_keys(layer_type, prompt, generated) == steps
