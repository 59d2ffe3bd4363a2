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
from tale_opt.cost.latency import (
    LatencyResult,
    LatencySettings,
    measure_interleaved,
    paired_speedup,
    speedups,
)
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
    """Results of one variant: a latency result and the workload's TFLOPs per batch size.

    `speedup` holds, per batch size, ``ttft``, ``decode`` and ``throughput`` (ratios of the
    medians) and ``generate``: the end-to-end speed-up against the baseline timed in the same
    loop (median of per-repeat ratios) with its ``generate_low`` / ``generate_high`` and
    ``credible`` (within what removing the variant's layers can give, see
    `tale_opt.cost.credibility`).
    """

    label: str
    dropped: str
    num_layers: int
    latency: list[LatencyResult]
    tflops: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, dict[str, Any]] = field(default_factory=dict)

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
    """Measure every variant in one interleaved loop; speed-ups are relative to the first
    one (the baseline), repeat by repeat."""
    tflops = []
    for variant in variants:
        config = variant.flops_config or variant.model.config
        # Computed before measuring: inside dropped_layers the config is the shortened one.
        tflops.append(
            {
                b: tflops_for(
                    config,
                    variant.drop,
                    [settings.prompt_tokens] * b,
                    new_tokens=settings.new_tokens,
                )
                for b in settings.batch_sizes
            }
        )
    timed = measure_interleaved([(v.model, v.drop) for v in variants], settings, progress=progress)
    rows: list[BenchRow] = []
    for variant, latency, flops in zip(variants, timed, tflops, strict=True):
        dropped = variant.dropped if variant.dropped is not None else variant.drop.key
        rows.append(BenchRow(variant.label, dropped, latency[0].num_layers, latency, flops))
    for row in rows:
        row.speedup = _row_speedups(rows[0], row, settings.speedup_tolerance)
    return rows


def _row_speedups(base: BenchRow, row: BenchRow, tolerance: float) -> dict[int, dict[str, Any]]:
    from tale_opt.cost.credibility import check_speedup

    out: dict[int, dict[str, Any]] = {
        b: dict(v) for b, v in speedups(base.latency, row.latency).items()
    }
    by_batch = {r.batch_size: r for r in base.latency}
    dropped = base.num_layers - row.num_layers
    for result in row.latency:
        ratio = paired_speedup(by_batch[result.batch_size], result)
        if ratio is None or not 0 <= dropped < base.num_layers:
            continue
        check = check_speedup(ratio[0], base.num_layers, dropped, tolerance=tolerance,
                              spread=ratio[1:])  # fmt: skip
        out[result.batch_size].update(
            generate=check.measured,
            generate_low=check.low,
            generate_high=check.high,
            credible=check.credible,
        )
    return out


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _end_to_end(sp: Mapping[str, Any]) -> str:
    """``1.02× [0.98–1.05]``, marked when above what removing the layers can give."""
    if sp.get("generate") is None:
        return "-"
    cell = f"{sp['generate']:.2f}× [{sp['generate_low']:.2f}–{sp['generate_high']:.2f}]"
    return cell if sp.get("credible") else cell + " not credible"


def format_bench_table(rows: Sequence[BenchRow], settings: LatencySettings) -> str:
    """A markdown table: one line per variant and batch size, speed-ups vs the first variant.

    Times are medians of the repeats; "generate ms" adds the fastest and slowest repeat. The
    end-to-end speed-up is the median of per-repeat ratios against the baseline timed in the
    same repeat, with their range; "not credible" marks one outside what removing that many
    layers can give (L / (L - k), with `speedup_tolerance`).
    """
    head = (
        f"prompt {settings.prompt_tokens} tokens, {settings.new_tokens} new tokens, "
        f"median of {settings.repeats} (warm-up {settings.warmup}), variants interleaved; "
        f"device {rows[0].latency[0].device if rows else '-'}\n"
    )
    lines = [
        "| config | dropped (0-based) | layers | batch | TTFT ms | decode ms/token | tokens/s "
        "| generate ms [min–max] | TFLOPs | TTFT speed-up | decode speed-up "
        "| throughput speed-up | end-to-end speed-up [range] |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for res in row.latency:
            sp = row.speedup.get(res.batch_size, {})
            lines.append(
                f"| {row.label} | {row.dropped or '—'} | {row.num_layers} | {res.batch_size} "
                f"| {res.ttft_ms:.1f} | {_num(res.decode_ms_per_token, '.2f')} "
                f"| {res.tokens_per_s:.1f} "
                f"| {res.generate_ms:.1f} [{res.generate_ms_min:.1f}–{res.generate_ms_max:.1f}] "
                f"| {row.tflops[res.batch_size]:.4g} "
                f"| {_num(sp.get('ttft'), '.2f')}× | {_num(sp.get('decode'), '.2f')}× "
                f"| {_num(sp.get('throughput'), '.2f')}× | {_end_to_end(sp)} |"
            )
    return head + "\n".join(lines)


def pick_costs(
    model: Any,
    picks: Mapping[str, DropSet],
    settings: LatencySettings | None,
    *,
    prepared: Any = None,
    max_new_tokens: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Cost fields of a search's reported configurations, to merge into summary.json picks.

    Each distinct drop set is measured once (Best, BSBA and AE-HM often coincide), all of
    them and the full model in one interleaved loop, on the model's device; call it outside
    any `dropped_layers` context.

    Args:
        model: The full model (all layers).
        picks: Pick name ("baseline", "best", ...) -> its drop set.
        settings: Latency settings; None skips the measurement (TFLOPs only).
        prepared: The held-out `PreparedSplit`; gives ``tflops`` of evaluating it.
        max_new_tokens: Tokens per reply when `prepared` uses generate scoring.
        progress: Called with a short line after each repeat of the latency loop.

    Returns:
        Per pick: ``tflops`` (with `prepared`), ``latency`` (``{"b1": {"ttft_ms": ...}}``, the
        medians with their ``_min`` / ``_max``), ``speedup_check`` (`SpeedupCheck.as_dict`:
        the end-to-end speed-up at the first batch size against the full model timed in the
        same loop, its spread over the repeats and whether it is physically possible) and,
        only when it is, ``speedup_measured``: that speed-up (> 1 = faster).
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
    # The full model first: every configuration's speed-up is against it, repeat by repeat.
    drops = list(dict.fromkeys([DropSet(), *picks.values()]))
    timed = measure_interleaved([(model, drop) for drop in drops], settings, progress=progress)
    measured = dict(zip(drops, timed, strict=True))
    base = measured[DropSet()][0]
    for name, drop in picks.items():
        results = measured[drop]
        out[name]["latency"] = {f"b{r.batch_size}": _latency_fields(r) for r in results}
        out[name].update(speedup_fields(base, results[0], settings.speedup_tolerance))
    return out


def speedup_fields(
    baseline: LatencyResult, result: LatencyResult, tolerance: float
) -> dict[str, Any]:
    """``speedup_check`` of `result` against `baseline` (the full model, timed in the same
    interleaved loop) and, only when the check finds it credible, ``speedup_measured``.
    Empty when the two were not timed in one loop."""
    from tale_opt.cost.credibility import check_speedup

    ratio = paired_speedup(baseline, result)
    if ratio is None:
        return {}
    dropped = baseline.num_layers - result.num_layers
    check = check_speedup(
        ratio[0], baseline.num_layers, dropped, tolerance=tolerance, spread=ratio[1:]
    )
    out: dict[str, Any] = {"speedup_check": check.as_dict()}
    if check.credible:
        out["speedup_measured"] = check.measured
    return out


def _latency_fields(result: LatencyResult) -> dict[str, float | None]:
    return {
        "ttft_ms": result.ttft_ms,
        "ttft_ms_min": result.ttft_ms_min,
        "ttft_ms_max": result.ttft_ms_max,
        "decode_ms_per_token": result.decode_ms_per_token,
        "tokens_per_s": result.tokens_per_s,
        "generate_ms": result.generate_ms,
        "generate_ms_min": result.generate_ms_min,
        "generate_ms_max": result.generate_ms_max,
    }
