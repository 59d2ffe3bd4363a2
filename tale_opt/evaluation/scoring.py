"""The three scoring passes over length-sorted, left-padded batches.

Each pass returns one raw outcome per input row, in the caller's order; turning outcomes into
predictions (parsing, correctness) is the evaluator's job. All passes assume they run under
`torch.inference_mode()` with the model already in eval mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from tale_opt.evaluation.batching import length_sorted_batches, length_sorted_rows
from tale_opt.evaluation.shared_prefix import PrefixKV, forward

Progress = Callable[[int], None]  # called with the number of rows just finished
# Called after each batch with what the pass returns for the prompts that batch finished
# (prompt index -> outcome); True ends the pass there, the other prompts keep empty outcomes.
AfterBatch = Callable[[dict[int, Any]], bool]

TokenIds = Sequence[int]


def _forward_logits(model: nn.Module, batch: Any, keep: int, kv: PrefixKV | None) -> torch.Tensor:
    """Float32 logits of the last `keep` positions, [B, keep, V] (after the prefix in `kv`)."""
    return forward(model, batch, logits_to_keep=keep, kv=kv).logits.float()


def score_labels(
    model: nn.Module,
    prompts: Sequence[TokenIds],
    label_ids: Sequence[Sequence[Sequence[int]]],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    progress: Progress,
    after_batch: AfterBatch | None = None,
    kv: PrefixKV | None = None,
) -> list[tuple[float, ...]]:
    """Per prompt, the log-probability of each label at the answer position.

    A label's score is the max over its candidate tokens (``"A"`` and ``" A"``), so a model that
    prefers the spaced form is not penalised. With `kv`, `prompts` are what follows the
    shared prefix whose keys and values it holds.
    """
    scores: list[tuple[float, ...]] = [()] * len(prompts)
    for batch in length_sorted_batches(prompts, batch_size, pad_id):
        logprobs = torch.log_softmax(_forward_logits(model, batch.to(device), 1, kv)[:, -1], -1)
        for r, row in enumerate(batch.rows):
            scores[row] = tuple(logprobs[r, list(ids)].max().item() for ids in label_ids[row])
        progress(len(batch.rows))
        if after_batch is not None and after_batch({row: scores[row] for row in batch.rows}):
            break
    return scores


def _shares_context(continuations: Sequence[TokenIds]) -> bool:
    return all(len(c) == 1 for c in continuations)


def _loglik_rows(
    prompts: Sequence[TokenIds], continuations: Sequence[Sequence[TokenIds]]
) -> tuple[list[tuple[int, int | None]], list[list[int]]]:
    """Rows (prompt index, choice index) with their sequences; choice None = prompt alone."""
    rows: list[tuple[int, int | None]] = []
    sequences: list[list[int]] = []
    for i, (prompt, conts) in enumerate(zip(prompts, continuations, strict=True)):
        if _shares_context(conts):
            rows.append((i, None))
            sequences.append(list(prompt))
        else:
            for j, cont in enumerate(conts):
                rows.append((i, j))
                sequences.append([*prompt, *cont])
    return rows, sequences


def loglik_sequences(
    prompts: Sequence[TokenIds], continuations: Sequence[Sequence[TokenIds]]
) -> list[list[int]]:
    """The sequences `score_continuations` runs, in its order (batched the same way)."""
    return _loglik_rows(prompts, continuations)[1]


def finished_per_batch(
    prompts: Sequence[TokenIds],
    continuations: Sequence[Sequence[TokenIds]] | None,
    batch_size: int,
) -> list[tuple[int, ...]]:
    """The prompts each batch of a scoring pass finishes, in order (what its `after_batch`
    is handed): a batch's rows for `score_labels` and `generate_texts` (`continuations`
    None); for `score_continuations`, the prompts whose last row that batch ran (a batch may
    finish none). The same for every candidate of a run: it depends on token counts only."""
    if continuations is None:
        return length_sorted_rows(prompts, batch_size)
    rows, sequences = _loglik_rows(prompts, continuations)
    left = [0] * len(prompts)
    for i, _ in rows:
        left[i] += 1
    finished = []
    for batch in length_sorted_rows(sequences, batch_size):
        done = []
        for k in batch:
            i = rows[k][0]
            left[i] -= 1
            if left[i] == 0:
                done.append(i)
        finished.append(tuple(done))
    return finished


def loglik_sequence_count(continuations: Sequence[Sequence[TokenIds]]) -> int:
    """How many sequences `score_continuations` runs (for progress bars)."""
    return sum(1 if _shares_context(conts) else len(conts) for conts in continuations)


def score_continuations(
    model: nn.Module,
    prompts: Sequence[TokenIds],
    continuations: Sequence[Sequence[TokenIds]],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    progress: Progress,
    after_batch: AfterBatch | None = None,
    kv: PrefixKV | None = None,
) -> list[tuple[float, ...]]:
    """Per prompt, the summed log-probability of each continuation (lm-eval `loglikelihood`).

    The continuation's tokens follow the prompt's unchanged tokens. When every continuation of a
    prompt is a single token, the prompt alone costs one forward: by causality the logits at its
    last position are the ones that would score each one-token continuation. With `kv`, as in
    `score_labels`.
    """
    rows, sequences = _loglik_rows(prompts, continuations)
    scores: list[list[float]] = [[0.0] * len(conts) for conts in continuations]
    rows_left = [0] * len(prompts)  # per prompt, its rows not scored yet
    for i, _ in rows:
        rows_left[i] += 1
    for batch in length_sorted_batches(sequences, batch_size, pad_id):
        batch_rows = [rows[k] for k in batch.rows]
        keep = 1 + max(0 if j is None else len(continuations[i][j]) for i, j in batch_rows)
        logits = _forward_logits(model, batch.to(device), keep, kv)
        log_norm = logits.logsumexp(-1)  # [B, keep]; cheaper than a full log_softmax copy
        targets = batch.input_ids[:, -keep:].to(logits.device)
        for r, (i, j) in enumerate(batch_rows):
            if j is None:
                first = torch.tensor([c[0] for c in continuations[i]], device=logits.device)
                for choice, lp in enumerate((logits[r, -1, first] - log_norm[r, -1]).tolist()):
                    scores[i][choice] = lp
                continue
            n = len(continuations[i][j])
            # Logits at position t predict token t+1: positions -(n+1)..-2 score the last n.
            pred = logits[r, -(n + 1) : -1]
            token_lp = (
                pred.gather(-1, targets[r, -n:, None]).squeeze(-1) - log_norm[r, -(n + 1) : -1]
            )
            scores[i][j] = token_lp.sum().item()
        progress(len(batch.rows))
        if after_batch is not None:
            for i, _ in batch_rows:
                rows_left[i] -= 1
            finished = {i: tuple(scores[i]) for i, _ in batch_rows if rows_left[i] == 0}
            if after_batch(finished):
                break
    return [tuple(s) for s in scores]


class StopCondition:
    """Where a generated reply ends: at a stop string (cut before it) or once a stop pattern
    matches (kept up to the end of the match). Judged on the new text only, never the prompt.

    Args:
        strings: Literal stop strings, e.g. ``"Question:"``.
        patterns: Regular expressions, e.g. ``r"####[^\\n]*\\d[^\\n]*\\n"`` (a finished
            ``#### N`` line).
    """

    def __init__(self, strings: Sequence[str] = (), patterns: Sequence[str] = ()) -> None:
        self.strings = tuple(s for s in strings if s)
        self.patterns = tuple(re.compile(p) for p in patterns)

    def __bool__(self) -> bool:
        return bool(self.strings or self.patterns)

    def cut(self, text: str) -> tuple[str, bool]:
        """`text` up to the earliest stop, and whether a stop was found."""
        ends = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        ends += [m.end() for m in (p.search(text) for p in self.patterns) if m]
        return (text[: min(ends)], True) if ends else (text, False)


class _StopCriteria(StoppingCriteria):
    """Per row: finished once its new tokens contain a stop (rows are independent, so a row
    stops at the same token whatever else is in its batch)."""

    def __init__(self, tokenizer: Any, stop: StopCondition, prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.prompt_width :].tolist()
        done = [self.stop.cut(self._decode(row))[1] for row in new]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _decode(self, tokens: list[int]) -> str:
        # Decoded as the final text is, so a stop found here is found there too.
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def generate_texts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[TokenIds],
    *,
    max_new_tokens: int,
    batch_size: int,
    pad_id: int,
    eos_ids: frozenset[int],
    device: torch.device,
    progress: Progress,
    stop: StopCondition | None = None,
    after_batch: AfterBatch | None = None,
    kv: PrefixKV | None = None,
) -> list[str]:
    """Per prompt, the greedy continuation decoded to text (new tokens only, up to EOS or the
    first stop of `stop`).

    `generate` derives position ids from the attention mask itself, and uses a KV cache, so
    each new token costs one single-position forward. A batch ends early once every row has
    hit EOS or a stop. With `kv`, `prompts` are what follows the shared prefix it holds: the
    batch is ``[prefix | padding | row]`` and prefill runs only the rows' tokens.
    """
    stop = stop or StopCondition()
    texts: list[str] = [""] * len(prompts)
    for batch in length_sorted_batches(prompts, batch_size, pad_id):
        batch = batch.to(device)
        input_ids, attention_mask, cache = batch.input_ids, batch.attention_mask, None
        if kv is not None:
            rows = input_ids.shape[0]
            input_ids = torch.cat([kv.ids.expand(rows, -1), input_ids], dim=1)
            attention_mask = kv.attention_mask(attention_mask)
            cache = kv.for_batch(rows)
        width = input_ids.shape[1]
        criteria = StoppingCriteriaList([_StopCriteria(tokenizer, stop, width)] if stop else [])
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=cache,
            do_sample=False,
            # Neutralise sampling knobs from the model's generation_config (they only warn).
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids) or None,
            stopping_criteria=criteria,
            use_cache=True,
        )
        new_tokens = out[:, width:].tolist()
        for r, row in enumerate(batch.rows):
            tokens = new_tokens[r]
            # Cut at the first EOS ourselves: finished rows are filled with pad_id, which need
            # not be a special token that skip_special_tokens would drop.
            end = next((k for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
            text = tokenizer.decode(tokens[:end], skip_special_tokens=True)
            texts[row] = stop.cut(text)[0]
        progress(len(batch.rows))
        if after_batch is not None and after_batch({row: texts[row] for row in batch.rows}):
            break
    return texts
