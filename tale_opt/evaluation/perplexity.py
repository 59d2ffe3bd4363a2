"""Perplexity probe: token-weighted perplexity of documents, with decoder layers dropped.

Usage::

    prepared = prepare_text(tokenizer, lambada_texts(500), max_length=512, stride=256)
    result = evaluate_perplexity(model, prepared, DropSet((3, 7)), pad_id=tokenizer.pad_token_id)
    result.score  # -perplexity: higher is better, like every probe's score

Each document is tokenized once (with the tokenizer's special tokens). A document longer than
`max_length` is read through overlapping windows that advance by `stride` tokens (the Hugging
Face "perplexity of fixed-length models" recipe): every token is scored exactly once, by the
window in which it has the most left context, and the first token of a document (no context)
is never scored (nor, when ``stride == max_length``, the first token of each later window).
The perplexity is ``exp(sum of token NLLs / number of scored tokens)`` over all
documents: longer documents weigh more, as each token counts once.

Windows of all documents are batched together (length-sorted, left-padded, explicit positions),
so batched and one-by-one results agree up to float rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tale_opt.errors import UsageError
from tale_opt.evaluation.batching import length_sorted_batches
from tale_opt.evaluation.prompts import PromptEncoder
from tale_opt.model.surgery import dropped_layers
from tale_opt.tasks.base import Example, Task
from tale_opt.types import DropSet

_NO_DROP = DropSet()


@dataclass(frozen=True)
class Window:
    """One forward pass: `ids`, of which the last `n_scored` tokens are scored."""

    ids: tuple[int, ...]
    n_scored: int


@dataclass(frozen=True)
class PreparedText:
    """Documents tokenized and cut into windows, once per run."""

    windows: tuple[Window, ...]
    n_documents: int
    max_length: int
    stride: int

    @property
    def n_scored(self) -> int:
        return sum(w.n_scored for w in self.windows)


@dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted perplexity of one configuration."""

    nll_sum: float
    n_tokens: int
    seconds: float = 0.0

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def score(self) -> float:
        """``-perplexity``: the higher-is-better score searchers compare."""
        return -self.perplexity

    def metrics(self) -> dict[str, float]:
        return {
            "perplexity": self.perplexity,
            "mean_nll": self.mean_nll,
            "n_tokens": float(self.n_tokens),
            "seconds": self.seconds,
        }


def windows_of(ids: Sequence[int], max_length: int, stride: int) -> list[Window]:
    """Sliding windows over one document's token ids (see the module docstring)."""
    windows: list[Window] = []
    scored_until = 1  # token 0 has no context and is never scored
    for begin in range(0, max(len(ids) - 1, 1), stride):
        end = min(begin + max_length, len(ids))
        # A window's first token has no context inside it (matters only when stride ==
        # max_length: that token then stays unscored).
        n_scored = min(end - scored_until, end - begin - 1)
        if n_scored > 0:
            windows.append(Window(tuple(ids[begin:end]), n_scored))
            scored_until = end
        if end == len(ids):
            break
    return windows


def prepare_text(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 512,
    stride: int = 256,
    add_special_tokens: bool = True,
) -> PreparedText:
    """Tokenize `texts` and cut them into windows.

    Args:
        tokenizer: A Hugging Face tokenizer.
        texts: The documents.
        max_length: Tokens per window (at most the model's context length).
        stride: How far consecutive windows of a long document advance (``<= max_length``);
            smaller strides give every token more context and cost more forwards.
        add_special_tokens: Let the tokenizer add BOS etc.; False for text that already
            carries them (`task_texts` rendered with a chat template).

    Raises:
        UsageError: bad lengths, or no document with at least two tokens.
    """
    if max_length < 2 or not 1 <= stride <= max_length:
        raise UsageError(
            f"`2 <= max_length` and `1 <= stride <= max_length` must hold, but got "
            f"max_length={max_length}, stride={stride}"
        )
    windows: list[Window] = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        windows += windows_of(ids, max_length, stride)
    if not windows:
        raise UsageError("perplexity needs at least one document of two or more tokens")
    return PreparedText(tuple(windows), len(texts), max_length, stride)


def evaluate_perplexity(
    model: nn.Module,
    prepared: PreparedText,
    drop: DropSet = _NO_DROP,
    *,
    pad_id: int = 0,
    batch_size: int = 4,
    device: torch.device | str | None = None,
) -> PerplexityResult:
    """Token-weighted perplexity of the model with the layers in `drop` removed.

    Args:
        model: A causal LM of a family `tale_opt.model.surgery` supports.
        prepared: The output of `prepare_text`.
        drop: Decoder layers (0-based) to remove for this evaluation (restored afterwards).
        pad_id: Any token id (padding is masked out).
        batch_size: Windows per forward.
        device: Where inputs go; defaults to the device of the model's first parameter.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    start = time.perf_counter()
    sequences = [w.ids for w in prepared.windows]
    nll_sum = 0.0
    was_training = model.training
    model.eval()
    try:
        with dropped_layers(model, drop), torch.inference_mode():
            for batch in length_sorted_batches(sequences, batch_size, pad_id):
                scored = [prepared.windows[i].n_scored for i in batch.rows]
                keep = max(scored) + 1
                batch = batch.to(device)
                logits = model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    logits_to_keep=keep,
                    use_cache=False,
                ).logits
                for r, n in enumerate(scored):
                    # Logits at position t predict token t+1: -(n+1)..-2 score the last n.
                    pred = logits[r, -(n + 1) : -1].float()
                    target = batch.input_ids[r, -n:].to(pred.device)
                    nll_sum += F.cross_entropy(pred, target, reduction="sum").item()
    finally:
        model.train(was_training)
    return PerplexityResult(nll_sum, prepared.n_scored, time.perf_counter() - start)


def task_texts(
    task: Task, examples: Sequence[Example], tokenizer: Any, *, chat_template: bool = True
) -> list[str]:
    """A task's own text: each example's prompt (rendered as the evaluator renders it:
    chat template unless `chat_template` is False, demonstrations included) with the ideal
    reply (`Task.target`) appended as the assistant's answer.

    With a chat template the text already carries its special tokens: prepare it with
    ``prepare_text(..., add_special_tokens=not PromptEncoder(...).uses_chat_template)``.
    """
    encoder = PromptEncoder(tokenizer, chat_template=chat_template)
    texts = []
    for example in examples:
        prompt = encoder.render(task.messages(example))
        # A chat template ends in the assistant header; plain text ends in "Answer:".
        joiner = "" if encoder.uses_chat_template else " "
        texts.append(prompt + joiner + task.target(example))
    return texts
