"""Measured latency and throughput of a (layer-dropped) model with HF `generate` and a KV cache.

For each batch size, on the model's own device, with synthetic prompts of a fixed length (random
token ids: latency depends on shapes, not on text):

* time to first token (TTFT): one `generate` call that produces 1 token, i.e. the prefill plus
  the first sampled token;
* decode time per token: ``(t(N) − t(1)) / (N − 1)``, the extra time of producing N tokens
  instead of 1, so prefill and call overhead cancel out;
* tokens/s: ``batch · N / t(N)``, the end-to-end generation throughput.

Every figure is the median over `repeats` timed calls after `warmup` untimed ones (the first
calls pay for allocator growth, kernel selection and lazy initialisation), with the fastest and
slowest call beside it. On CUDA the device is synchronised before the clock starts and stops,
since kernels run asynchronously. Generation is forced to N tokens (`min_new_tokens`) so an
early EOS cannot shorten one configuration's run.

Several configurations are measured in one interleaved loop (`measure_interleaved`): each
repeat times every configuration once, in alternating order, so a slow phase of a shared
machine hits them alike, and a speed-up is the median of per-repeat ratios against the
baseline timed in the same repeat (`paired_speedup`), never against a baseline measured
minutes earlier under another load.
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
    # How far a measured speed-up may leave the physically possible range before it is
    # refused as noise (see tale_opt.cost.credibility): 0.1 = 10 %.
    speedup_tolerance: float = 0.1

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
        validate.number(self.speedup_tolerance, "speedup_tolerance", minimum=0)

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
    """Measured figures for one batch size (times in milliseconds; medians, with the fastest
    and slowest of the repeats as ``*_min`` / ``*_max``).

    `generate_ms_runs` holds each repeat's end-to-end time in loop order: the i-th run of two
    results from one `measure_interleaved` loop were timed in the same repeat (see
    `paired_speedup`).
    """

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
    ttft_ms_min: float = 0.0
    ttft_ms_max: float = 0.0
    generate_ms_min: float = 0.0
    generate_ms_max: float = 0.0
    generate_ms_runs: tuple[float, ...] = ()

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
    is (empty `drop`). To compare configurations, measure them together with
    `measure_interleaved` instead.

    Args:
        model: A Hugging Face causal LM of a supported family, on the device to measure.
        drop: 0-based decoder layers to remove during the measurement.
        settings: Batch sizes, prompt and generation lengths, repeats and warm-up calls.
        pad_token_id: Passed to `generate`; defaults to the model's pad (else EOS) token.
        progress: Called with a short description after each repeat (for CLIs).

    Returns:
        One result per batch size, in the order of `settings.batch_sizes`.
    """
    (results,) = measure_interleaved(
        [(model, drop)], settings, pad_token_id=pad_token_id, progress=progress
    )
    return results


def measure_interleaved(
    configurations: Sequence[tuple[nn.Module, DropSet]],
    settings: LatencySettings | None = None,
    *,
    pad_token_id: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[list[LatencyResult]]:
    """Measure several configurations in one loop: every repeat times each of them once.

    The order alternates between repeats (forwards, then backwards), so neither a slow
    phase of a shared machine nor a position in the loop favours one configuration; the
    i-th entries of two results' `generate_ms_runs` come from the same repeat.

    Args:
        configurations: ``(model, drop set)`` pairs: one model with several drop sets, and/or
            other models (an exported checkpoint with an empty drop set).
        settings, pad_token_id: As for `measure_latency`.
        progress: Called with a short description after each repeat.

    Returns:
        Per configuration (in the given order), one result per batch size.
    """
    settings = settings or LatencySettings()
    models = list({id(m): m for m, _ in configurations}.values())
    modes = [m.training for m in models]
    results: list[list[LatencyResult]] = [[] for _ in configurations]
    try:
        for model in models:
            model.eval()
        with torch.inference_mode():
            for batch in settings.batch_sizes:
                timings = _time_batch(configurations, batch, settings, pad_token_id, progress)
                for out, (first, full, layers, device) in zip(results, timings, strict=True):
                    out.append(_result(first, full, batch, layers, device, settings))
    finally:
        for model, was_training in zip(models, modes, strict=True):
            model.train(was_training)
    return results


def _time_batch(
    configurations: Sequence[tuple[nn.Module, DropSet]],
    batch: int,
    settings: LatencySettings,
    pad_token_id: int | None,
    progress: Callable[[str], None] | None,
) -> list[tuple[list[float], list[float], int, torch.device]]:
    """Per configuration: the timed 1-token and N-token calls, its layer count and device."""
    n = settings.new_tokens
    runs = [_runner(model, batch, settings, pad_token_id) for model, _ in configurations]
    if progress is not None and settings.warmup:
        progress(f"batch {batch}: warming up {len(configurations)} configuration(s)")
    layers = []
    for (model, drop), run in zip(configurations, runs, strict=True):
        with dropped_layers(model, drop):
            layers.append(num_decoder_layers(model))
            for _ in range(settings.warmup):
                run(1)
                if n > 1:
                    run(n)
    devices = [_device_of(model) for model, _ in configurations]
    first: list[list[float]] = [[] for _ in configurations]
    full: list[list[float]] = [[] for _ in configurations]
    started = time.perf_counter()
    for repeat in range(settings.repeats):
        order = list(range(len(configurations)))
        if repeat % 2:
            order.reverse()
        for i in order:
            model, drop = configurations[i]
            run, device = runs[i], devices[i]
            with dropped_layers(model, drop):
                # 1 and N tokens back to back, so a slow phase hits both alike.
                first[i].append(_timed(lambda run=run: run(1), device))
                full[i].append(_timed(lambda run=run: run(n), device) if n > 1 else first[i][-1])
        if progress is not None:
            progress(
                f"batch {batch}: repeat {repeat + 1}/{settings.repeats} of "
                f"{len(configurations)} configuration(s) timed "
                f"({time.perf_counter() - started:.0f} s)"
            )
    return [(first[i], full[i], layers[i], devices[i]) for i in range(len(configurations))]


def _runner(
    model: nn.Module, batch: int, settings: LatencySettings, pad_token_id: int | None
) -> Callable[[int], Any]:
    """`run(n)`: one `generate` call producing exactly n tokens for a fixed synthetic batch."""
    device = _device_of(model)
    ids = _prompts(model.config.vocab_size, batch, settings.prompt_tokens, settings.seed)
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    common = dict(
        do_sample=False, temperature=None, top_p=None, top_k=None, use_cache=True,
        pad_token_id=_pad_id(model, pad_token_id),
    )  # fmt: skip

    def run(n: int) -> Any:
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **common
        )

    return run


def _result(
    first: list[float],
    full: list[float],
    batch: int,
    layers: int,
    device: torch.device,
    settings: LatencySettings,
) -> LatencyResult:
    n = settings.new_tokens
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
        ttft_ms_min=1e3 * min(first),
        ttft_ms_max=1e3 * max(first),
        generate_ms_min=1e3 * min(full),
        generate_ms_max=1e3 * max(full),
        generate_ms_runs=tuple(1e3 * t for t in full),
    )


def paired_speedup(
    baseline: LatencyResult, other: LatencyResult
) -> tuple[float, float, float] | None:
    """End-to-end speed-up of `other` over `baseline` from the same interleaved loop: the
    median, lowest and highest of the per-repeat ratios ``baseline_i / other_i`` (> 1 =
    faster). None when the two were not timed in one loop (unequal repeat counts)."""
    base, runs = baseline.generate_ms_runs, other.generate_ms_runs
    if not base or len(base) != len(runs) or min(runs) <= 0:
        return None
    ratios = [b / o for b, o in zip(base, runs, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


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
