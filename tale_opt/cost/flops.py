"""Analytic FLOPs of a (layer-dropped) decoder LM on a given workload.

What is counted, and why: matrix-multiply FLOPs only, 2 per multiply-accumulate, which is the
convention of `torch.utils.flop_counter.FlopCounterMode` (tests check the two agree within 5%
on tiny models of every supported family). Norms, activations, softmax, rotary rotation and
residual adds are elementwise and left out: they are a fraction of a percent of a real model's
matmul work. Per decoder layer and sequence, for ``n`` new tokens that attend to ``k`` keys:

* projections: q and o are ``2·n·hidden·(heads·head_dim)`` each, k and v
  ``2·n·hidden·(kv_heads·head_dim)`` each (grouped-query attention: fewer KV heads);
* attention: scores ``Q·Kᵀ`` and ``P·V`` are ``2·n·k·heads·head_dim`` each (HF repeats the KV
  heads before the matmul, so every query head pays for the full key length);
* MLP: gated (gate, up, down) in every supported family, ``3 · 2·n·hidden·intermediate``.

Plus the LM head, ``2·hidden·vocab`` per position whose logits are computed (``logits_to_keep``).
Embedding lookups cost no FLOPs. Padding is not counted: the figure is the intrinsic cost of the
prompts, independent of how an evaluator batches them (`padded_lengths` gives the padded view).

Key lengths follow what HF's eager attention really computes. A prefill (no cache) computes the
full ``T×T`` score matrix on every layer, sliding-window layers included: the window is a mask
over that matrix, not a smaller matmul. During cached decoding a full-attention layer attends to
the whole context, while a sliding-window layer's `DynamicSlidingWindowLayer` cache keeps only
the last ``window − 1`` tokens, so a decode step there attends to ``min(past, window − 1) + 1``.
Kernels that skip masked blocks (FlashAttention, some SDPA backends) do less: about half the
score work of a causal prefill, less again with a window; for them this is an upper bound.

Layer types come from `config.layer_types`; configs without it (Mistral) slide on every layer
when `config.sliding_window` is set, as transformers' cache does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tale_opt.types import DropSet

# Families whose MLP is gated (gate_proj, up_proj, down_proj). A family missing here has no
# FLOP model yet: counting it with the wrong MLP would give a silently wrong figure.
GATED_MLP_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"})
SLIDING = "sliding_attention"


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder LM that its matmul FLOPs depend on (all layers)."""

    model_type: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layer_types: tuple[str, ...]
    sliding_window: int | None

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read the shape from a Hugging Face config of one of `GATED_MLP_FAMILIES`.

        Pass the config of the *full* model: inside `dropped_layers` the config describes the
        shortened model, and dropping the same layers again would be wrong.

        Raises:
            ValueError: The model type has no FLOP model here.
        """
        model_type = getattr(config, "model_type", None)
        if model_type not in GATED_MLP_FAMILIES:
            raise ValueError(
                f"no FLOP model for model_type={model_type!r}; supported: "
                f"{', '.join(sorted(GATED_MLP_FAMILIES))}"
            )
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        n_layers = config.num_hidden_layers
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None)
        if types is None:
            types = [SLIDING if window is not None else "full_attention"] * n_layers
        return cls(
            model_type=model_type,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab=config.vocab_size,
            layer_types=tuple(types[:n_layers]),
            sliding_window=window,
        )

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    def keys(self, layer_type: str, past: int, new: int) -> int:
        """Key length a forward of `new` tokens after `past` cached ones attends to."""
        if past and layer_type == SLIDING and self.sliding_window is not None:
            past = min(past, self.sliding_window - 1)
        return past + new

    def decode_keys(self, layer_type: str, prompt: int, generated: int) -> int:
        """Keys summed over the ``generated − 1`` decode steps that follow a prompt."""
        steps = generated - 1
        if steps <= 0:
            return 0
        first, last = prompt, prompt + steps - 1  # tokens cached before the first/last step
        if layer_type == SLIDING and self.sliding_window is not None:
            cached = _sum_min(first, last, self.sliding_window - 1)
        else:
            cached = (first + last) * steps // 2
        return cached + steps  # each step also attends to its own token

    def projection_flops(self, new: int) -> int:
        q_and_o = 2 * (2 * new * self.hidden * self.heads * self.head_dim)
        k_and_v = 2 * (2 * new * self.hidden * self.kv_heads * self.head_dim)
        return q_and_o + k_and_v

    def attention_flops(self, new: int, keys: int) -> int:
        return 2 * (2 * new * keys * self.heads * self.head_dim)

    def mlp_flops(self, new: int) -> int:
        return 3 * 2 * new * self.hidden * self.intermediate

    def lm_head_flops(self, positions: int) -> int:
        return 2 * positions * self.hidden * self.vocab


@dataclass
class FlopCount:
    """FLOPs of a workload, by part. `per_layer` holds each kept layer's total (forward order)."""

    projections: int = 0
    attention: int = 0
    mlp: int = 0
    lm_head: int = 0
    per_layer: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.projections + self.attention + self.mlp + self.lm_head

    @property
    def tflops(self) -> float:
        return self.total / 1e12

    def as_dict(self) -> dict[str, float]:
        """TFLOPs by part, for logging (``tflops``, ``tflops_attention``, ...)."""
        return {
            "tflops": self.tflops,
            "tflops_projections": self.projections / 1e12,
            "tflops_attention": self.attention / 1e12,
            "tflops_mlp": self.mlp / 1e12,
            "tflops_lm_head": self.lm_head / 1e12,
        }


def _sum_min(first: int, last: int, cap: int) -> int:
    """sum(min(c, cap) for c in range(first, last + 1)), in O(1)."""
    if last <= cap:
        return (first + last) * (last - first + 1) // 2
    if first >= cap:
        return cap * (last - first + 1)
    return (first + cap) * (cap - first + 1) // 2 + cap * (last - cap)


def count_flops(
    config: Any,
    drop: DropSet | Sequence[int] = (),
    prompt_lengths: Sequence[int] = (),
    *,
    new_tokens: int | Sequence[int] = 0,
    logits_kept: int | None = 1,
) -> FlopCount:
    """Matmul FLOPs of running the model without `drop` over the given prompts.

    Args:
        config: The full model's Hugging Face config (see `ModelShape.from_config`).
        drop: 0-based decoder layers removed.
        prompt_lengths: Tokens of each prompt (one sequence each, no padding).
        new_tokens: Tokens generated per prompt with a KV cache (an int for all, or one per
            prompt). 0: a single forward over the prompt (scoring). ``N >= 1``: a prefill
            (which yields the first token) and ``N − 1`` single-token decode steps, each
            attending to the context so far, as HF `generate` runs.
        logits_kept: Positions per prompt whose logits the prefill computes (HF
            `logits_to_keep`; `generate` uses 1); None = every position. Decode steps compute
            one each.

    Returns:
        The FLOPs by part and per kept layer.

    Raises:
        ValueError: An unsupported family, a layer out of range, negative counts, or a
            `new_tokens` list whose length differs from the prompts'.
    """
    shape = ModelShape.from_config(config)
    drop = drop if isinstance(drop, DropSet) else DropSet.of(drop)
    kept = drop.kept(shape.num_layers)
    kept_types = [shape.layer_types[i] for i in kept]
    if isinstance(new_tokens, int):
        per_prompt = [new_tokens] * len(prompt_lengths)
    else:
        per_prompt = list(new_tokens)
        if len(per_prompt) != len(prompt_lengths):
            raise ValueError(
                f"new_tokens has {len(per_prompt)} entries but there are "
                f"{len(prompt_lengths)} prompts; give one per prompt or a single int"
            )
    if logits_kept is not None and logits_kept < 0:
        raise ValueError(f"`logits_kept >= 0` must hold, but got {logits_kept}")
    # Closed forms per distinct (prompt, generated, logits) workload: a Python loop over
    # prompts x layers x decode steps would cost seconds per candidate for 500 math prompts.
    workloads: Counter[tuple[int, int, int]] = Counter()
    for length, generated in zip(prompt_lengths, per_prompt, strict=True):
        if length < 0 or generated < 0:
            raise ValueError(
                f"prompt lengths and new tokens must be >= 0, but got ({length}, {generated})"
            )
        if length:
            logits = length if logits_kept is None else min(logits_kept, length)
            workloads[(length, generated, logits)] += 1
    tokens = sum(n * (p + max(g - 1, 0)) for (p, g, _), n in workloads.items())
    positions = sum(n * (k + max(g - 1, 0)) for (_, g, k), n in workloads.items())
    attention = {
        layer_type: shape.attention_flops(
            1,
            sum(
                n * (p * p + shape.decode_keys(layer_type, p, g))
                for (p, g, _), n in workloads.items()
            ),
        )
        for layer_type in set(kept_types)
    }
    proj, mlp = shape.projection_flops(tokens), shape.mlp_flops(tokens)
    return FlopCount(
        projections=proj * len(kept_types),
        attention=sum(attention[t] for t in kept_types),
        mlp=mlp * len(kept_types),
        lm_head=shape.lm_head_flops(positions),
        per_layer=[proj + attention[t] + mlp for t in kept_types],
    )


def tflops_for(
    config: Any,
    drop: DropSet | Sequence[int],
    prompt_lengths: Sequence[int],
    *,
    new_tokens: int | Sequence[int] = 0,
    logits_kept: int | None = 1,
) -> float:
    """TFLOPs (1e12 matmul FLOPs) of a workload; arguments as in `count_flops`."""
    return count_flops(
        config, drop, prompt_lengths, new_tokens=new_tokens, logits_kept=logits_kept
    ).tflops


def padded_lengths(prompt_lengths: Sequence[int], batch_size: int) -> list[int]:
    """Each prompt's length once padded as the evaluator batches it (longest first).

    Feed the result to `count_flops` for the FLOPs the hardware actually spends on padding too.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size >= 1` must hold, but got {batch_size}")
    order = sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])
    out = [0] * len(prompt_lengths)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(prompt_lengths[i] for i in rows)
        for i in rows:
            out[i] = width
    return out
