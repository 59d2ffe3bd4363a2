"""Seconds per candidate×example of one greedy round: the reference pattern vs ours.

    python benchmarks/bench_evaluator.py                          # SmolLM2, 100 ARC-Easy prompts
    python benchmarks/bench_evaluator.py --fewshot 5              # the paper's 5-shot prompts
    python benchmarks/bench_evaluator.py --candidates all --modes ac    # a whole round: (a), (c)
    python benchmarks/bench_evaluator.py --model qwen25-05b --examples 32 --candidates all
    python benchmarks/bench_evaluator.py --model llama31-8b --layers 4 --examples 8
    python benchmarks/bench_evaluator.py --device cuda --model llama31-8b --examples 500

One round from the full model: candidate ℓ removes layer ℓ alone (all layers, or an evenly
spread subset with `--candidates K`). For each it times

  (a) the reference pattern (the authors' tool): one example at a time, the prompt tokenized
      again for every candidate, no KV cache, logits of every position;
  (b) our plain batched forward: `Evaluator.evaluate` (length-sorted batches, logits_to_keep=1)
      with `shared_prefix=False`;
  (b+) (b) with the shared prompt prefix (the default): the tokens every prompt starts with
      run once per candidate, the rows attend to them from a KV cache;
  (c) the engine as a worker runs it: `PrefixReuse` over (b+), told the round's base (as the
      coordinator tells workers): the base's hidden states are captured once at the first
      candidate, each candidate starts at its dropped layer;
  (d) real model only: (c) plus exact early termination against the round's incumbent
      (data-dependent, so reported apart from (c), which is not).

Printed per mode: seconds per candidate×example, the ratio to (a), and the ratio to the FLOP
floor: the analytic FLOPs of one plain forward of the candidate (`tale_opt.cost`, prompts
unpadded, logits of the last position) divided by the rate of a large `torch.matmul` of the
model's dtype measured in the same run. Because (c) runs the candidates of a subset only, it
also prints a whole-round estimate: the seconds of (c) fitted against the layers each candidate
ran, applied to every candidate of the round. Not a test: timings depend on the machine and
its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from bench_setup import add_model_arguments, load, matmul_rate, sync

from tale_opt.cost.flops import count_flops
from tale_opt.evaluation.evaluator import Evaluator, PreparedSplit
from tale_opt.evaluation.prefix_reuse import PrefixReuse
from tale_opt.evaluation.results import compare_results
from tale_opt.model.surgery import decoder_layers, dropped_layers
from tale_opt.types import DropSet

ROUND_BASE = DropSet()  # every candidate of the first round extends the full model


class LayerPasses:
    """Token×layer passes of the decoder layers (data-independent cost of a mode)."""

    def __init__(self, model: Any) -> None:
        self.tokens = 0
        self.handles = [
            layer.register_forward_hook(self._count) for layer in decoder_layers(model)
        ]

    def _count(self, _module: Any, args: tuple[Any, ...], _output: Any) -> None:
        self.tokens += args[0].shape[0] * args[0].shape[1]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def reference_pattern(
    evaluator: Evaluator,
    prepared: PreparedSplit,
    encode: Callable[[int], Sequence[int]],
    drop: DropSet,
    n_examples: int,
) -> tuple[float, list[int]]:
    """Seconds, and the predicted label of each of the first n examples."""
    model, device = evaluator.model, evaluator.device
    picks = []
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), dropped_layers(model, drop):
        for i in range(n_examples):
            ids = torch.tensor([list(encode(i))], device=device)
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=0).logits
            last = logits[0, -1].float()
            scores = [last[list(ids_)].max().item() for ids_ in prepared.label_ids[i]]
            picks.append(max(range(len(scores)), key=lambda k: (scores[k], -k)))
    sync(device)
    return time.perf_counter() - start, picks


def timed(evaluate: Callable[[DropSet], Any], drop: DropSet, device: torch.device,
          passes: LayerPasses) -> tuple[float, Any, int]:  # fmt: skip
    """Seconds, result, and token x layer passes of one candidate."""
    before = passes.tokens
    sync(device)
    start = time.perf_counter()
    result = evaluate(drop)
    sync(device)
    return time.perf_counter() - start, result, passes.tokens - before


def with_capture_timer(evaluator: Evaluator, spent: list[float]) -> None:
    """Record the seconds of each base capture (one forward of the base over the split)."""
    capture = evaluator.prefix_cache

    def timed_capture(*args: Any, **kwargs: Any) -> Any:
        sync(evaluator.device)
        start = time.perf_counter()
        cache = capture(*args, **kwargs)
        sync(evaluator.device)
        spent.append(time.perf_counter() - start)
        return cache

    evaluator.prefix_cache = timed_capture  # type: ignore[method-assign]


def early_terminated(reuse: PrefixReuse) -> Callable[[DropSet], Any]:
    """(c) plus exact early termination against this round's best complete candidate so far."""
    from searchers.base import Searcher

    incumbent: list[tuple[DropSet, int]] = []

    def evaluate(drop: DropSet) -> Any:
        def bound(max_correct: int) -> bool:
            return not incumbent or Searcher.can_still_win(drop, max_correct, *incumbent[0])

        result = reuse.evaluate(drop, base=ROUND_BASE, race=lambda state: bound(state.max_correct))
        if result.complete and (not incumbent or bound(result.n_correct)):
            incumbent[:] = [(drop, result.n_correct)]
        return result

    return evaluate


def candidate_layers(spec: str, num_layers: int) -> list[int]:
    if spec == "all":
        return list(range(num_layers))
    if "," in spec:
        return sorted({int(x) for x in spec.split(",")})
    k = min(int(spec), num_layers)
    return sorted({min(num_layers - 1, int((i + 0.5) * num_layers / k)) for i in range(k)})


def layers_run(reuse: PrefixReuse, drop: DropSet, num_layers: int) -> int:
    """Decoder layers candidate `drop` (one layer) runs in (c): those above its start point."""
    start = reuse.cache.start_layer(drop) if reuse.cache is not None else None
    return num_layers - 1 - (start or 0)


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of seconds = a + b * layers_run."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0, my / mx
    b = sum((x - mx) * (y - my) for x, y in points) / var
    return my - b * mx, b


def whole_round_estimate(out: SimpleNamespace, drops: list[DropSet], num_layers: int) -> None:
    """Seconds per candidate of (c) over a whole round (all L candidates): its measured seconds
    (capture taken out) fitted as a + b * layers run, applied to each of the L candidates, plus
    the measured capture. Sets `out.whole_round` (None without a cache) and `out.fit`."""
    reuse = out.reuse
    out.whole_round = None
    if reuse.cache is None or len(out.captures) != 1:
        return
    seconds = list(out.secs["c"])
    seconds[0] -= out.captures[0]  # the first candidate captured the base
    points = [(layers_run(reuse, d, num_layers), s) for d, s in zip(drops, seconds, strict=True)]
    a, b = fit_line(points)
    every = [layers_run(reuse, DropSet((layer,)), num_layers) for layer in range(num_layers)]
    out.fit, out.round_layers = (a, b), every
    out.whole_round = (out.captures[0] + sum(a + b * k for k in every)) / num_layers


def measure(split: tuple, drops: list[DropSet], args: Any) -> SimpleNamespace:
    """Run (a)-(d) on the round's candidates `drops`; seconds, results and pass counts.

    The modes take turns candidate by candidate, so a change in machine load hits them alike.
    """
    plain, shared, plain_split, shared_split, encode = split
    device, n = plain.device, len(plain_split)
    out = SimpleNamespace(captures=[], early=[], agree=[], secs={m: [] for m in "ab+cd"}, n=n)
    for evaluator, prepared in ((plain, plain_split), (shared, shared_split)):
        warm = dataclasses.replace(
            prepared, examples=prepared.examples[:2], prompt_ids=prepared.prompt_ids[:2],
            label_ids=prepared.label_ids[:2],
        )  # fmt: skip
        evaluator.evaluate(warm, drops[0])  # first-call allocations stay out of the timings
    out.ref_drops, out.ref_n = drops[: args.ref_candidates], min(args.ref_examples, n)
    with_capture_timer(shared, out.captures)
    out.reuse = PrefixReuse(shared, shared_split, args.prefix_cache_gb)
    early = None
    if args.model == "smollm2" and "d" in args.modes:
        early = early_terminated(PrefixReuse(shared, shared_split, args.prefix_cache_gb))
    passes = LayerPasses(plain.model)
    tokens = {m: 0 for m in "b+c"}
    results: dict[str, list[Any]] = {m: [] for m in "b+c"}
    modes = {
        "b": lambda d: plain.evaluate(plain_split, d),
        "+": lambda d: shared.evaluate(shared_split, d),
        "c": lambda d: out.reuse.evaluate(d, base=ROUND_BASE),
    }
    modes = {mode: run for mode, run in modes.items() if mode in args.modes}
    for k, drop in enumerate(drops):
        if k < len(out.ref_drops):
            seconds, picks = reference_pattern(plain, plain_split, encode, drop, out.ref_n)
            out.secs["a"].append(seconds)
            out.ref_picks = getattr(out, "ref_picks", []) + [picks]
        for mode, evaluate in modes.items():
            seconds, result, used = timed(evaluate, drop, device, passes)
            out.secs[mode].append(seconds)
            results[mode].append(result)
            tokens[mode] += used
        if early is not None:
            captured = len(out.captures)
            seconds, result, _ = timed(early, drop, device, passes)
            out.secs["d"].append(seconds)
            out.early.append(result)
            del out.captures[captured:]  # (d)'s own capture is not (c)'s
    passes.close()
    out.tokens = tokens
    check_results(out, results)
    whole_round_estimate(out, drops, plain.model.config.num_hidden_layers)
    ref_runs = len(out.ref_drops) * out.ref_n
    per = len(drops) * n
    names = {"b": "(b) batched, plain", "+": "(b+) batched + shared prefix",
             "c": "(c) engine: (b+) + prefix reuse"}  # fmt: skip
    out.rows = [("(a) reference pattern", sum(out.secs["a"]) / ref_runs,
                 f"{len(out.ref_drops)} cand x {out.ref_n} ex")]  # fmt: skip
    out.rows += [(names[m], sum(out.secs[m]) / per, "as listed") for m in modes]
    if out.whole_round is not None and len(drops) < plain.model.config.num_hidden_layers:
        out.rows.append(("(c) whole round, estimated", out.whole_round / n, "model, see below"))
    if early is not None:
        out.rows.append(("(d) engine + early termination", sum(out.secs["d"]) / per,
                         "data-dependent"))  # fmt: skip
    return out


def check_results(out: SimpleNamespace, results: dict[str, list[Any]]) -> None:
    """(c) is bit-identical to (b+); (b+) picks what (b) picks, its scores equal to rounding."""
    out.max_diff, out.same_picks = 0.0, None
    if results["+"] and results["b"]:
        out.same_picks = True
    out.reuse_identical = all(
        compare_results(ours, theirs).bit_identical
        for ours, theirs in zip(results["c"], results["+"], strict=False)
    )
    assert out.reuse_identical, "prefix reuse changed a result"
    for ours, theirs in zip(results["+"], results["b"], strict=False):
        diff = compare_results(ours, theirs)
        out.same_picks &= not diff.different_predictions
        out.max_diff = max(out.max_diff, diff.max_abs_diff)
    out.agree = statistics.mean(
        pick == p.prediction
        for picks, res in zip(out.ref_picks, results["b"] or results["c"], strict=False)
        for pick, p in zip(picks, res.predictions, strict=False)
    )


def report(out: SimpleNamespace, floor: float, gflop: float, ref_gflop: float,
           num_layers: int, n_drops: int, n: int) -> None:  # fmt: skip
    ref = out.rows[0][1]
    print(f"\nFLOP floor: {gflop:.2f} GFLOP per candidate x example (one plain forward) = "
          f"{floor * 1e3:.2f} ms; (a)'s all-position logits make its own workload "
          f"{ref_gflop:.2f} GFLOP")  # fmt: skip
    print(f"{'mode':34s} {'ms/cand x ex':>12s} {'vs (a)':>8s} {'vs floor':>9s}  candidates run")
    for name, seconds, on in out.rows:
        print(f"{name:34s} {seconds * 1e3:12.2f} {ref / seconds:7.1f}x "
              f"{seconds / floor:8.2f}x  {on}")  # fmt: skip
    versus = "(b)" if out.tokens["b"] else "(c)"
    print(f"\n(a) picks the same label as {versus} on {out.agree:.0%} of the examples it ran")
    if out.same_picks is not None:
        print(f"(b+) picks {'the same' if out.same_picks else 'NOT the same'} labels as (b) "
              f"(max |score difference| {out.max_diff:.1e}); (c) is bit-identical to (b+) "
              "(checked)")  # fmt: skip
    cache = out.reuse.cache
    held = f"{cache.nbytes / 2**30:.3f} GiB, stride {cache.stride}" if cache else "none"
    print(f"(c) {len(out.captures)} base capture(s), {sum(out.captures):.2f} s (included in (c)); "
          f"cache {held}")  # fmt: skip
    b, shared, engine = out.tokens["b"], out.tokens["+"], out.tokens["c"]
    if b and shared:
        print(f"token x layer passes on these {n_drops} candidates (data-independent): shared "
              f"prefix {shared / b:.3f} of (b); prefix reuse {engine / shared:.3f} of (b+); "
              f"both {engine / b:.3f}")  # fmt: skip
    if out.whole_round is not None:
        a, slope = out.fit
        plain_round = num_layers * (num_layers - 1)
        print(f"  a whole round of {num_layers} candidates: {num_layers + sum(out.round_layers)} "
              f"vs {plain_round} layer passes per row (capture included) = "
              f"{(num_layers + sum(out.round_layers)) / plain_round:.3f}; seconds of (c) fitted "
              f"as {a:.3f} + {slope:.4f} x layers run")  # fmt: skip
    if out.early:
        seen = sum(r.n_examples if r.complete else r.n_seen for r in out.early)
        stopped = sum(not r.complete for r in out.early)
        print(f"(d) early termination scored {seen} of {n_drops * n} candidate x examples "
              f"({stopped} of {n_drops} candidates stopped); data-dependent, and a subset of "
              "candidates has fewer rivals than a whole round")  # fmt: skip


def figures(out: SimpleNamespace, floor: float, gflop: float, num_layers: int,
            n_drops: int) -> dict[str, Any]:  # fmt: skip
    """What `report` prints, as plain JSON values (for `--json`)."""
    ref = out.rows[0][1]
    modes = [
        {"mode": name, "on": on, "seconds_per_candidate_example": seconds,
         "vs_reference": ref / seconds, "vs_floor": seconds / floor}
        for name, seconds, on in out.rows
    ]  # fmt: skip
    b, shared, engine = out.tokens["b"], out.tokens["+"], out.tokens["c"]
    cache = out.reuse.cache
    found: dict[str, Any] = {
        "floor_seconds_per_candidate_example": floor,
        "gflop_per_candidate_example": gflop,
        "modes": modes,
        "reference_agreement": out.agree,
        "shared_prefix_same_picks": out.same_picks,
        "shared_prefix_max_abs_diff": out.max_diff,
        "prefix_reuse_bit_identical": out.reuse_identical,
        "base_captures": len(out.captures),
        "base_capture_seconds": sum(out.captures),
        "cache_gib": cache.nbytes / 2**30 if cache else None,
        "cache_stride": cache.stride if cache else None,
        "token_passes": {"b": b, "b+": shared, "c": engine},
        "whole_round": None,
    }
    if out.whole_round is not None:
        passes = num_layers + sum(out.round_layers)
        found["whole_round"] = {
            "candidates": num_layers,
            "seconds_per_candidate_example": out.whole_round / out.n,
            "vs_floor": out.whole_round / out.n / floor,
            "layer_passes_vs_plain": passes / (num_layers * (num_layers - 1)),
            "measured_candidates": n_drops,
        }
    return found


def write_json(path: str, setup: dict[str, Any], found: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"setup": setup, "figures": found}, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--candidates", default="6", help="K (evenly spread), 'all', or a,b,c")
    parser.add_argument("--ref-examples", type=int, default=12,
                        help="examples the slow reference pattern runs per candidate")  # fmt: skip
    parser.add_argument("--ref-candidates", type=int, default=2)
    parser.add_argument("--prefix-cache-gb", type=float, default=4.0)
    parser.add_argument("--modes", default="ab+cd",
                        help="modes to run besides (a) and (c), e.g. 'ac' with --candidates all "
                        "to measure a whole round of the engine")  # fmt: skip
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the setup and the printed figures to PATH")  # fmt: skip
    args = parser.parse_args()
    args.modes += "ac"
    load_before = os.getloadavg()[0]
    split, dtype_name = load(args)
    device = split[0].device
    if args.model == "smollm2":
        shapes = (f"real SmolLM2-135M-Instruct weights, ARC-Easy prompts (chat template, "
                  f"{args.fewshot}-shot)")  # fmt: skip
    else:
        shapes = f"random-init, real {args.model} per-layer shapes, random token prompts"
    plain, _, prepared, shared_split, _ = split
    config = plain.model.config
    num_layers = config.num_hidden_layers
    if args.layers is not None:
        shapes += f"; TRUNCATED to the first {num_layers} layers (per-layer shapes are real)"
    drops = [DropSet((layer,)) for layer in candidate_layers(args.candidates, num_layers)]
    lengths, n = [len(p) for p in prepared.prompt_ids], len(prepared)
    rate = matmul_rate(getattr(torch, dtype_name), device)
    print(f"device {device} ({torch.get_num_threads()} threads), {dtype_name}, {shapes}")
    print(f"{num_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}; {n} "
          f"prompts of {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}"
          f"), {shared_split.shared_len} shared by all; batch {args.batch_size}; candidates "
          f"remove layer {[d.layers[0] for d in drops]} ({len(drops)} of the round's "
          f"{num_layers})")  # fmt: skip
    print(f"matmul rate ({dtype_name}, 2048^3): {rate / 1e9:.1f} GFLOP/s; "
          f"load average before: {load_before:.2f}")  # fmt: skip
    out = measure(split, drops, args)
    flops = statistics.mean(count_flops(config, d, lengths, logits_kept=1).total for d in drops)
    ref_flops = statistics.mean(
        count_flops(config, d, lengths[: out.ref_n], logits_kept=None).total for d in out.ref_drops
    )
    report(out, flops / n / rate, flops / n / 1e9, ref_flops / out.ref_n / 1e9,
           num_layers, len(drops), n)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        setup = {
            "device": str(device), "dtype": dtype_name, "model": args.model, "shapes": shapes,
            "layers": num_layers, "hidden_size": config.hidden_size,
            "vocab_size": config.vocab_size, "examples": n, "prompt_tokens": [min(lengths),
            max(lengths), statistics.mean(lengths)], "shared_tokens": shared_split.shared_len,
            "batch_size": args.batch_size, "candidates": [d.layers[0] for d in drops],
            "reference_candidates": len(out.ref_drops), "reference_examples": out.ref_n,
            "modes": args.modes, "prefix_cache_gb": args.prefix_cache_gb,
            "matmul_gflops": rate / 1e9, "threads": torch.get_num_threads(),
        }  # fmt: skip
        write_json(args.json, setup, figures(out, flops / n / rate, flops / n / 1e9,
                                             num_layers, len(drops)))  # fmt: skip


if __name__ == "__main__":
    main()
