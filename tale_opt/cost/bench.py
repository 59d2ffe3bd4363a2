"""Benchmark a baseline model against pruned variants: measured latency plus analytic TFLOPs.

Used by `python -m tale_opt bench` and by a search that measures its picks. A variant is either
the baseline model with a drop set (removed in memory, restored afterwards) or another loaded
model, e.g. an exported checkpoint (measured as is).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tale_opt.cost.flops import tflops_for
from tale_opt.cost.latency import LatencyResult, LatencySettings, measure_latency, speedups
from tale_opt.types import DropSet


@dataclass(frozen=True)
class Variant:
    """One configuration to benchmark: `model` without the layers in `drop`.

    `flops_config` is the config the FLOPs are computed from; None = `model.config` (read
    before the layers are dropped, so it describes the full model). `dropped` is what the
    table shows as the dropped layers; None = `drop` (an exported checkpoint has an empty
    `drop` but was pruned on export: pass its metadata's layers here).
    """

    label: str
    model: Any
    drop: DropSet = DropSet()
    flops_config: Any = None
    dropped: str | None = None


@dataclass
class BenchRow:
    """Results of one variant: a latency result and the workload's TFLOPs per batch size."""

    label: str
    dropped: str
    num_layers: int
    latency: list[LatencyResult]
    tflops: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, dict[str, float | None]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "dropped": self.dropped,
            "num_layers": self.num_layers,
            "latency": [r.as_dict() for r in self.latency],
            "tflops": self.tflops,
            "speedup": self.speedup,
        }


def benchmark(
    variants: Sequence[Variant],
    settings: LatencySettings,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Measure every variant; speed-ups are relative to the first one (the baseline)."""
    rows: list[BenchRow] = []
    for variant in variants:
        say = None
        if progress is not None:
            say = lambda msg, label=variant.label: progress(f"{label}: {msg}")  # noqa: E731
        config = variant.flops_config or variant.model.config
        # Computed before measuring: inside dropped_layers the config is the shortened one.
        tflops = {
            b: tflops_for(
                config, variant.drop, [settings.prompt_tokens] * b, new_tokens=settings.new_tokens
            )
            for b in settings.batch_sizes
        }
        latency = measure_latency(variant.model, variant.drop, settings, progress=say)
        dropped = variant.dropped if variant.dropped is not None else variant.drop.key
        rows.append(BenchRow(variant.label, dropped, latency[0].num_layers, latency, tflops))
    for row in rows:
        row.speedup = speedups(rows[0].latency, row.latency)
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_bench_table(rows: Sequence[BenchRow], settings: LatencySettings) -> str:
    """A markdown table: one line per variant and batch size, speed-ups vs the first variant."""
    head = (
        f"prompt {settings.prompt_tokens} tokens, {settings.new_tokens} new tokens, "
        f"median of {settings.repeats} (warm-up {settings.warmup}); device "
        f"{rows[0].latency[0].device if rows else '-'}\n"
    )
    lines = [
        "| config | dropped (0-based) | layers | batch | TTFT ms | decode ms/token | tokens/s "
        "| TFLOPs | TTFT speed-up | decode speed-up | throughput speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for res in row.latency:
            sp = row.speedup.get(res.batch_size, {})
            lines.append(
                f"| {row.label} | {row.dropped or '—'} | {row.num_layers} | {res.batch_size} "
                f"| {res.ttft_ms:.1f} | {_num(res.decode_ms_per_token, '.2f')} "
                f"| {res.tokens_per_s:.1f} | {row.tflops[res.batch_size]:.4g} "
                f"| {_num(sp.get('ttft'), '.2f')}× | {_num(sp.get('decode'), '.2f')}× "
                f"| {_num(sp.get('throughput'), '.2f')}× |"
            )
    return head + "\n".join(lines)


def pick_costs(
    model: Any,
    picks: Mapping[str, DropSet],
    settings: LatencySettings | None,
    *,
    prepared: Any = None,
    max_new_tokens: int = 1,
) -> dict[str, dict[str, Any]]:
    """Cost fields of a search's reported configurations, to merge into summary.json picks.

    Each distinct drop set is measured once (Best, BSBA and AE-HM often coincide), on the
    model's device; call it outside any `dropped_layers` context.

    Args:
        model: The full model (all layers).
        picks: Pick name ("baseline", "best", ...) -> its drop set; must include "baseline"
            for `speedup_measured`.
        settings: Latency settings; None skips the measurement (TFLOPs only).
        prepared: The held-out `PreparedSplit`; gives ``tflops`` of evaluating it.
        max_new_tokens: Tokens per reply when `prepared` uses generate scoring.

    Returns:
        Per pick: ``tflops`` (with `prepared`), ``latency`` (``{"b1": {"ttft_ms": ...}}``) and
        ``speedup_measured``: the baseline's end-to-end `generate` time over this pick's, at
        the first batch size (the latency one user sees; > 1 = faster).
    """
    from tale_opt.cost.workload import evaluation_flops

    config = model.config
    out: dict[str, dict[str, Any]] = {name: {} for name in picks}
    if prepared is not None:
        for name, drop in picks.items():
            flops = evaluation_flops(config, drop, prepared, max_new_tokens=max_new_tokens)
            out[name]["tflops"] = flops.tflops
    if settings is None:
        return out
    measured = {drop: measure_latency(model, drop, settings) for drop in set(picks.values())}
    base = measured.get(picks.get("baseline", DropSet()))
    for name, drop in picks.items():
        results = measured[drop]
        out[name]["latency"] = {
            f"b{r.batch_size}": {
                "ttft_ms": r.ttft_ms,
                "decode_ms_per_token": r.decode_ms_per_token,
                "tokens_per_s": r.tokens_per_s,
            }
            for r in results
        }
        if base is not None:
            out[name]["speedup_measured"] = base[0].generate_ms / results[0].generate_ms
    return out
