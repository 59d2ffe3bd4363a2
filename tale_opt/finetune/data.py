"""Training data for a fine-tune: disjoint from everything the search and the evaluation use,
rendered in the task's own prompt format, with the loss on the answer tokens only.

Where the examples come from:

* ``finetune.data.source`` (e.g. a task's official train split, for users online): that source,
  read with the task's row format;
* otherwise the task's own pool -- the single source of a one-source task, the optimization
  source of a two-source task (never the evaluation source). None of the nine tasks' offline
  packages ships a train split, so this is the offline default.

Either way every item of the search's optimization split, held-out split and few-shot
demonstrations is left out, by id and by normalized content, and the rest is drawn with its own
seeded stream: a third part that never changes the search's two (`splits.draw_disjoint_part`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.evaluation.prompts import PromptEncoder
from tale_opt.finetune.settings import TrainingData
from tale_opt.tasks.base import Example, Splits
from tale_opt.tasks.registry import build_task, load_pools
from tale_opt.tasks.splits import draw_disjoint_part

IGNORE_INDEX = -100  # label of a token the loss skips (the prompt), as PyTorch's cross entropy
SEARCH_PARTS = ("optimization", "evaluation", "fewshot")


@dataclass(frozen=True)
class TrainingSequence:
    """One training example as tokens: the prompt, then the answer; `labels` masks the prompt."""

    example_id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def answer_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def search_parts(splits: Splits) -> dict[str, Sequence[Example]]:
    """The parts of a search's splits that training must never see."""
    return {
        "optimization": splits.optimization,
        "evaluation": splits.evaluation,
        "fewshot": splits.fewshot,
    }


def training_examples(
    task_cfg: Mapping[str, Any], splits: Splits, seed: int, data: TrainingData
) -> tuple[list[Example], dict[str, Any]]:
    """Draw the training examples of a fine-tune: none of them is in `splits` (id or content).

    Args:
        task_cfg: The task config node (the search's, so the pool is the one it drew from).
        splits: The search's splits, as `load_splits` draws them for its seed and sizes.
        seed: Draws the training part (its own stream: the search's parts do not move).
        data: How many examples, and from which source.

    Returns:
        The examples (with the task's demonstrations attached when `data.demos`), and a
        description of where they came from, for the summary.

    Raises:
        UsageError: Too few examples left, or an unreadable source.
    """
    task = build_task(task_cfg)
    if data.source is not None:
        cfg = {k: v for k, v in task_cfg.items() if k not in ("source", "sources", "fewshot")}
        pool = load_pools({**cfg, "source": dict(data.source)}, task)["shared"]
        origin = "finetune.data.source"
    else:
        pools = load_pools(task_cfg, task)
        pool = pools["shared"] if "shared" in pools else pools["optimization"]
        origin = "the task's pool" if "shared" in pools else "the task's optimization source"
    parts = search_parts(splits)
    drawn = draw_disjoint_part(
        pool, data.n_train, parts, seed, task.content_key, stream="train",
        too_few=f"finetune.data.n_train={{k}} but {origin} has only {{available}} examples "
        "outside the search's optimization, held-out and few-shot parts; lower "
        "finetune.data.n_train (null: all of them) or set finetune.data.source",
    )  # fmt: skip
    if data.demos and splits.fewshot:
        drawn = [replace(e, demos=tuple(splits.fewshot)) for e in drawn]
    info = {
        "origin": origin,
        "source": dict(data.source) if data.source else None,
        "pool_size": len(pool),
        "n_train": len(drawn),
        "excluded_parts": {name: len(part) for name, part in parts.items()},
        "demos": bool(data.demos and splits.fewshot),
        "ids": [e.id for e in drawn],
    }
    return drawn, info


def answer_text(task: Any, example: Example, scoring: str, plain: bool) -> str:
    """What the model should produce after the prompt, as the evaluator will read it.

    loglik scores the gold choice's continuation, letters the gold label's token, generate a
    reply that is parsed; plain-text prompts end in ``"Answer:"``, so a reply there starts
    with a space, as the demonstrations' replies do.
    """
    if example.answer_index is not None and scoring == "loglik":
        return task.continuations(example)[example.answer_index]
    if example.answer_index is not None and scoring == "letters":
        label = task.labels(example)[example.answer_index]
        return f" {label}" if plain else label
    reply = task.target(example)
    return f" {reply}" if plain else reply


def encode_training(
    task: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    scoring: str,
    chat_template: bool,
    max_length: int,
) -> tuple[list[TrainingSequence], int]:
    """Tokenize examples as prompt + answer, the prompt rendered exactly as the evaluator
    renders it (same chat template decision, same tokens), the answer as it is scored.

    `generate` answers end with the end-of-sequence token, so the model learns to stop.

    Returns:
        The sequences that fit in `max_length` tokens, and how many were left out.

    Raises:
        UsageError: No example fits, or an answer tokenizes to nothing.
    """
    encoder = PromptEncoder(tokenizer, chat_template=chat_template)
    plain = not encoder.uses_chat_template
    sequences: list[TrainingSequence] = []
    too_long = 0
    for example in examples:
        prompt = encoder.encode(task.messages(example))
        answer = list(tokenizer.encode(answer_text(task, example, scoring, plain),
                                       add_special_tokens=False))  # fmt: skip
        if not answer:
            raise UsageError(f"training example {example.id!r} has an empty answer")
        if scoring == "generate" and tokenizer.eos_token_id is not None:
            answer.append(int(tokenizer.eos_token_id))
        if len(prompt) + len(answer) > max_length:
            too_long += 1
            continue
        ids = tuple(prompt) + tuple(answer)
        labels = (IGNORE_INDEX,) * len(prompt) + tuple(answer)
        sequences.append(TrainingSequence(example.id, ids, labels))
    if not sequences:
        raise UsageError(
            f"none of the {len(examples)} training examples fits in finetune.data.max_length="
            f"{max_length} tokens (prompt + answer); raise it"
        )
    return sequences, too_long


class SequenceCollator:
    """Pads a batch of `TrainingSequence`s on the right (training runs whole sequences from
    position 0, so right padding keeps every position id as in evaluation)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[TrainingSequence]) -> dict[str, Any]:
        import torch

        width = max(len(s.input_ids) for s in batch)
        ids, labels, mask = [], [], []
        for s in batch:
            pad = width - len(s.input_ids)
            ids.append(list(s.input_ids) + [self.pad_id] * pad)
            labels.append(list(s.labels) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(s.input_ids) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }
