"""Task-accuracy evaluation of a (layer-dropped) causal LM: the one evaluator every searcher uses.

Usage::

    evaluator = Evaluator(model, tokenizer, task, scoring="letters", batch_size=32)
    prepared = evaluator.prepare(splits.optimization)  # tokenizes once per run
    result = evaluator.evaluate(prepared, DropSet((3, 7)))  # per candidate; no tokenizer calls

Scoring modes:

* ``generate``: greedy decoding (KV cache) of ``max_new_tokens`` tokens, parsed by the task;
  unparseable text is invalid and wrong. The paper's decoder evaluation.
* ``letters``: argmax over the answer-label tokens at the answer position (one forward, logits
  of the last position only). Never invalid.
* ``loglik``: lm-eval-style summed log-likelihood of each choice's continuation; also reports
  ``accuracy_norm`` (log-likelihood divided by the choice text's length in characters, without
  the separator: lm-evaluation-harness's ``acc_norm``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tale_opt import validate
from tale_opt.errors import UsageError, did_you_mean
from tale_opt.evaluation.prefix import GIB, PREFIX_SCORING, PrefixCache, capture, resumed
from tale_opt.evaluation.prompts import (
    PromptEncoder,
    label_token_ids,
    text_before_first_question,
)
from tale_opt.evaluation.results import EvalResult, Prediction
from tale_opt.evaluation.scoring import (
    Progress,
    StopCondition,
    finished_per_batch,
    generate_texts,
    loglik_sequence_count,
    score_continuations,
    score_labels,
)
from tale_opt.evaluation.shared_prefix import (
    PrefixKV,
    prefix_kv,
    shared_prefix_length,
    supports_shared_prefix,
)
from tale_opt.model.surgery import dropped_layers
from tale_opt.outcomes import Race, RaceState
from tale_opt.tasks.base import Example, Message, Task
from tale_opt.types import DropSet

log = logging.getLogger("tale_opt")

SCORING_MODES = frozenset({"generate", "letters", "loglik"})
_NO_DROP = DropSet()


@dataclass(frozen=True)
class PreparedSplit:
    """Examples tokenized once for one evaluator (and its scoring mode).

    `label_ids` (letters) holds per example, per label, the candidate token ids;
    `continuation_ids` (loglik) holds per example, per choice, the continuation's token ids.
    `shared_len` is how many leading tokens every prompt shares (0: none, or not used); they
    run once per candidate (`tale_opt.evaluation.shared_prefix`), each row runs the rest.
    """

    scoring: str
    examples: tuple[Example, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    label_ids: tuple[tuple[tuple[int, ...], ...], ...] = ()
    continuation_ids: tuple[tuple[tuple[int, ...], ...], ...] = ()
    shared_len: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def n_prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompt_ids)

    @property
    def shared_prefix(self) -> tuple[int, ...]:
        return self.prompt_ids[0][: self.shared_len] if self.shared_len else ()

    @property
    def row_prompt_ids(self) -> tuple[tuple[int, ...], ...]:
        """Each prompt without the shared prefix: what the rows of a batch run."""
        if not self.shared_len:
            return self.prompt_ids
        return tuple(ids[self.shared_len :] for ids in self.prompt_ids)


def _argmax(values: Sequence[float]) -> int:
    # First maximum on ties, so the outcome does not depend on torch's argmax tie rule.
    return max(range(len(values)), key=lambda i: (values[i], -i))


class Evaluator:
    """Scores a task's examples with a causal LM, optionally with decoder layers dropped.

    Args:
        model: A Hugging Face causal LM of a family supported by `tale_opt.model.surgery`.
        tokenizer: Its tokenizer (a chat template is used when present).
        task: The task that renders, labels and parses examples.
        scoring: ``"letters"``, ``"generate"`` or ``"loglik"`` (see the module docstring).
        batch_size: Sequences per forward (``>= 1``); examples for letters/generate,
            (example, choice) pairs for loglik.
        max_new_tokens: Tokens to generate per example in ``generate`` mode (``>= 1``).
        device: Where input tensors go; defaults to the device of the model's first parameter.
        stop_strings: Strings that end a generated reply; None = the task's ``stop_strings``
            (and its ``stop_patterns``, regexes kept up to the end of the match).
        shared_prefix: Run the tokens every prompt starts with once per candidate and attend
            to them from a KV cache (scores equal to rounding; see
            `tale_opt.evaluation.shared_prefix`). Models with sliding-window or hybrid caches
            always run the plain path.
        chat_template: Render prompts with the tokenizer's chat template when it has one;
            False renders plain text (``"Question: ...\nAnswer:"``-style, lm-evaluation-harness's
            default) even for chat models.

    Raises:
        UsageError: An unknown scoring mode, or a batch size / token budget below 1.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: Task,
        *,
        scoring: str = "letters",
        batch_size: int = 32,
        max_new_tokens: int = 1,
        device: torch.device | str | None = None,
        stop_strings: Sequence[str] | None = None,
        shared_prefix: bool = True,
        chat_template: bool = True,
    ) -> None:
        if scoring not in SCORING_MODES:
            raise UsageError(
                f"unknown scoring mode {scoring!r}.{did_you_mean(scoring, SCORING_MODES)}"
            )
        validate.integer(batch_size, "eval.batch_size", minimum=1)
        validate.integer(max_new_tokens, "eval.max_new_tokens", minimum=1)
        validate.boolean(chat_template, "eval.chat_template")
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.chat_template = chat_template
        self.scoring = scoring
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.pad_id = _pad_id(tokenizer)
        self.eos_ids = _eos_ids(model, tokenizer)
        if stop_strings is None:
            stop_strings = getattr(task, "stop_strings", ())
        self.stop = StopCondition(stop_strings, getattr(task, "stop_patterns", ()))
        self.shared_prefix = bool(shared_prefix) and supports_shared_prefix(model)
        self._shown_prompt = False  # the first prompt's opening is logged once (see prepare)

    # -- tokenization, once per run -------------------------------------------------------
    def prepare(self, examples: Sequence[Example], *, split: str = "") -> PreparedSplit:
        """Tokenize `examples` for this evaluator's scoring mode (once per run), checking
        once what would make every candidate's score meaningless.

        Args:
            examples: The split's examples.
            split: Its name (``optimization``, ``held-out``), for error messages.

        Raises:
            UsageError: No examples; a multiple-choice example without labels (letters) or
                with an empty continuation (loglik); one with a single option (every
                configuration would get it right); labels that share a first token; a
                sequence longer than the model's context (`context_length`).
        """
        examples = tuple(examples)
        if not examples:
            raise UsageError("cannot evaluate an empty list of examples")
        encoder = PromptEncoder(self.tokenizer, chat_template=self.chat_template)
        prompt_ids = tuple(tuple(encoder.encode(self.task.messages(ex))) for ex in examples)
        if not self._shown_prompt:
            self._shown_prompt = True
            self._log_prompt(encoder, self.task.messages(examples[0]))
        label_ids: list[tuple[tuple[int, ...], ...]] = []
        continuation_ids: list[tuple[tuple[int, ...], ...]] = []
        if self.scoring == "letters":
            cache: dict[tuple[str, ...], tuple[tuple[int, ...], ...]] = {}
            for i, ex in enumerate(examples):
                labels = tuple(self.task.labels(ex))
                if not labels:
                    raise UsageError(
                        f"example {ex.id!r} has no answer labels; scoring=letters needs a "
                        "multiple-choice task (use scoring=generate for generative tasks)"
                    )
                self._require_two_options(i, ex, len(labels), split)
                if labels not in cache:
                    cache[labels] = label_token_ids(self.tokenizer, labels)
                label_ids.append(cache[labels])
        elif self.scoring == "loglik":
            for i, ex in enumerate(examples):
                conts = tuple(self.task.continuations(ex))
                ids = tuple(self._encode_continuation(ex, c) for c in conts)
                if not ids:
                    raise UsageError(
                        f"example {ex.id!r} has no continuations; scoring=loglik needs a "
                        "multiple-choice task"
                    )
                self._require_two_options(i, ex, len(ids), split)
                continuation_ids.append(ids)
        self._check_context(examples, prompt_ids, continuation_ids, split)
        shared_len = shared_prefix_length(prompt_ids) if self.shared_prefix else 0
        return PreparedSplit(
            self.scoring, examples, prompt_ids, tuple(label_ids), tuple(continuation_ids),
            shared_len,
        )  # fmt: skip

    def _log_prompt(self, encoder: PromptEncoder, messages: Sequence[Message]) -> None:
        """Say once how prompts are rendered, with what the model reads before the first
        question: a chat template may add a system prompt the task never asked for."""
        if encoder.uses_chat_template:
            how = "the tokenizer's chat template (eval.chat_template=false: plain text)"
        else:
            how = "plain text, no chat template"
        head = text_before_first_question(encoder.render(messages), messages)
        log.info("prompts: %s; before the first question the model reads %r", how, head)

    def _where(self, index: int, example: Example, split: str) -> str:
        split = f" of the {split} split" if split else ""
        return f"task {self.task.name!r}: example {index} (id {example.id!r}){split}"

    def _require_two_options(self, index: int, example: Example, n: int, split: str) -> None:
        # With one option every configuration is right, so the example only dilutes the
        # differences the search is looking for.
        if n < 2:
            raise UsageError(
                f"{self._where(index, example, split)} has {n} option(s), but a multiple-choice "
                "question needs at least two (with one, every configuration gets it right); "
                "remove it from the data or give it its options"
            )

    def _check_context(
        self,
        examples: Sequence[Example],
        prompt_ids: Sequence[Sequence[int]],
        continuation_ids: Sequence[Sequence[Sequence[int]]],
        split: str,
    ) -> None:
        """Refuse a sequence the model cannot hold: past its context, positions are ones it
        never saw (or do not exist), so its scores would mean nothing."""
        limit = context_length(self.model, self.tokenizer)
        if limit is None:
            return
        context, source = limit
        for i, (ex, prompt) in enumerate(zip(examples, prompt_ids, strict=True)):
            if self.scoring == "loglik":
                extra = max(len(c) for c in continuation_ids[i])
                what, fix = "of its longest choice", ""
            elif self.scoring == "generate":
                extra, what = self.max_new_tokens, "tokens to generate"
                fix = "lower eval.max_new_tokens, "
            else:
                extra, what, fix = 0, "", ""
            needed = len(prompt) + extra
            if needed <= context:
                continue
            parts = f"{len(prompt)} of prompt" + (f" + {extra} {what}" if extra else "")
            raise UsageError(
                f"{self._where(i, ex, split)} needs {needed} tokens ({parts}), but the model's "
                f"context is {context} tokens ({source}); {fix}show fewer demonstrations "
                "(task.fewshot.k) or use a model with a longer context"
            )

    def _encode_continuation(self, example: Example, text: str) -> tuple[int, ...]:
        # Tokenized on its own (no special tokens) so the prompt's tokens stay exactly those of
        # the other modes; lm-eval does the same.
        ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        if not ids:
            raise UsageError(
                f"example {example.id!r} has a continuation that tokenizes to nothing: {text!r}"
            )
        return ids

    # -- evaluation, once per candidate ---------------------------------------------------
    def evaluate(
        self,
        prepared: PreparedSplit,
        drop: DropSet = _NO_DROP,
        *,
        progress: bool | str = False,
        prefix: PrefixCache | None = None,
        race: Race | None = None,
    ) -> EvalResult:
        """Evaluate the model with the layers in `drop` removed (restored afterwards).

        Args:
            prepared: The output of `prepare` of an evaluator with the same scoring mode.
            drop: Decoder layers (0-based) to remove for this evaluation.
            progress: Show a tqdm bar; a string is used as its description.
            prefix: Hidden states of a base model (`prefix_cache`); used when it was built
                for this split and batching and its base is a strict subset of `drop`, which
                skips the layers below the first extra dropped layer. Never changes a result.
            race: Called before the first batch and after each one with what was scored so far
                (`tale_opt.outcomes.RaceState`: which examples, which of them right); once it
                returns False the evaluation stops and returns a stopped result
                (`EvalResult.complete` False) whose `accuracy` is the upper bound
                ``max_correct / n``. Exact early termination, the racing pruners and the
                learning curve are such hooks. Every scoring mode; batches are never split or
                reordered (the order is fixed by `prepared`, the same for every candidate), so
                the examples scored get exactly the outcomes of a full evaluation.

        Returns:
            The accuracy, invalid rate and per-example predictions in the original order
            (for a stopped evaluation: of the examples scored).
        """
        if prepared.scoring != self.scoring:
            raise UsageError(
                f"the split was prepared for scoring={prepared.scoring!r}, but this evaluator "
                f"scores with {self.scoring!r}; call prepare() on this evaluator"
            )
        n_rows = len(prepared)
        if self.scoring == "loglik":
            n_rows = loglik_sequence_count(prepared.continuation_ids)
        start = time.perf_counter()
        if race is not None and not race(RaceState(len(prepared), {}, 0)):
            return self._result(prepared, [], time.perf_counter() - start)  # lost before it began
        with (
            tqdm(
                total=n_rows,
                desc=progress if isinstance(progress, str) else None,
                unit="seq",
                disable=progress is False,
            ) as bar,
            _eval_mode(self.model),
            dropped_layers(self.model, drop),
            torch.inference_mode(),
        ):
            kv = self._prefix_kv(prepared)  # before the stand-ins: every kept layer is real
            with resumed(self.model, drop, self._usable(prefix, prepared)):
                predictions = self._predict(prepared, bar.update, race, kv)
        return self._result(prepared, predictions, time.perf_counter() - start)

    def batch_order(self, prepared: PreparedSplit) -> list[tuple[int, ...]]:
        """The examples each batch of `evaluate` scores, in order: what its race hook sees
        arrive after each batch (the same for every candidate of a run, so a replay of
        stored outcomes batch by batch races exactly like a live evaluation)."""
        loglik = prepared.continuation_ids if self.scoring == "loglik" else None
        return finished_per_batch(prepared.row_prompt_ids, loglik, self.batch_size)

    def prefix_cache(
        self, prepared: PreparedSplit, base: DropSet, *, budget_gb: float
    ) -> PrefixCache | None:
        """Capture the hidden states of the model without `base` for `evaluate(prefix=...)`.

        Costs one forward over `prepared`. None when the scoring mode is ``generate`` (plain
        path, see `tale_opt.evaluation.prefix`) or `budget_gb` cannot hold one layer's states.
        """
        if self.scoring not in PREFIX_SCORING or budget_gb <= 0:
            return None
        with _eval_mode(self.model):
            return capture(
                self.model, prepared, base, batch_size=self.batch_size, pad_id=self.pad_id,
                device=self.device, budget_bytes=int(budget_gb * GIB),
            )  # fmt: skip

    def _prefix_kv(self, prepared: PreparedSplit) -> PrefixKV | None:
        if not prepared.shared_len:
            return None
        return prefix_kv(self.model, prepared.shared_prefix, self.device)

    def _usable(self, prefix: PrefixCache | None, prepared: PreparedSplit) -> PrefixCache | None:
        if prefix is None or self.scoring not in PREFIX_SCORING:
            return None
        return prefix if prefix.fits(self.model, prepared, self.batch_size, self.pad_id) else None

    def _predict(
        self,
        prepared: PreparedSplit,
        advance: Progress,
        race: Race | None = None,
        kv: PrefixKV | None = None,
    ) -> list[Prediction]:
        """Predictions of the examples scored, in example order: all of them, unless `race`
        stopped the pass after some batch. With `kv` (the shared prefix's keys and values)
        the rows run only their own tokens."""
        examples = prepared.examples
        done: dict[int, Prediction] = {}
        right: dict[int, bool] = {}  # what `race` sees, in the order examples were scored
        correct = 0

        def after_batch(outcomes: dict[int, Any]) -> bool:
            nonlocal correct
            for i, outcome in outcomes.items():
                done[i] = self._judge(examples[i], outcome)
                right[i] = done[i].correct
                correct += done[i].correct
            if race is None:
                return False
            return not race(RaceState(len(examples), right, correct))

        common = {
            "batch_size": self.batch_size,
            "pad_id": self.pad_id,
            "device": self.device,
            "progress": advance,
            "after_batch": after_batch,
        }
        prompts = prepared.row_prompt_ids  # what `kv` does not hold (all when no kv)
        if self.scoring == "generate":
            generate_texts(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=self.max_new_tokens,
                eos_ids=self.eos_ids,
                stop=self.stop,
                kv=kv,
                **common,
            )
        elif self.scoring == "letters":
            score_labels(self.model, prompts, prepared.label_ids, kv=kv, **common)
        else:
            score_continuations(self.model, prompts, prepared.continuation_ids, kv=kv, **common)
        return [done[i] for i in sorted(done)]

    def _judge(self, example: Example, outcome: Any) -> Prediction:
        """One example's prediction from its scoring-pass outcome (text, or choice scores)."""
        task = self.task
        if self.scoring == "generate":
            return _prediction(task, example, task.parse(outcome, example), outcome)
        choice = _argmax(outcome)
        if self.scoring == "letters":
            return _prediction(task, example, choice, task.labels(example)[choice], outcome)
        pred = _prediction(task, example, choice, task.continuations(example)[choice], outcome)
        # Kept per example: `accuracy_norm` ranks by them, the predictions file shows them.
        return replace(pred, norm_scores=normalized_scores(outcome, choice_texts(task, example)))

    def _result(
        self, prepared: PreparedSplit, predictions: list[Prediction], seconds: float
    ) -> EvalResult:
        n, n_seen = len(prepared), len(predictions)
        n_correct = sum(p.correct for p in predictions)
        n_invalid = sum(p.prediction is None for p in predictions)
        if n_seen < n:  # stopped early: the accuracy is the upper bound it stopped at
            return EvalResult(
                scoring=self.scoring,
                accuracy=(n_correct + n - n_seen) / n,
                invalid_rate=n_invalid / max(n_seen, 1),
                n_examples=n,
                n_correct=n_correct,
                n_invalid=n_invalid,
                predictions=predictions,
                seconds=seconds,
                n_seen=n_seen,
            )
        accuracy_norm = None
        if self.scoring == "loglik":
            n_norm = sum(
                _is_correct(self.task, _argmax(pred.norm_scores), ex)
                for ex, pred in zip(prepared.examples, predictions, strict=True)
            )
            accuracy_norm = n_norm / n
        return EvalResult(
            scoring=self.scoring,
            accuracy=n_correct / n,
            invalid_rate=n_invalid / n,
            n_examples=n,
            n_correct=n_correct,
            n_invalid=n_invalid,
            predictions=predictions,
            seconds=seconds,
            accuracy_norm=accuracy_norm,
        )


# transformers sets `model_max_length` to int(1e30) when a tokenizer's files name no limit.
_NO_TOKENIZER_LIMIT = 10**12


def context_length(model: nn.Module, tokenizer: Any) -> tuple[int, str] | None:
    """The most tokens one sequence may hold, and which setting says so; None when neither
    does.

    Both the model's ``max_position_embeddings`` and the tokenizer's ``model_max_length``
    count where they are real (the tokenizer's is often an "unset" placeholder); where both
    are, the smaller wins: either one marks lengths the model was not trained on.
    """
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append((positions, "max_position_embeddings"))
    tokens = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokens, int) and 0 < tokens < _NO_TOKENIZER_LIMIT:
        limits.append((tokens, "tokenizer.model_max_length"))
    return min(limits) if limits else None


def choice_texts(task: Task, example: Example) -> tuple[str, ...]:
    """What `accuracy_norm` measures the length of: each choice's own text, without the
    separator that joins it to the prompt (a multiple-choice example's `choices`), else the
    scored continuation itself."""
    continuations = tuple(task.continuations(example))
    if len(example.choices) == len(continuations):
        return tuple(example.choices)
    return continuations


def normalized_scores(scores: Sequence[float], texts: Sequence[str]) -> tuple[float, ...]:
    """Each choice's log-likelihood per character of its text.

    lm-evaluation-harness's ``acc_norm`` ranks by this: the summed log-likelihood divided by
    the length of the choice text in characters (Unicode code points, not UTF-8 bytes),
    without the separator (``" "``) that precedes it in the scored continuation.
    """
    return tuple(s / max(len(t), 1) for s, t in zip(scores, texts, strict=True))


def normalized_choice(scores: Sequence[float], texts: Sequence[str]) -> int:
    """The choice with the highest `normalized_scores` value (first maximum on ties)."""
    return _argmax(normalized_scores(scores, texts))


def _is_correct(task: Task, prediction: Any | None, example: Example) -> bool:
    # An unparseable output is wrong whatever the task's is_correct says about None.
    return prediction is not None and bool(task.is_correct(prediction, example))


def _prediction(
    task: Task, ex: Example, pred: Any | None, text: str, scores: Sequence[float] = ()
) -> Prediction:
    gold = ex.answer_index if ex.answer_index is not None else ex.answer
    return Prediction(ex.id, pred, gold, _is_correct(task, pred, ex), text, tuple(scores))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the evaluation; the caller's train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _pad_id(tokenizer: Any) -> int:
    # Padding is masked out, so any id works; prefer the tokenizer's own pad, then EOS.
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def _eos_ids(model: nn.Module, tokenizer: Any) -> frozenset[int]:
    """EOS ids from the generation config (Llama-3 lists several) and the tokenizer."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
