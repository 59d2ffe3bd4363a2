"""Prefix reuse: start a candidate's forward from the base model's cached hidden states.

Greedy elimination evaluates ``C = B ∪ {ℓ}`` for every remaining layer ℓ of the current drop
set B. The kept layers before ``m = min(C − B)`` are the same modules fed the same inputs in
the B model and in the C model, so their output, the hidden state at the input of layer m, is
the same tensor in both. One pass of the B model over the split captures that state at every
kept layer of B (`capture`); a candidate then runs only its kept layers above m (`resumed`),
about half the layer passes of a round on average.

How it stays exact and family-agnostic: the candidate still runs Hugging Face's own forward
with C's layers dropped (`dropped_layers`), so masks, rotary embeddings and sliding windows are
HF's; only the kept layers below the start point are swapped, for this forward, for stand-ins:
the first returns the cached state of the current batch, the others pass it through. Batches
are the evaluator's deterministic length-sorted batches; each stand-in call checks that it got
the batch the state was captured for (shape and a checksum of the embeddings) and raises
rather than ever mix up two batches.

Memory: a state is ``rows × width × hidden`` values per batch and per kept layer of B. When
all of them do not fit in the budget, only every k-th kept layer is stored (checkpoints) and a
candidate starts from the nearest checkpoint at or below m, recomputing the layers between.
On CUDA the cache stays on the GPU when it takes at most half of the free GPU memory, else it
lives in pinned host memory and each batch's state is copied over when needed.

Only single-forward scoring modes (``letters``, ``loglik``) use it. ``generate`` runs the
plain path: decoding needs the KV cache of every kept layer, stand-ins have none, and the
decode steps after the first token differ between candidates anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tale_opt.evaluation.batching import length_sorted_batches
from tale_opt.evaluation.scoring import loglik_sequences
from tale_opt.evaluation.shared_prefix import forward, prefix_kv
from tale_opt.model.surgery import decoder_layers, dropped_layers, kept_layers
from tale_opt.types import DropSet

PREFIX_SCORING = frozenset({"letters", "loglik"})
GIB = 1024**3


def forward_sequences(prepared: Any) -> Sequence[Sequence[int]]:
    """The token sequences a single-forward scoring mode runs, in the scoring pass's order
    (without the shared prompt prefix, which runs once per candidate)."""
    if prepared.scoring == "letters":
        return prepared.row_prompt_ids
    if prepared.scoring == "loglik":
        return loglik_sequences(prepared.row_prompt_ids, prepared.continuation_ids)
    raise ValueError(f"prefix reuse supports {sorted(PREFIX_SCORING)}, not {prepared.scoring!r}")


def state_bytes_per_layer(
    sequences: Sequence[Sequence[int]], batch_size: int, hidden: int, dtype: torch.dtype
) -> int:
    """Bytes of one layer's hidden states over all padded batches (what `capture` stores)."""
    order = sorted((len(s) for s in sequences), reverse=True)
    elements = sum(
        len(order[i : i + batch_size]) * order[i] for i in range(0, len(order), batch_size)
    )
    return elements * hidden * torch.empty((), dtype=dtype).element_size()


def checkpoint_stride(n_slots: int, per_layer: int, budget: int) -> int | None:
    """Smallest stride k whose ``n_slots // k`` stored layers fit in `budget` bytes.

    `n_slots` counts the kept layers whose input can be stored (all but the first, whose input
    is the embedding). None: not even one layer fits (or nothing to store).
    """
    if n_slots < 1 or per_layer <= 0 or per_layer > budget:
        return None
    fit = budget // per_layer  # layers that fit
    # Stride k stores positions k, 2k, ... <= n_slots: n_slots // k layers, <= fit iff
    # k > n_slots / (fit + 1).
    return n_slots // (fit + 1) + 1


@dataclass
class PrefixCache:
    """Hidden states of the base model B at the inputs of its kept layers, per batch.

    Built by `capture`; valid for one (model, prepared split, batch size, pad id, base).
    `states[j][b]` is the input of original layer j for batch b; `stride` is 1 when every
    kept layer but the first is stored, k when only every k-th is (checkpoint mode).
    """

    model: nn.Module
    prepared: Any
    batch_size: int
    pad_id: int
    base: DropSet
    num_layers: int  # decoder layers of the full model
    stride: int
    states: dict[int, list[torch.Tensor]]
    checksums: list[float]  # per batch: sum of the embedding output (the batch's identity)

    @property
    def nbytes(self) -> int:
        """Exact footprint: the bytes of every stored tensor."""
        return sum(t.numel() * t.element_size() for ts in self.states.values() for t in ts)

    def fits(self, model: nn.Module, prepared: Any, batch_size: int, pad_id: int) -> bool:
        """Whether this cache was built for this model, split and batching."""
        return (
            self.model is model
            and self.prepared is prepared
            and self.batch_size == batch_size
            and self.pad_id == pad_id
        )

    def start_layer(self, drop: DropSet) -> int | None:
        """The stored layer a candidate `drop` starts from, or None when the cache cannot help.

        It helps when B ⊊ drop: then the candidate's layers below ``m = min(drop − B)`` are
        B's, and the start is the highest stored layer at or below m.
        """
        extra = set(drop) - set(self.base)
        if not extra or not set(self.base) <= set(drop):
            return None
        m = min(extra)
        below = [j for j in self.states if j <= m]
        return max(below) if below else None


def _storage(device: torch.device, nbytes: int) -> tuple[torch.device, bool]:
    """Where the cache lives: (device, pinned). GPU when it takes at most half its free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= free // 2:
            return device, False
        return torch.device("cpu"), True
    return device, False


def _store(x: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
    if pinned:
        out = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
        return out.copy_(x)
    return x.to(device, copy=True)


def capture(
    model: nn.Module,
    prepared: Any,
    base: DropSet,
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    budget_bytes: int,
) -> PrefixCache | None:
    """One forward of the model without `base` over `prepared`, keeping layer-input states.

    Must run in eval mode (the evaluator's `prefix_cache` does that). Returns None when the
    budget cannot hold even one layer's states (the plain path is then used).
    """
    sequences = forward_sequences(prepared)
    num_layers = len(decoder_layers(model))
    keep = kept_layers(model, base)
    dtype = model.get_input_embeddings().weight.dtype
    per_layer = state_bytes_per_layer(sequences, batch_size, model.config.hidden_size, dtype)
    stride = checkpoint_stride(len(keep) - 1, per_layer, budget_bytes)
    if stride is None:
        return None
    stored = [keep[i] for i in range(stride, len(keep), stride)]
    where, pinned = _storage(device, per_layer * len(stored))
    states: dict[int, list[torch.Tensor]] = {j: [] for j in stored}
    checksums: list[float] = []
    with dropped_layers(model, base), torch.inference_mode():
        kv = prefix_kv(model, prepared.shared_prefix, device) if prepared.shared_len else None
        layers = decoder_layers(model)

        def first_hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            checksums.append(_checksum(args[0]))

        def hook_for(j: int) -> Any:
            def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
                states[j].append(_store(args[0], where, pinned))

            return hook

        handles = [layers[0].register_forward_pre_hook(first_hook)]
        handles += [layers[keep.index(j)].register_forward_pre_hook(hook_for(j)) for j in stored]
        try:
            for batch in length_sorted_batches(sequences, batch_size, pad_id):
                forward(model, batch.to(device), logits_to_keep=1, kv=kv)
        finally:
            for handle in handles:
                handle.remove()
    return PrefixCache(
        model, prepared, batch_size, pad_id, base, num_layers, stride, states, checksums,
    )  # fmt: skip


def _checksum(x: torch.Tensor) -> float:
    return float(x.sum(dtype=torch.float32))


class _Resume(nn.Module):
    """Stands in for the first kept layer: hands back the cached state of the current batch."""

    def __init__(self, states: list[torch.Tensor], checksums: list[float]) -> None:
        super().__init__()
        self.states, self.checksums, self.batch = states, checksums, 0

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        b, self.batch = self.batch, self.batch + 1
        if (
            b >= len(self.states)
            or self.states[b].shape != hidden_states.shape
            or self.checksums[b] != _checksum(hidden_states)
        ):
            # Batches are deterministic, so this is a bug; a wrong state would be a wrong score.
            raise RuntimeError(
                f"prefix cache out of step: forward {b} does not see the batch whose state was "
                "captured; the scoring pass must use the evaluator's length-sorted batches"
            )
        return self.states[b].to(hidden_states.device, non_blocking=True)


class _PassThrough(nn.Module):
    """Stands in for a kept layer that `_Resume` already accounts for."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextlib.contextmanager
def resumed(model: nn.Module, drop: DropSet, cache: PrefixCache | None) -> Iterator[bool]:
    """Inside `dropped_layers(model, drop)`: resume each forward from `cache` when it helps.

    Yields whether the cache is used. Without a usable start point the model is left as it is
    (the plain path).
    """
    start = cache.start_layer(drop) if cache is not None and cache.model is model else None
    if start is None:
        yield False
        return
    keep = drop.kept(cache.num_layers)
    skipped = sum(1 for j in keep if j < start)  # >= 1: start is never the first kept layer
    layers = decoder_layers(model)
    if len(layers) != len(keep):
        raise RuntimeError(f"resumed() runs inside dropped_layers(model, {drop})")
    originals = [layers[i] for i in range(skipped)]
    layers[0] = _Resume(cache.states[start], cache.checksums)
    for i in range(1, skipped):
        layers[i] = _PassThrough()
    try:
        yield True
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
