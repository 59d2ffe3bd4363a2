"""Layer surgery: remove whole decoder layers from a Hugging Face causal LM.

We never re-implement a forward pass: HF's own forward runs over a shortened `ModuleList`.
Three things must change together, and each has its own failure when forgotten:

* `self_attn.layer_idx` of every kept layer is renumbered 0..k-1, or the KV cache indexes past
  its end (IndexError inside `generate`);
* `config.num_hidden_layers` shrinks, or a reload of an exported checkpoint silently fills the
  missing layers with random weights (and HF forwards iterate `layers[:num_hidden_layers]`);
* `config.layer_types` keeps the entries of the kept layers, or sliding-window / hybrid models
  use the wrong mask and an exported checkpoint does not load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from tale_opt.errors import UsageError
from tale_opt.types import DropSet

# model_type -> attribute path of the decoder-layer ModuleList. Every family listed here is
# covered by tests/test_surgery.py on a tiny random-init model.
SUPPORTED_FAMILIES: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
}


def _resolve(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _layers_owner(model: nn.Module) -> tuple[Any, str]:
    model_type = getattr(model.config, "model_type", None)
    path = SUPPORTED_FAMILIES.get(model_type)
    if path is None:
        raise UsageError(
            f"layer elimination does not support model_type={model_type!r}; supported families: "
            f"{', '.join(sorted(SUPPORTED_FAMILIES))}. Pick a model of one of these families."
        )
    owner_path, _, attr = path.rpartition(".")
    owner = _resolve(model, owner_path) if owner_path else model
    layers = getattr(owner, attr, None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UsageError(
            f"model of type {model_type!r} has no decoder layers at '{path}'; "
            "load a causal LM (AutoModelForCausalLM) with at least one decoder layer."
        )
    return owner, attr


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers; raises UsageError for an unsupported architecture."""
    owner, attr = _layers_owner(model)
    return getattr(owner, attr)


def num_decoder_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


@dataclass
class _Saved:
    layers: nn.ModuleList
    layer_idx: list[int | None]
    num_hidden_layers: int
    layer_types: list[str] | None


def _validate(drop: DropSet, num_layers: int) -> tuple[int, ...]:
    keep = drop.kept(num_layers)  # raises ValueError naming the out-of-range index
    if not keep:
        raise ValueError(
            f"dropping {drop} would remove all {num_layers} decoder layers; keep at least one"
        )
    return keep


def _apply(model: nn.Module, drop: DropSet) -> _Saved:
    owner, attr = _layers_owner(model)
    layers: nn.ModuleList = getattr(owner, attr)
    keep = _validate(drop, len(layers))
    config = model.config
    saved = _Saved(
        layers=layers,
        layer_idx=[getattr(getattr(layer, "self_attn", None), "layer_idx", None) for layer in layers],
        num_hidden_layers=config.num_hidden_layers,
        layer_types=list(config.layer_types) if getattr(config, "layer_types", None) else None,
    )
    new_layers = nn.ModuleList(layers[i] for i in keep)
    for j, layer in enumerate(new_layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j
    setattr(owner, attr, new_layers)
    config.num_hidden_layers = len(keep)
    if saved.layer_types is not None:
        config.layer_types = [saved.layer_types[i] for i in keep]
    return saved


def _restore(model: nn.Module, saved: _Saved) -> None:
    owner, attr = _layers_owner(model)
    setattr(owner, attr, saved.layers)
    for layer, idx in zip(saved.layers, saved.layer_idx, strict=True):
        attn = getattr(layer, "self_attn", None)
        if idx is not None and attn is not None:
            attn.layer_idx = idx
    model.config.num_hidden_layers = saved.num_hidden_layers
    if saved.layer_types is not None:
        model.config.layer_types = list(saved.layer_types)


@contextlib.contextmanager
def dropped_layers(model: nn.Module, drop: DropSet) -> Iterator[nn.Module]:
    """Temporarily remove the layers in `drop`; the original model is restored on exit.

    No weights are copied: the shortened ModuleList holds the same layer objects.
    """
    if not drop:
        yield model
        return
    saved = _apply(model, drop)
    try:
        yield model
    finally:
        _restore(model, saved)


def prune(model: nn.Module, drop: DropSet) -> nn.Module:
    """Remove the layers in `drop` for good (for export or serving)."""
    if drop:
        _apply(model, drop)
    return model
