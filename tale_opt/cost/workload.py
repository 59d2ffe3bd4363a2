"""The FLOPs of evaluating one configuration on a prepared split, per scoring mode.

Mirrors what `tale_opt.evaluation` runs, without importing it (a prepared split is read by its
fields: ``scoring``, ``prompt_ids``, ``continuation_ids``):

* ``letters``: one forward per prompt, logits of the last position only;
* ``generate``: a prefill and cached decode steps, ``max_new_tokens`` per prompt unless the
  caller knows how many each reply really took (an upper bound otherwise: a reply that stops
  at EOS costs less);
* ``loglik``: when every choice of a prompt is one token, one forward of the prompt (logits of
  the last position); otherwise one forward of prompt + choice per choice, with logits of the
  choice's tokens and the position before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tale_opt.cost.flops import FlopCount, count_flops
from tale_opt.types import DropSet


def _add(total: FlopCount, part: FlopCount) -> None:
    total.projections += part.projections
    total.attention += part.attention
    total.mlp += part.mlp
    total.lm_head += part.lm_head
    if not total.per_layer:
        total.per_layer = [0] * len(part.per_layer)
    total.per_layer = [a + b for a, b in zip(total.per_layer, part.per_layer, strict=True)]


def evaluation_flops(
    config: Any,
    drop: DropSet | Sequence[int],
    prepared: Any,
    *,
    max_new_tokens: int = 1,
    generated_tokens: Sequence[int] | None = None,
) -> FlopCount:
    """FLOPs of scoring `prepared` (an evaluator's `PreparedSplit`) without the layers in `drop`.

    Args:
        config: The full model's config (outside any `dropped_layers` context).
        drop: 0-based layers removed.
        prepared: Has ``scoring``, ``prompt_ids`` and (loglik) ``continuation_ids``.
        max_new_tokens: Tokens per reply in ``generate`` mode when `generated_tokens` is None.
        generated_tokens: Tokens each reply actually took (``generate`` mode), if known.

    Raises:
        ValueError: An unknown scoring mode, or any error of `count_flops`.
    """
    lengths = [len(ids) for ids in prepared.prompt_ids]
    scoring = prepared.scoring
    if scoring == "letters":
        return count_flops(config, drop, lengths, logits_kept=1)
    if scoring == "generate":
        new = list(generated_tokens) if generated_tokens is not None else max_new_tokens
        return count_flops(config, drop, lengths, new_tokens=new, logits_kept=1)
    if scoring != "loglik":
        raise ValueError(f"unknown scoring mode {scoring!r}; expected letters, generate, loglik")
    shared: list[int] = []
    total = FlopCount()
    for length, conts in zip(lengths, prepared.continuation_ids, strict=True):
        if all(len(c) == 1 for c in conts):
            shared.append(length)
            continue
        for cont in conts:
            part = count_flops(config, drop, [length + len(cont)], logits_kept=len(cont) + 1)
            _add(total, part)
    if shared:
        _add(total, count_flops(config, drop, shared, logits_kept=1))
    return total
