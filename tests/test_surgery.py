"""Contract tests for layer surgery and export, on tiny random-init models of every family.

The reference for "correct" is always an independent path: a fresh model of the same family
built from a config with only the kept layers, loaded with the kept weights. Surgery must give the
same logits and the same greedy generations (with and without KV cache), be exactly reversible,
and export a checkpoint that plain `AutoModelForCausalLM.from_pretrained` reloads unchanged.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from tale_opt.errors import UsageError
from tale_opt.model.export import (
    EXPORT_METADATA_FILE,
    ExportVerificationError,
    export_pruned,
    verify_export,
)
from tale_opt.model.surgery import (
    SUPPORTED_FAMILIES,
    decoder_layers,
    dropped_layers,
    num_decoder_layers,
    prune,
)
from tale_opt.types import DropSet

FAMILIES = sorted(SUPPORTED_FAMILIES)
# With 6 layers: an interior pair, a prefix-heavy set, and the whole second half (for Qwen2 that
# leaves only full-attention layers, for Gemma3 only sliding + one full, ...).
DROPS = [DropSet((1, 4)), DropSet((0, 2, 3)), DropSet((3, 4, 5))]
NEW_TOKENS = 8


def make_batch(lengths: tuple[int, ...] = (12, 9, 5), seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded random token ids (pad id 0); all but the shortest exceed the window of 4."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        input_ids[row, width - n :] = torch.randint(3, 128, (n,), generator=gen)
        attention_mask[row, width - n :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def greedy(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], use_cache: bool
) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            **batch,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )


def fresh_model_with_kept_layers(
    tiny_config: Any, family: str, model: torch.nn.Module, drop: DropSet
) -> torch.nn.Module:
    """The independent reference: a k-layer model of `family` loaded with the kept weights."""
    num_layers = len(decoder_layers(model))
    keep = drop.kept(num_layers)
    overrides: dict[str, Any] = {"num_hidden_layers": len(keep)}
    types = getattr(model.config, "layer_types", None)
    if types is not None:
        overrides["layer_types"] = [types[i] for i in keep]
    fresh = type(model)(tiny_config(family, **overrides)).eval()
    new_index = {old: new for new, old in enumerate(keep)}
    remapped = {}
    for name, tensor in model.state_dict().items():
        match = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if match is None:
            remapped[name] = tensor
        elif int(match[1]) in new_index:
            remapped[f"model.layers.{new_index[int(match[1])]}.{match[2]}"] = tensor
    fresh.load_state_dict(remapped, strict=True)
    return fresh


def snapshot(model: torch.nn.Module) -> dict[str, Any]:
    layers = decoder_layers(model)
    return {
        "layers": layers,
        "layer_objects": list(layers),
        "layer_idx": [layer.self_attn.layer_idx for layer in layers],
        "num_hidden_layers": model.config.num_hidden_layers,
        "layer_types": list(getattr(model.config, "layer_types", None) or []),
        "max_window_layers": getattr(model.config, "max_window_layers", None),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "logits": logits(model, make_batch()),
    }


def assert_restored(model: torch.nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["layers"] is before["layers"]
    assert after["layer_objects"] == before["layer_objects"]
    assert after["layer_idx"] == before["layer_idx"] == list(range(len(before["layer_idx"])))
    for key in ("num_hidden_layers", "layer_types", "max_window_layers"):
        assert after[key] == before[key], key
    assert after["state"].keys() == before["state"].keys()
    for name, tensor in before["state"].items():
        assert torch.equal(after["state"][name], tensor), name
    assert torch.equal(after["logits"], before["logits"])


@pytest.mark.parametrize("drop", DROPS, ids=lambda d: d.key)
@pytest.mark.parametrize("family", FAMILIES)
def test_dropped_model_equals_fresh_model_built_from_kept_weights(
    tiny_model, tiny_config, family, drop
):
    model = tiny_model(family)
    fresh = fresh_model_with_kept_layers(tiny_config, family, model, drop)
    batch = make_batch()
    with dropped_layers(model, drop) as dropped:
        assert num_decoder_layers(dropped) == 6 - len(drop)
        types = getattr(dropped.config, "layer_types", None)
        assert types == getattr(fresh.config, "layer_types", None)
        torch.testing.assert_close(logits(dropped, batch), logits(fresh, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_generation_equals_uncached_on_dropped_model(tiny_model, family):
    model = tiny_model(family)
    batch = make_batch()
    with dropped_layers(model, DropSet((1, 4))):
        cached = greedy(model, batch, use_cache=True)
        uncached = greedy(model, batch, use_cache=False)
    assert cached.shape[1] == batch["input_ids"].shape[1] + NEW_TOKENS
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_built_from_config_has_one_layer_per_kept_layer(tiny_model, family):
    # transformers 5 sizes DynamicCache from config.layer_types / config.per_layer_config.
    model = tiny_model(family)
    with dropped_layers(model, DropSet((0, 2, 3))):
        assert len(DynamicCache(config=model.config).layers) == 3
    assert len(DynamicCache(config=model.config).layers) == 6


@pytest.mark.parametrize("family", FAMILIES)
def test_context_restores_model_bit_for_bit(tiny_model, family):
    model = tiny_model(family)
    before = snapshot(model)
    with dropped_layers(model, DropSet((0, 2, 3))):
        greedy(model, make_batch(), use_cache=True)
    assert_restored(model, before)


@pytest.mark.parametrize("family", FAMILIES)
def test_context_restores_model_when_body_raises(tiny_model, family):
    model = tiny_model(family)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), dropped_layers(model, DropSet((1, 4))):
        logits(model, make_batch())
        raise RuntimeError("boom")
    assert_restored(model, before)


def test_qwen2_max_window_layers_follows_renumbered_layers(tiny_model):
    model = tiny_model("qwen2")  # max_window_layers=3: layers 3, 4, 5 slide
    with dropped_layers(model, DropSet((0, 4))):
        assert model.config.max_window_layers == 2
        assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert model.config.max_window_layers == 3


def test_heterogeneous_per_layer_overrides_are_renumbered(tiny_model):
    model = tiny_model("llama")
    model.config.per_layer_config = {1: {"rms_norm_eps": 1e-3}, 4: {"rms_norm_eps": 1e-4}}
    with dropped_layers(model, DropSet((0, 2))):
        eps = [c.rms_norm_eps for c in model.config.per_layer_config]
        assert eps == [1e-3, 1e-6, 1e-4, 1e-6]
    eps = [c.rms_norm_eps for c in model.config.per_layer_config]
    assert eps == [1e-6, 1e-3, 1e-6, 1e-6, 1e-4, 1e-6]


def test_prune_is_permanent(tiny_model):
    model = tiny_model("llama")
    prune(model, DropSet((0, 5)))
    assert num_decoder_layers(model) == model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == [0, 1, 2, 3]


# --- export -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_with_plain_from_pretrained(tiny_model, family, tmp_path):
    model = tiny_model(family)
    before = snapshot(model)
    drop = DropSet((1, 4))
    out = export_pruned(model, None, drop, tmp_path / "pruned")
    assert_restored(model, before)  # the in-memory model is untouched

    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert reloaded.config.num_hidden_layers == 4
    batch = make_batch()
    with dropped_layers(model, drop):
        assert getattr(reloaded.config, "layer_types", None) == getattr(
            model.config, "layer_types", None
        )
        # Every parameter equal: nothing was "newly initialized" on reload.
        expected = dict(model.named_parameters())
        got = dict(reloaded.named_parameters())
        assert got.keys() == expected.keys()
        for name, param in expected.items():
            assert torch.equal(got[name], param), name
        reloaded.config._attn_implementation = "eager"
        torch.testing.assert_close(
            logits(reloaded.eval(), batch), logits(model, batch), atol=1e-5, rtol=0
        )
    assert (out / "model.safetensors").is_file()


def test_export_writes_metadata_and_tokenizer(tiny_model, tiny_tokenizer, tmp_path):
    model = tiny_model("llama")
    out = export_pruned(model, tiny_tokenizer, DropSet((2, 3)), tmp_path / "pruned", source="x/y")
    meta = json.loads((out / EXPORT_METADATA_FILE).read_text())
    assert meta["original_num_layers"] == 6
    assert meta["dropped_layers"] == [2, 3]
    assert meta["kept_layers"] == [0, 1, 4, 5]
    assert meta["source"] == "x/y"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("abc")["input_ids"] == tiny_tokenizer("abc")["input_ids"]


def test_verify_export_accepts_a_good_checkpoint_and_catches_a_wrong_one(
    tiny_model, tiny_tokenizer, tmp_path
):
    model = tiny_model("qwen3")
    out = export_pruned(model, tiny_tokenizer, DropSet((1, 4)), tmp_path / "pruned")
    assert verify_export(model, tiny_tokenizer, DropSet((1, 4)), out, tolerance=1e-5) < 1e-5
    # Same layer count and types, different layers: only the logits can give it away.
    with pytest.raises(ExportVerificationError, match="differ"):
        verify_export(model, None, DropSet((2, 4)), out, tolerance=1e-5)
    with pytest.raises(ExportVerificationError, match="num_hidden_layers"):
        verify_export(model, None, DropSet((1,)), out)


def test_export_refuses_non_empty_directory_unless_overwrite(tiny_model, tmp_path):
    model = tiny_model("llama")
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(UsageError, match="overwrite=True"):
        export_pruned(model, None, DropSet((0,)), out)
    assert (out / "keep.txt").read_text() == "user data"
    export_pruned(model, None, DropSet((0,)), out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert json.loads((out / EXPORT_METADATA_FILE).read_text())["dropped_layers"] == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temp dirs left


def test_the_overwrite_error_names_the_callers_flag(tiny_model, tmp_path):
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "keep.txt").write_text("user data")
    with pytest.raises(UsageError, match="pass --overwrite to replace it"):
        export_pruned(tiny_model("llama"), None, DropSet((0,)), tmp_path / "pruned",
                      overwrite_hint="--overwrite")  # fmt: skip


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755),
                                                               (0o027, 0o640, 0o750)])  # fmt: skip
def test_exported_files_get_the_modes_of_ordinary_files(
    tiny_model, tiny_tokenizer, tmp_path, umask, file_mode, dir_mode
):
    """Not the 0600 of the temporary file transformers saves the weights through: a
    checkpoint others (a serving user, a shared cache) can read, as the umask allows."""
    previous = os.umask(umask)
    try:
        out = export_pruned(tiny_model("llama"), tiny_tokenizer, DropSet((1,)), tmp_path / "p")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode
    files = [path for path in out.rglob("*") if path.is_file()]
    assert "model.safetensors" in {path.name for path in files}
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
        path.name: file_mode for path in files
    }


def test_export_into_existing_empty_directory(tiny_model, tmp_path):
    out = tmp_path / "pruned"
    out.mkdir()
    export_pruned(tiny_model("llama"), None, DropSet((0,)), out)
    assert (out / "config.json").is_file()


def test_interrupted_export_leaves_nothing_behind(tiny_model, tmp_path, monkeypatch):
    model = tiny_model("llama")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save_pretrained", fail)
    with pytest.raises(KeyboardInterrupt):
        export_pruned(model, None, DropSet((0,)), tmp_path / "pruned")
    assert list(tmp_path.iterdir()) == []
    assert num_decoder_layers(model) == 6


# --- errors -----------------------------------------------------------------------------------


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64))


def _bert() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    return BertModel(config)


@pytest.mark.parametrize("build", [_gpt2, _bert], ids=["gpt2", "bert"])
def test_unsupported_architecture_names_supported_families(build):
    model = build()
    for call in (
        lambda: decoder_layers(model),
        lambda: dropped_layers(model, DropSet((0,))).__enter__(),
        lambda: dropped_layers(model, DropSet()).__enter__(),
    ):
        with pytest.raises(UsageError) as err:
            call()
        for family in SUPPORTED_FAMILIES:
            assert family in str(err.value)


def test_out_of_range_layer_names_index_and_valid_range(tiny_model):
    model = tiny_model("llama")
    with (
        pytest.raises(ValueError, match=r"layer 6 .*0\.\.5"),
        dropped_layers(model, DropSet((6,))),
    ):
        pass
    assert num_decoder_layers(model) == 6


def test_dropping_every_layer_is_refused(tiny_model, tmp_path):
    model = tiny_model("llama")
    everything = DropSet(tuple(range(6)))
    with pytest.raises(ValueError, match="keep at least one"), dropped_layers(model, everything):
        pass
    with pytest.raises(ValueError, match="keep at least one"):
        export_pruned(model, None, everything, tmp_path / "out")
    assert num_decoder_layers(model) == 6
    assert list(tmp_path.iterdir()) == []


# --- property ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_and_snapshot(tiny_model):
    """One tiny llama and its snapshot, shared by all hypothesis examples."""
    model = tiny_model("llama", seed=1)
    return model, snapshot(model)


@settings(max_examples=20, deadline=None)
@given(layers=st.sets(st.integers(min_value=0, max_value=5), max_size=5))
def test_surgery_is_reversible_and_matches_fresh_model(llama_and_snapshot, tiny_config, layers):
    model, before = llama_and_snapshot
    drop = DropSet.of(layers)
    fresh = fresh_model_with_kept_layers(tiny_config, "llama", model, drop)
    batch = make_batch()
    with dropped_layers(model, drop):
        torch.testing.assert_close(logits(model, batch), logits(fresh, batch), atol=1e-5, rtol=0)
    assert_restored(model, before)


@pytest.mark.real_model
def test_surgery_on_packaged_smollm2(smollm2):
    model, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template(
        [[{"role": "user", "content": "Name a color."}], [{"role": "user", "content": "Hi"}]],
        tokenize=False,
        add_generation_prompt=True,
    )
    batch = tokenizer(prompt, return_tensors="pt", padding=True, add_special_tokens=False)
    before = logits(model, batch)
    with dropped_layers(model, DropSet((3, 10, 27))):
        assert num_decoder_layers(model) == 27
        # 4 tokens: uncached decoding re-runs the whole prompt per token, slow on a CPU.
        kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            cached = model.generate(**batch, use_cache=True, **kw)
            uncached = model.generate(**batch, use_cache=False, **kw)
        assert torch.equal(cached, uncached)
    assert num_decoder_layers(model) == 30
    assert torch.equal(logits(model, batch), before)
