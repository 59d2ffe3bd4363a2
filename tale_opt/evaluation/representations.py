"""Each decoder layer's output at the last token of each sequence: what a layer hands on about
everything read so far.

Usage::

    states = last_token_states(model, sequences, DropSet((3, 14)), prefix=shared, pad_id=0)
    states[j]  # [n_sequences, hidden]: output of the j-th kept layer (before the final norm)

Captured with forward hooks on the decoder layers (every supported family), like the
hidden-state probes; HF's ``output_hidden_states`` is not used because its last entry is the
final norm's output. Batches are length-sorted and left-padded with explicit positions, so
the last column of a batch holds every sequence's last real token. Tokens that every sequence
starts with (`prefix`: a chat header, few-shot demonstrations) run once, and the rows attend
to them from a KV cache, as in evaluation (`tale_opt.evaluation.shared_prefix`); models whose
cache does not allow that get the prefix in front of every row instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tale_opt.evaluation.batching import length_sorted_batches
from tale_opt.evaluation.shared_prefix import forward, prefix_kv, supports_shared_prefix
from tale_opt.model.surgery import decoder_layers, dropped_layers
from tale_opt.types import DropSet

_NO_DROP = DropSet()


def last_token_states(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    drop: DropSet = _NO_DROP,
    *,
    prefix: Sequence[int] = (),
    pad_id: int = 0,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Outputs of every kept decoder layer at each sequence's last token.

    Args:
        model: A causal LM of a family `tale_opt.model.surgery` supports.
        sequences: Token ids after `prefix`, each at least one token long.
        drop: Layers removed (0-based); the result then has one row per kept layer, in order.
        prefix: Tokens in front of every sequence.
        pad_id: Any token id (padding is masked out).
        batch_size: Sequences per forward.
        device: Where inputs go; defaults to the device of the model's first parameter.

    Returns:
        float32 on the CPU, ``[kept layers, len(sequences), hidden size]``, in the order of
        `sequences`.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    plain = bool(prefix) and not supports_shared_prefix(model)
    if plain:
        sequences = [(*prefix, *seq) for seq in sequences]
    was_training = model.training
    model.eval()
    with dropped_layers(model, drop), torch.inference_mode():
        layers = decoder_layers(model)
        states = torch.zeros(len(layers), len(sequences), _hidden_size(model))
        kv = prefix_kv(model, prefix, device) if prefix and not plain else None
        current: list[Any] = [None]
        handles = [layer.register_forward_hook(_keep_last(j, current)) for j, layer in
                   enumerate(layers)]  # fmt: skip
        try:
            for batch in length_sorted_batches(sequences, batch_size, pad_id):
                current[0] = (states, batch.rows)
                forward(model, batch.to(device), logits_to_keep=1, kv=kv)
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
    return states


def _keep_last(index: int, current: list[Any]):
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        states, rows = current[0]
        states[index, list(rows)] = hidden[:, -1].float().cpu()

    return hook


def _hidden_size(model: nn.Module) -> int:
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.hidden_size)
