"""Measured latency and throughput of a (layer-dropped) model with HF `generate` and a KV cache.

For each batch size, on the model's own device, with synthetic prompts of a fixed length (random
token ids: latency depends on shapes, not on text):

* time to first token (TTFT): one `generate` call that produces 1 token, i.e. the prefill plus
  the first sampled token;
* decode time per token: ``(t(N) − t(1)) / (N − 1)``, the extra time of producing N tokens
  instead of 1, so prefill and call overhead cancel out;
* tokens/s: ``batch · N / t(N)``, the end-to-end generation throughput.

Every figure is the median over `repeats` timed calls after `warmup` untimed ones (the first
calls pay for allocator growth, kernel selection and lazy initialisation). On CUDA the device is
synchronised before the clock starts and stops, since kernels run asynchronously. Generation
is forced to N tokens (`min_new_tokens`) so an early EOS cannot shorten one configuration's run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from tale_opt import validate
from tale_opt.errors import ConfigValueError
from tale_opt.model.surgery import dropped_layers, num_decoder_layers
from tale_opt.types import DropSet


@dataclass(frozen=True)
class LatencySettings:
    """What to measure. Validated on construction (ValueError names the bad value)."""

    batch_sizes: tuple[int, ...] = (1, 8)
    prompt_tokens: int = 128
    new_tokens: int = 32
    repeats: int = 5
    warmup: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        if not self.batch_sizes:
            raise ConfigValueError("batch_sizes must list at least one batch size")
        for size in self.batch_sizes:
            validate.integer(size, "batch_sizes[]", minimum=1)
        for name, minimum in (
            ("prompt_tokens", 1),
            ("new_tokens", 1),
            ("repeats", 1),
            ("warmup", 0),
            ("seed", 0),
        ):
            validate.integer(getattr(self, name), name, minimum=minimum)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> LatencySettings:
        """Build from a config node; unknown keys raise ValueError listing the known ones."""
        options = dict(options or {})
        validate.known_keys(options, cls.__dataclass_fields__, "latency")
        if "batch_sizes" in options:
            options["batch_sizes"] = tuple(options["batch_sizes"])
        return cls(**options)


_NO_DROP = DropSet()


@dataclass(frozen=True)
class LatencyResult:
    """Measured figures for one batch size (times in milliseconds, medians)."""

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    num_layers: int
    device: str
    ttft_ms: float
    decode_ms_per_token: float | None  # None when new_tokens == 1
    generate_ms: float
    tokens_per_s: float
    repeats: int

    def metrics(self, prefix: str = "latency") -> dict[str, float]:
        """Flat metric names, e.g. ``latency.b8.ttft_ms``, for MLflow and summary files."""
        head = f"{prefix}.b{self.batch_size}"
        out = {f"{head}.ttft_ms": self.ttft_ms, f"{head}.tokens_per_s": self.tokens_per_s}
        if self.decode_ms_per_token is not None:
            out[f"{head}.decode_ms_per_token"] = self.decode_ms_per_token
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _pad_id(model: nn.Module, pad_token_id: int | None) -> int:
    if pad_token_id is not None:
        return pad_token_id
    for source in (getattr(model, "generation_config", None), model.config):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    return 0


def _prompts(vocab: int, batch: int, length: int, seed: int) -> torch.Tensor:
    # Ids from above the usual special-token range, so no prompt is mostly BOS/EOS/pad.
    low = min(4, vocab - 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, (batch, length), generator=generator)


def measure_latency(
    model: nn.Module,
    drop: DropSet = _NO_DROP,
    settings: LatencySettings | None = None,
    *,
    pad_token_id: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[LatencyResult]:
    """Measure TTFT, decode time per token and tokens/s of `model` without the layers in `drop`.

    Works on any causal LM with `generate`: an in-memory model with a drop set (the layers are
    removed for the measurement and restored afterwards) or an exported checkpoint loaded as
    is (empty `drop`).

    Args:
        model: A Hugging Face causal LM of a supported family, on the device to measure.
        drop: 0-based decoder layers to remove during the measurement.
        settings: Batch sizes, prompt and generation lengths, repeats and warm-up calls.
        pad_token_id: Passed to `generate`; defaults to the model's pad (else EOS) token.
        progress: Called with a short description before each batch size (for CLIs).

    Returns:
        One result per batch size, in the order of `settings.batch_sizes`.
    """
    settings = settings or LatencySettings()
    device = _device_of(model)
    pad = _pad_id(model, pad_token_id)
    common = dict(
        do_sample=False, temperature=None, top_p=None, top_k=None, use_cache=True, pad_token_id=pad
    )
    results = []
    was_training = model.training
    model.eval()
    try:
        with dropped_layers(model, drop), torch.inference_mode():
            layers = num_decoder_layers(model)
            for batch in settings.batch_sizes:
                if progress is not None:
                    progress(f"batch {batch}: {layers} layers on {device}")
                ids = _prompts(
                    model.config.vocab_size, batch, settings.prompt_tokens, settings.seed
                ).to(device)
                mask = torch.ones_like(ids)

                def run(n: int, ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> Any:
                    return model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=n,
                        min_new_tokens=n,
                        **common,
                    )

                results.append(_measure_batch(run, batch, layers, device, settings))
    finally:
        model.train(was_training)
    return results


def _measure_batch(
    run: Callable[[int], Any],
    batch: int,
    layers: int,
    device: torch.device,
    settings: LatencySettings,
) -> LatencyResult:
    n = settings.new_tokens
    for _ in range(settings.warmup):
        run(1)
        if n > 1:
            run(n)
    first, full = [], []
    for _ in range(settings.repeats):
        # Interleaved, so a slow phase of a shared machine hits both series alike.
        first.append(_timed(lambda: run(1), device))
        full.append(_timed(lambda: run(n), device) if n > 1 else first[-1])
    t1, tn = statistics.median(first), statistics.median(full)
    # Clamped: on a tiny model timing noise can exceed the decode time itself.
    decode = max(0.0, (tn - t1) / (n - 1)) if n > 1 else None
    return LatencyResult(
        batch_size=batch,
        prompt_tokens=settings.prompt_tokens,
        new_tokens=n,
        num_layers=layers,
        device=str(device),
        ttft_ms=1e3 * t1,
        decode_ms_per_token=None if decode is None else 1e3 * decode,
        generate_ms=1e3 * tn,
        tokens_per_s=batch * n / tn,
        repeats=settings.repeats,
    )


def speedups(
    baseline: Sequence[LatencyResult], other: Sequence[LatencyResult]
) -> dict[int, dict[str, float | None]]:
    """Per batch size: how many times faster `other` is than `baseline` (> 1 = faster).

    Keys: ``ttft`` and ``decode`` (time ratios baseline / other) and ``throughput``
    (tokens/s ratio other / baseline). Batch sizes missing from either side are skipped.
    """
    base = {r.batch_size: r for r in baseline}
    out: dict[int, dict[str, float | None]] = {}
    for r in other:
        b = base.get(r.batch_size)
        if b is None:
            continue
        decode = None
        if b.decode_ms_per_token and r.decode_ms_per_token:
            decode = b.decode_ms_per_token / r.decode_ms_per_token
        out[r.batch_size] = {
            "ttft": b.ttft_ms / r.ttft_ms if r.ttft_ms > 0 else None,
            "decode": decode,
            "throughput": r.tokens_per_s / b.tokens_per_s if b.tokens_per_s > 0 else None,
        }
    return out
