"""Hidden-state probes: Block Influence (ShortGPT) and angular distance (Gromov et al.).

Usage::

    sequences = truncate_texts(tokenizer, texts, max_length=512)
    stats = hidden_state_stats(model, sequences, pad_id=tokenizer.pad_token_id)
    stats.block_influence[l]  # 1 - mean over tokens of cos(input of l, output of l)
    stats.angular(l, n)       # mean over texts of arccos(cos(h_l, h_{l+n})) / pi, last token

``h_l`` is the input of decoder layer ``l`` and ``h_L`` the output of the last layer, BEFORE the
final norm. They are captured with forward hooks on the decoder layers, which works for every
supported family; HF's ``output_hidden_states`` is not used because its last entry is the
final norm's output (checked for Llama, Qwen2/3, Mistral, Gemma2/3 in transformers 5.23).

Batches are length-sorted and left-padded with explicit positions (`batching.left_pad`), so a
padded batch gives the unpadded results up to float rounding: padding is masked out of the
token mean, and with left padding the last column holds every text's last real token.
Cosines are row-wise (one per token) in float32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tale_opt.errors import UsageError
from tale_opt.evaluation.batching import length_sorted_batches
from tale_opt.model.surgery import decoder_layers, dropped_layers
from tale_opt.types import DropSet

_NO_DROP = DropSet()


@dataclass(frozen=True)
class HiddenStateStats:
    """Per-layer statistics of the probed model (positions in its current layer list).

    `angular_sum[l][m]` (``l < m``) is the sum over texts of the angular distance between
    ``h_l`` and ``h_m``; `angular` divides by `n_sequences`.
    """

    block_influence: tuple[float, ...]
    angular_sum: tuple[tuple[float, ...], ...]
    n_tokens: int
    n_sequences: int
    seconds: float = 0.0

    @property
    def num_layers(self) -> int:
        return len(self.block_influence)

    def angular(self, layer: int, n: int) -> float:
        """d(layer, n): mean angular distance (in [0, 1]) from the input of `layer` to the
        input of `layer + n` (the block of `n` layers starting at `layer`)."""
        if not (n >= 1 and layer >= 0 and layer + n <= self.num_layers):
            raise ValueError(
                f"`n >= 1` and `0 <= layer <= layer + n <= {self.num_layers}` must hold, but "
                f"got (layer={layer}, n={n})"
            )
        return self.angular_sum[layer][layer + n] / self.n_sequences


def truncate_texts(
    tokenizer: Any, texts: Sequence[str], *, max_length: int, add_special_tokens: bool = True
) -> tuple[tuple[int, ...], ...]:
    """Token ids of each text, cut to its first `max_length` tokens (texts under 2 tokens are
    skipped: a cosine needs a state, an angle a text).

    Raises:
        UsageError: `max_length < 2`, or no text left.
    """
    if max_length < 2:
        raise UsageError(f"`max_length >= 2` must hold, but got max_length={max_length}")
    sequences = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)[:max_length]
        if len(ids) >= 2:
            sequences.append(tuple(ids))
    if not sequences:
        raise UsageError("hidden-state probes need at least one text of two or more tokens")
    return tuple(sequences)


class _Capture:
    """Forward hooks on every decoder layer: accumulate masked cosines, keep last tokens.

    Sums stay on the layer's device until the end (no host sync per layer); last-token states
    move to `device`, so layers spread over several GPUs (``device_map="auto"``) work too.
    """

    def __init__(self, layers: nn.ModuleList, device: torch.device) -> None:
        self.n_layers = len(layers)
        self.device = device
        self.cos_sum: list[torch.Tensor | float] = [0.0] * self.n_layers
        self.mask: torch.Tensor | None = None
        self.last: list[torch.Tensor | None] = [None] * (self.n_layers + 1)
        self.handles = [
            layer.register_forward_hook(self._hook(i), with_kwargs=True)
            for i, layer in enumerate(layers)
        ]

    def _hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            assert self.mask is not None
            cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # [B, T]
            # where, not multiply: a padded position's state may be anything, even NaN.
            mask = self.mask.to(cos.device)
            self.cos_sum[index] = self.cos_sum[index] + torch.where(mask, cos, 0.0).sum().double()
            self.last[index] = h_in[:, -1].float().to(self.device)
            self.last[index + 1] = h_out[:, -1].float().to(self.device)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def hidden_state_stats(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    drop: DropSet = _NO_DROP,
    *,
    pad_id: int = 0,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> HiddenStateStats:
    """Block Influence of every layer and angular distances between every pair of states.

    Args:
        model: A causal LM of a family `tale_opt.model.surgery` supports.
        sequences: Token ids (e.g. from `truncate_texts`); each at least 2 tokens long.
        drop: Layers removed while probing; the stats then index the kept layers in order.
        pad_id: Any token id (padding is masked out).
        batch_size: Sequences per forward.
        device: Where inputs go; defaults to the device of the model's first parameter.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    n_tokens = 0
    with dropped_layers(model, drop), torch.inference_mode():
        capture = _Capture(decoder_layers(model), device)
        n_states = capture.n_layers + 1
        angular_sum = torch.zeros(n_states, n_states, dtype=torch.float64)
        try:
            for batch in length_sorted_batches(sequences, batch_size, pad_id):
                batch = batch.to(device)
                capture.mask = batch.attention_mask.bool()
                n_tokens += int(batch.attention_mask.sum())
                model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    logits_to_keep=1,  # the LM head is not needed; keep it to one position
                    use_cache=False,
                )
                last = F.normalize(torch.stack(capture.last), dim=-1)  # [L+1, B, H]
                cos = torch.einsum("ibh,jbh->bij", last, last).clamp(-1.0, 1.0)
                angular_sum += (torch.arccos(cos) / math.pi).sum(0).double().cpu()
        finally:
            capture.close()
            model.train(was_training)
    block_influence = tuple(1.0 - float(s) / n_tokens for s in capture.cos_sum)
    return HiddenStateStats(
        block_influence,
        tuple(tuple(row) for row in angular_sum.tolist()),
        n_tokens,
        len(sequences),
        time.perf_counter() - start,
    )
