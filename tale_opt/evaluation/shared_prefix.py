"""Shared prompt prefix: the tokens every prompt of a split starts with, run once per candidate.

Every prompt of a split opens the same way: the chat template's header and the task's system
turn, and in few-shot runs all k demonstrations too (the splits loader attaches one tuple of
demonstrations to every example). By causality the keys and values of those tokens do not
depend on anything after them, so a candidate runs them once, at batch size 1, and every batch
then runs only its rows' own tokens, attending to the prefix through a KV cache. Zero-shot
ARC-Easy on SmolLM2 shares 27 of ~85 tokens; 5-shot, most of the prompt.

`generate` uses it too: the prefix's cache, broadcast to the batch, is handed to HF `generate`
with the full ``[prefix | padding | row]`` ids, so prefill runs only the rows' own tokens and
decoding reads the prefix from the cache (HF's documented way to reuse a prompt's cache).

What changes is only the order of floating-point operations (the prefix is computed on its own,
attention reads it from the cache): the same tokens at the same positions through the same
layers. Scores agree with the plain path to rounding, not bit for bit
(`tests/test_shared_prefix.py`); a generated text can differ where two tokens are within
rounding of each other. That is why `eval.shared_prefix` is in the study fingerprint.

Layout of a batch: ``[prefix | left padding | row tokens]``; the attention mask is one on the
prefix and the row's tokens, the row's positions continue after the prefix. Only models whose
cache is the plain per-layer `DynamicLayer` (no sliding-window or hybrid layers, whose cache
trims itself and whose masks count padding as distance) use it; others run the plain path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Below this many shared tokens the extra prefix forward per candidate is not worth it.
MIN_SHARED_TOKENS = 4


def shared_prefix_length(
    prompts: Sequence[Sequence[int]], min_tokens: int = MIN_SHARED_TOKENS
) -> int:
    """Tokens all `prompts` start with, leaving each prompt at least its last token.

    The last prompt token must stay with its row: its logits score the answer (and in
    ``loglik`` mode the continuation follows it). 0 when fewer than `min_tokens` are shared.
    """
    if not prompts:
        return 0
    first = prompts[0]
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n if n >= min_tokens else 0


def supports_shared_prefix(model: nn.Module) -> bool:
    """Whether every layer of the model's KV cache is a plain, untrimmed `DynamicLayer`.

    Decided on the full model, once: a candidate's dropped layers must never change whether
    (and so how) batches are laid out, or a prefix reuse cache would not match its batches.
    """
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a family whose config the cache cannot read: plain path
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


@dataclass
class PrefixKV:
    """Keys and values of the shared prefix for the model as it is now (layers dropped).

    `for_batch` hands the same cache object to each batch with its layers reset to the
    prefix, broadcast to the batch's rows (a view; the forward's update concatenates into new
    tensors, so the prefix itself is never written).
    """

    ids: torch.Tensor  # [1, P] the prefix tokens (generation passes them to `generate`)
    cache: DynamicCache
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def attention_mask(self, rows_mask: torch.Tensor) -> torch.Tensor:
        """The rows' padding mask with the prefix in front (ones: every row sees it)."""
        prefix = rows_mask.new_ones((rows_mask.shape[0], self.length))
        return torch.cat([prefix, rows_mask], dim=1)

    def for_batch(self, rows: int) -> DynamicCache:
        for layer, k, v in zip(self.cache.layers, self.keys, self.values, strict=True):
            layer.keys = k.expand(rows, -1, -1, -1)
            layer.values = v.expand(rows, -1, -1, -1)
        return self.cache


def prefix_kv(model: nn.Module, tokens: Sequence[int], device: torch.device) -> PrefixKV:
    """One forward of `tokens` (batch 1) through the model as it is, keeping its KV cache.

    Must run under `torch.inference_mode()` with the layers of the candidate already dropped
    and every kept layer real (not a prefix-reuse stand-in).
    """
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise RuntimeError(
            "shared prefix needs a plain DynamicCache; check supports_shared_prefix"
        )
    keys = [layer.keys for layer in cache.layers]
    values = [layer.values for layer in cache.layers]
    return PrefixKV(ids, cache, keys, values)


def forward(model: nn.Module, batch: Any, *, logits_to_keep: int, kv: PrefixKV | None) -> Any:
    """The model's forward over one left-padded batch, after the shared prefix when `kv`."""
    if kv is None:
        return model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=logits_to_keep,  # the lm_head over all positions would dominate
            use_cache=False,  # one pass: a KV cache would only cost memory
        )
    return model(
        input_ids=batch.input_ids,
        attention_mask=kv.attention_mask(batch.attention_mask),
        position_ids=batch.position_ids + kv.length,
        past_key_values=kv.for_batch(batch.input_ids.shape[0]),
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
