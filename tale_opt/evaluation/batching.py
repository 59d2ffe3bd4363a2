"""Length-sorted, left-padded batches.

Sequences are sorted by length, longest first: the first batch is the most expensive one, so an
out-of-memory error shows up at once instead of at the end of a long evaluation; and batches of
similar lengths waste little compute on padding. Left padding puts every sequence's last token
in the last column, where `logits_to_keep` and `generate` read it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """One left-padded batch. `rows` are indices into the sequence list it was built from."""

    rows: tuple[int, ...]
    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 0 on padding
    position_ids: torch.Tensor  # [B, T] long, 0-based positions of the real tokens

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.rows,
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
        )


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Left-pad token id sequences into one batch (rows 0..n-1).

    HF's plain forward numbers positions 0..T-1 whatever the mask (only `generate` derives them
    from the mask), so a padded row would see its first real token at position `n_pad` and its
    rotary embeddings would differ from the unpadded sequence. We pass explicit positions:
    cumsum(mask) - 1, clipped at 0 on the (masked) padding.
    """
    if not sequences:
        raise ValueError("cannot build a batch from no sequences")
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"sequence {i} is empty; every sequence needs at least one token")
        input_ids[i, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[i, width - len(seq) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(tuple(range(len(sequences))), input_ids, attention_mask, position_ids)


def length_sorted_rows(
    sequences: Sequence[Sequence[int]], batch_size: int
) -> list[tuple[int, ...]]:
    """The rows of each batch `length_sorted_batches` builds, in order: indices of at most
    `batch_size` sequences, longest first; ties keep their original order (stable sort), so
    batching is deterministic."""
    if batch_size < 1:
        raise ValueError(f"`batch_size >= 1` must hold, but got batch_size={batch_size}")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    return [tuple(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]


def length_sorted_batches(
    sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int
) -> Iterator[Batch]:
    """Yield left-padded batches of at most `batch_size` sequences, longest first
    (`length_sorted_rows`)."""
    for rows in length_sorted_rows(sequences, batch_size):
        batch = left_pad([sequences[i] for i in rows], pad_id)
        yield Batch(rows, batch.input_ids, batch.attention_mask, batch.position_ids)
