"""Seconds per example of greedy generation: the reference pattern vs our batched KV-cached path.

    python benchmarks/bench_generation.py                         # SmolLM2, ARC-Easy, 64 tokens
    python benchmarks/bench_generation.py --new-tokens 200 --ref-examples 1
    python benchmarks/bench_generation.py --device cuda --model llama31-8b --examples 64

  (a) the reference pattern (the authors' tool): one example at a time, no KV cache: every new
      token runs the whole sequence again, with the logits of every position;
  (b) ours (`tale_opt.evaluation.scoring.generate_texts`, the decoding of `scoring=generate`):
      length-sorted left-padded batches, HF `generate` with a KV cache, one position per step;
      without the shared prompt prefix (`eval.shared_prefix`), which prompts with long shared
      demonstrations add on top.

Both decode exactly `--new-tokens` tokens (EOS and stop strings are switched off), so the
figures compare the same work; the tokens of (a) and (b) are compared as a check (they can
part ways after a near-tie, since the two do their arithmetic in different orders). The cost of
(a) grows with the square of the tokens generated and (b)'s linearly, so the ratio grows with
`--new-tokens`. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch
from bench_setup import add_model_arguments, load, sync

from tale_opt.evaluation.scoring import generate_texts


def reference_generate(model: Any, prompt: list[int], new_tokens: int, device: Any) -> list[int]:
    """Greedy decoding without a cache: the whole sequence again for every token."""
    ids = list(prompt)
    for _ in range(new_tokens):
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False,
                       logits_to_keep=0).logits  # fmt: skip
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


class TokenTokenizer:
    """Decodes token ids to a space-separated string, so (a) and (b) compare as token lists."""

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, tokens))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--ref-examples", type=int, default=2)
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the setup and the printed figures to PATH")  # fmt: skip
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    (plain, _, prepared, _, _), dtype = load(args)
    device = plain.device
    model, prompts = plain.model, [list(p) for p in prepared.prompt_ids]
    model.generation_config.eos_token_id = None  # decode exactly --new-tokens tokens
    lengths = [len(p) for p in prompts]
    print(f"device {device} ({torch.get_num_threads()} threads), {dtype}, {args.model} "
          f"({model.config.num_hidden_layers} layers); {len(prompts)} prompts of "
          f"{min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}); "
          f"{args.new_tokens} new tokens; batch {args.batch_size}; load average before: "
          f"{load_before:.2f}")  # fmt: skip

    def ours(rows: list[list[int]]) -> list[str]:
        return generate_texts(
            model, TokenTokenizer(), rows, max_new_tokens=args.new_tokens,
            batch_size=args.batch_size, pad_id=plain.pad_id, eos_ids=frozenset(),
            device=device, progress=lambda _n: None,
        )  # fmt: skip

    with torch.inference_mode():
        ours(prompts[:2])  # warm-up: first-call allocations stay out of the timings
        sync(device)
        start = time.perf_counter()
        texts = ours(prompts)
        sync(device)
        ours_s = (time.perf_counter() - start) / len(prompts)
        n_ref = min(args.ref_examples, len(prompts))
        sync(device)
        start = time.perf_counter()
        ref_tokens = [
            reference_generate(model, p, args.new_tokens, device) for p in prompts[:n_ref]
        ]
        sync(device)
        ref_s = (time.perf_counter() - start) / n_ref
    same = [" ".join(map(str, tokens)) == texts[i] for i, tokens in enumerate(ref_tokens)]
    print(f"{'mode':38s} {'s/example':>10s} {'vs (a)':>8s}  examples")
    print(f"{'(a) reference: batch 1, no KV cache':38s} {ref_s:10.3f} {1:7.1f}x  {n_ref}")
    print(f"{'(b) ours: batched, KV cache':38s} {ours_s:10.3f} {ref_s / ours_s:7.1f}x  "
          f"{len(prompts)}")  # fmt: skip
    print(f"(a) and (b) produced identical tokens on {sum(same)} of {n_ref} examples; "
          f"load average after: {os.getloadavg()[0]:.2f}")  # fmt: skip
    if args.json:
        setup = {
            "device": str(device), "dtype": dtype, "model": args.model,
            "layers": model.config.num_hidden_layers, "examples": len(prompts),
            "prompt_tokens": [min(lengths), max(lengths), statistics.mean(lengths)],
            "new_tokens": args.new_tokens, "batch_size": args.batch_size,
            "reference_examples": n_ref, "threads": torch.get_num_threads(),
        }  # fmt: skip
        figures = {
            "reference_seconds_per_example": ref_s,
            "ours_seconds_per_example": ours_s,
            "speedup_vs_reference": ref_s / ours_s,
            "identical_tokens": sum(same),
            "compared_examples": n_ref,
        }
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "figures": figures}, f, indent=2)


if __name__ == "__main__":
    main()
