"""The three scoring passes over length-sorted, left-padded batches.

Each pass returns one raw outcome per input row, in the caller's order; turning outcomes into
predictions (parsing, correctness) is the evaluator's job. All passes assume they run under
`torch.inference_mode()` with the model already in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from tale_opt.evaluation.batching import length_sorted_batches

Progress = Callable[[int], None]  # called with the number of rows just finished

TokenIds = Sequence[int]


def _forward_logits(model: nn.Module, batch: Any, keep: int) -> torch.Tensor:
    """Float32 logits of the last `keep` positions, [B, keep, V]."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=keep,  # the lm_head over all positions would dominate small models
        use_cache=False,  # one pass: a KV cache would only cost memory
    )
    return out.logits.float()


def score_labels(
    model: nn.Module,
    prompts: Sequence[TokenIds],
    label_ids: Sequence[Sequence[Sequence[int]]],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    progress: Progress,
) -> list[tuple[float, ...]]:
    """Per prompt, the log-probability of each label at the answer position.

    A label's score is the max over its candidate tokens (``"A"`` and ``" A"``), so a model that
    prefers the spaced form is not penalised.
    """
    scores: list[tuple[float, ...]] = [()] * len(prompts)
    for batch in length_sorted_batches(prompts, batch_size, pad_id):
        logprobs = torch.log_softmax(_forward_logits(model, batch.to(device), 1)[:, -1], -1)
        for r, row in enumerate(batch.rows):
            scores[row] = tuple(logprobs[r, list(ids)].max().item() for ids in label_ids[row])
        progress(len(batch.rows))
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
) -> list[tuple[float, ...]]:
    """Per prompt, the summed log-probability of each continuation (lm-eval `loglikelihood`).

    The continuation's tokens follow the prompt's unchanged tokens. When every continuation of a
    prompt is a single token, the prompt alone costs one forward: by causality the logits at its
    last position are the ones that would score each one-token continuation.
    """
    rows, sequences = _loglik_rows(prompts, continuations)
    scores: list[list[float]] = [[0.0] * len(conts) for conts in continuations]
    for batch in length_sorted_batches(sequences, batch_size, pad_id):
        batch_rows = [rows[k] for k in batch.rows]
        keep = 1 + max(0 if j is None else len(continuations[i][j]) for i, j in batch_rows)
        logits = _forward_logits(model, batch.to(device), keep)
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
    return [tuple(s) for s in scores]


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
) -> list[str]:
    """Per prompt, the greedy continuation decoded to text (new tokens only, up to EOS).

    `generate` derives position ids from the attention mask itself, and uses a KV cache, so
    each new token costs one single-position forward.
    """
    texts: list[str] = [""] * len(prompts)
    for batch in length_sorted_batches(prompts, batch_size, pad_id):
        batch = batch.to(device)
        out = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            do_sample=False,
            # Neutralise sampling knobs from the model's generation_config (they only warn).
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids) or None,
            use_cache=True,
        )
        new_tokens = out[:, batch.input_ids.shape[1] :].tolist()
        for r, row in enumerate(batch.rows):
            tokens = new_tokens[r]
            # Cut at the first EOS ourselves: finished rows are filled with pad_id, which need
            # not be a special token that skip_special_tokens would drop.
            end = next((k for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
            texts[row] = tokenizer.decode(tokens[:end], skip_special_tokens=True)
        progress(len(batch.rows))
    return texts
