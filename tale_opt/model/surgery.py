"""Layer surgery: remove whole decoder layers from a Hugging Face causal LM.

We never re-implement a forward pass: HF's own forward runs over a shortened `ModuleList`.
Three things must change together, and each has its own failure when forgotten:

* `self_attn.layer_idx` of every kept layer is renumbered 0..k-1, or the KV cache indexes past
  its end (IndexError inside `generate`);
* `config.num_hidden_layers` shrinks, or a reload of an exported checkpoint silently fills the
  missing layers with random weights (and HF forwards iterate `layers[:num_hidden_layers]`);
* `config.layer_types` keeps the entries of the kept layers, or sliding-window / hybrid models
  use the wrong mask and an exported checkpoint does not load.

transformers 5.x also builds the KV cache from the config: `DynamicCache(config=...)` zips
`layer_types` with `config.per_layer_config`, a view whose length is `num_hidden_layers`; so the
cache has exactly one layer per kept decoder layer only because both are updated. Two smaller
per-layer settings are kept consistent too (see `_apply`): Qwen's `max_window_layers` and the
per-layer overrides of a heterogeneous config (`per_layer_config`).
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
    """The model's decoder layers (the live ModuleList, in forward order).

    Raises:
        UsageError: The model is not one of `SUPPORTED_FAMILIES` or has no decoder layers.
    """
    owner, attr = _layers_owner(model)
    return getattr(owner, attr)


def num_decoder_layers(model: nn.Module) -> int:
    """Number of decoder layers the model currently runs (fewer inside `dropped_layers`)."""
    return len(decoder_layers(model))


@dataclass
class _Saved:
    layers: nn.ModuleList
    layer_idx: list[int | None]
    num_hidden_layers: int
    layer_types: list[str] | None
    max_window_layers: int | None
    # transformers' private per-layer override spec (heterogeneous configs only); restored as the
    # very same object so that exiting the context is exact.
    heterogeneity_spec: Any | None


def kept_layers(model: nn.Module, drop: DropSet) -> tuple[int, ...]:
    """The 0-based indices of the layers that remain after removing `drop` from `model`.

    Raises:
        UsageError: The architecture is not supported.
        ValueError: A layer index is out of range, or `drop` would remove every layer.
    """
    return _validate(drop, num_decoder_layers(model))


def _validate(drop: DropSet, num_layers: int) -> tuple[int, ...]:
    keep = drop.kept(num_layers)  # raises ValueError naming the out-of-range index
    if not keep:
        raise ValueError(
            f"dropping {drop} would remove all {num_layers} decoder layers; keep at least one"
        )
    return keep


def _attn(layer: nn.Module) -> Any:
    return getattr(layer, "self_attn", None)


def _apply(model: nn.Module, drop: DropSet) -> _Saved:
    owner, attr = _layers_owner(model)
    layers: nn.ModuleList = getattr(owner, attr)
    keep = _validate(drop, len(layers))
    config = model.config
    max_window = getattr(config, "max_window_layers", None)
    saved = _Saved(
        layers=layers,
        layer_idx=[getattr(_attn(layer), "layer_idx", None) for layer in layers],
        num_hidden_layers=config.num_hidden_layers,
        layer_types=list(config.layer_types) if getattr(config, "layer_types", None) else None,
        max_window_layers=max_window if isinstance(max_window, int) else None,
        heterogeneity_spec=config.__dict__.get("_heterogeneity_spec"),
    )
    try:
        _mutate(model, owner, attr, keep, saved)
    except BaseException:
        # A half-applied surgery would leave the shared model silently broken for every later
        # candidate; put everything back before propagating.
        _restore(model, saved)
        raise
    return saved


def _mutate(model: nn.Module, owner: Any, attr: str, keep: tuple[int, ...], saved: _Saved) -> None:
    new_layers = nn.ModuleList(saved.layers[i] for i in keep)
    for j, layer in enumerate(new_layers):
        attn = _attn(layer)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j
    setattr(owner, attr, new_layers)
    config = model.config
    config.num_hidden_layers = len(keep)
    if saved.layer_types is not None:
        config.layer_types = [saved.layer_types[i] for i in keep]
    if saved.max_window_layers is not None:
        # Qwen2/Qwen3: layers with index >= max_window_layers slide. `layer_types` already says
        # so explicitly, but tools that rebuild layer_types from this number (older configs,
        # other runtimes) must get the same answer for the renumbered layers.
        config.max_window_layers = sum(1 for i in keep if i < saved.max_window_layers)
    if saved.heterogeneity_spec is not None:
        # Overrides are keyed by layer index; without renumbering, kept layer j would get the
        # overrides (and KV-cache kind) of original layer j. The public setter re-validates
        # the keys against the new num_hidden_layers.
        overrides = saved.heterogeneity_spec.per_layer_overrides
        config.per_layer_config = {
            j: dict(overrides[i]) for j, i in enumerate(keep) if i in overrides
        }


def _restore(model: nn.Module, saved: _Saved) -> None:
    owner, attr = _layers_owner(model)
    setattr(owner, attr, saved.layers)
    for layer, idx in zip(saved.layers, saved.layer_idx, strict=True):
        attn = _attn(layer)
        if idx is not None and attn is not None:
            attn.layer_idx = idx
    config = model.config
    config.num_hidden_layers = saved.num_hidden_layers
    if saved.layer_types is not None:
        config.layer_types = list(saved.layer_types)
    if saved.max_window_layers is not None:
        config.max_window_layers = saved.max_window_layers
    if saved.heterogeneity_spec is not None:
        config.__dict__["_heterogeneity_spec"] = saved.heterogeneity_spec


@contextlib.contextmanager
def dropped_layers(model: nn.Module, drop: DropSet) -> Iterator[nn.Module]:
    """Temporarily remove the layers in `drop`; the original model is restored on exit.

    No weights are copied: the shortened ModuleList holds the same layer objects. Indices are
    0-based positions in the model's current layer list.

    Args:
        model: A causal LM of one of `SUPPORTED_FAMILIES`.
        drop: The layers to remove; may be empty (the model is then used as is).

    Yields:
        `model` itself, with the layers removed.

    Raises:
        UsageError: The architecture is not supported (also for an empty `drop`, so that an
            unsupported model fails on the baseline evaluation, not on the first candidate).
        ValueError: A layer index is out of range, or `drop` would remove every layer.
    """
    if not drop:
        _layers_owner(model)
        yield model
        return
    saved = _apply(model, drop)
    try:
        yield model
    finally:
        _restore(model, saved)


def prune(model: nn.Module, drop: DropSet) -> nn.Module:
    """Remove the layers in `drop` for good, in place (for serving); returns `model`.

    To write a checkpoint without changing the in-memory model use
    `tale_opt.model.export.export_pruned`.
    """
    _layers_owner(model)
    if drop:
        _apply(model, drop)
    return model
