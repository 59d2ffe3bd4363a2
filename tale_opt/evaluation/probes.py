"""The probes that read text instead of scoring a task: perplexity, Block Influence, angular
distance. One `ProbeRunner` per worker turns a candidate into an `Observation`.

Which text they read is the study's ``text`` spec (`searchers.options.check_text`, stored in
the study config): the packaged LAMBADA passages, a local file, or the task's own text (the
optimization split's prompts with their gold replies, `perplexity.task_texts`). The text is
tokenized once, on the first candidate that needs it, and reused for every later one.

Observations:

* ``perplexity``: score = -perplexity (higher is better), metrics `PerplexityResult.metrics`;
* ``block_influence``: score 0 (a description of the model, not a score); metrics
  ``bi.<layer>`` (`tale_opt.types.block_influence_key`) for every layer of the probed model;
* ``angular_distance``: score 0; metrics ``angular.<n>.<layer>``
  (`tale_opt.types.angular_distance_key`) = d(layer, n) for every block of the probed model.

Layer keys are indices in the full model. Probing a model with layers dropped is allowed: its
kept layers are then keyed by their original indices, and ``n`` counts kept layers.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from tale_opt.errors import UsageError, did_you_mean
from tale_opt.evaluation.hidden_states import HiddenStateStats, hidden_state_stats, truncate_texts
from tale_opt.evaluation.perplexity import (
    PreparedText,
    evaluate_perplexity,
    prepare_text,
    task_texts,
)
from tale_opt.evaluation.prompts import has_chat_template
from tale_opt.model.surgery import num_decoder_layers
from tale_opt.tasks.base import Example, Task
from tale_opt.types import (
    ANGULAR_DISTANCE,
    BLOCK_INFLUENCE,
    PERPLEXITY,
    TEXT_PROBES,
    Candidate,
    Observation,
    angular_distance_key,
    block_influence_key,
)


def load_probe_texts(
    text: Mapping[str, Any],
    *,
    tokenizer: Any,
    task: Task | None = None,
    examples: Sequence[Example] = (),
    chat_template: bool = True,
) -> tuple[list[str], bool]:
    """The documents of a normalized text spec, and whether to add special tokens to them.

    `chat_template` (``eval.chat_template``) renders ``source: task`` text like the task's
    prompts: through the tokenizer's chat template, or as plain text when False.

    Raises:
        UsageError: ``source: task`` without a task, or unreadable text.
    """
    from tale_opt.tasks.text import file_texts, lambada_texts

    source, limit = text["source"], text.get("limit")
    if source == "lambada":
        return lambada_texts(limit), True
    if source == "file":
        return file_texts(str(text["path"]), text.get("column", "text"), limit), True
    if source == "task":
        if task is None or not examples:
            raise UsageError("probe text `source: task` needs the task's optimization split")
        texts = task_texts(task, list(examples)[:limit], tokenizer, chat_template=chat_template)
        # Chat-templated text already carries its special tokens.
        return texts, not (chat_template and has_chat_template(tokenizer))
    raise UsageError(f"unknown probe text source {source!r}; use lambada, task or file")


class ProbeRunner:
    """Evaluates the text-reading probes of candidates on one model.

    Args:
        model, tokenizer: The loaded model (shared with the task evaluator).
        text: A normalized text spec (keys of `searchers.options.TEXT_DEFAULTS`).
        task, examples: The task and its optimization split (for ``source: task``).
        batch_size: Windows / texts per forward.
        chat_template: Render ``source: task`` text with the chat template (as the task's
            prompts are, see ``eval.chat_template``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        text: Mapping[str, Any],
        *,
        task: Task | None = None,
        examples: Sequence[Example] = (),
        batch_size: int = 8,
        chat_template: bool = True,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.chat_template = chat_template
        self.text = dict(text)
        self.task, self.examples = task, tuple(examples)
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.num_layers = num_decoder_layers(model)

    @functools.cached_property
    def _texts(self) -> tuple[list[str], bool]:
        return load_probe_texts(
            self.text, tokenizer=self.tokenizer, task=self.task, examples=self.examples,
            chat_template=self.chat_template,
        )  # fmt: skip

    @functools.cached_property
    def windows(self) -> PreparedText:
        """The perplexity probe's input, tokenized once."""
        texts, special = self._texts
        return prepare_text(
            self.tokenizer, texts, max_length=self.text["max_length"],
            stride=self.text["stride"], add_special_tokens=special,
        )  # fmt: skip

    @functools.cached_property
    def sequences(self) -> tuple[tuple[int, ...], ...]:
        """The hidden-state probes' input: each text's first `max_length` tokens."""
        texts, special = self._texts
        return truncate_texts(
            self.tokenizer, texts, max_length=self.text["max_length"], add_special_tokens=special
        )

    def __call__(self, candidate: Candidate) -> Observation:
        if candidate.probe == PERPLEXITY:
            res = evaluate_perplexity(
                self.model, self.windows, candidate.drop, pad_id=self.pad_id,
                batch_size=self.batch_size,
            )  # fmt: skip
            return Observation(candidate, res.score, res.metrics())
        if candidate.probe in (BLOCK_INFLUENCE, ANGULAR_DISTANCE):
            stats = hidden_state_stats(
                self.model, self.sequences, candidate.drop, pad_id=self.pad_id,
                batch_size=self.batch_size,
            )  # fmt: skip
            kept = candidate.drop.kept(self.num_layers)
            if candidate.probe == BLOCK_INFLUENCE:
                metrics = block_influence_metrics(stats, kept)
            else:
                metrics = angular_distance_metrics(stats, kept)
            metrics.update(n_tokens=float(stats.n_tokens), seconds=stats.seconds)
            return Observation(candidate, 0.0, metrics)
        hint = did_you_mean(candidate.probe, TEXT_PROBES)
        raise UsageError(f"unknown probe {candidate.probe!r}.{hint}")


def block_influence_metrics(stats: HiddenStateStats, kept: Sequence[int]) -> dict[str, float]:
    """``bi.<original layer>`` for every probed layer."""
    return {block_influence_key(kept[j]): bi for j, bi in enumerate(stats.block_influence)}


def angular_distance_metrics(stats: HiddenStateStats, kept: Sequence[int]) -> dict[str, float]:
    """``angular.<n>.<original first layer>`` = d(layer, n) for every block of kept layers."""
    return {
        angular_distance_key(kept[j], n): stats.angular(j, n)
        for n in range(1, stats.num_layers + 1)
        for j in range(stats.num_layers - n + 1)
    }
