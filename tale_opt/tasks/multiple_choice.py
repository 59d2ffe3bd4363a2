"""One generic multiple-choice task: rows -> Examples, Examples -> chat messages, text -> score.

Everything dataset-specific (which columns hold the choices and the gold answer, the prompt
wording, the label set) comes from configuration, so ARC, MMLU, BoolQ, CommonsenseQA and
Winogrande are the same class with different YAML.

Display labels are assigned by position by default (A, B, C, ...), so an ARC item whose data
labels are 1-4 is shown and scored as A-D; ``label_source: dataset`` shows the data's own labels
where the row format has them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.tasks.answer_parsing import parse_choice
from tale_opt.tasks.base import Example, Message
from tale_opt.tasks.fewshot import FewShotSpec, build_messages
from tale_opt.tasks.row_formats import RowError, resolve_row_format
from tale_opt.tasks.sources import require_columns
from tale_opt.tasks.templates import (
    SCORING_KEYS,
    check_keys,
    content_id,
    normalize,
    short_hash,
    system_prompt,
)
from tale_opt.tasks.templates import template_fields as _template_fields

LABEL_SOURCES = ("position", "dataset")
SCORING_MODES = ("generate", "letters", "loglik")
PROMPT_KEYS = (
    "system",
    "user",
    "choice_format",
    "choice_separator",
    "labels",
    "label_source",
    "continuation_prefix",
    "target",
)
# Template placeholders filled by the task itself, not by row columns.
RESERVED_FIELDS = ("choices",)
DEFAULT_LABELS = tuple("ABCDEFGHIJKLMNOPQRST")
TARGETS = ("label", "text")


@dataclass(frozen=True)
class PromptSpec:
    """Everything that shapes a multiple-choice prompt (all of it enters `prompt_version`).

    Attributes:
        user: ``str.format`` template of the user turn; placeholders are row columns plus
            ``{choices}`` (the rendered option lines).
        system: System prompt, or None for no system turn (so are ``""`` and blank text, see
            `system_prompt`). Used verbatim (no placeholders).
        choice_format: Format of one option line, with ``{label}`` and ``{text}``.
        choice_separator: Joins the option lines.
        labels: Display labels, assigned to choices by position.
        label_source: ``position`` (labels above) or ``dataset`` (the row's own labels when its
            row format has them, else by position).
        continuation_prefix: Prepended to each choice text for log-likelihood scoring.
        target: What a few-shot demonstration answers with: ``label`` (the gold letter, for
            prompts that list the options) or ``text`` (the gold choice's text, for cloze
            prompts that do not).
    """

    user: str
    system: str | None = None
    choice_format: str = "{label}. {text}"
    choice_separator: str = "\n"
    labels: tuple[str, ...] = DEFAULT_LABELS
    label_source: str = "position"
    continuation_prefix: str = " "
    target: str = "label"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise UsageError(
                f"task.prompt.target must be one of {TARGETS}, but got {self.target!r}"
            )
        object.__setattr__(self, "system", system_prompt(self.system))
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        if self.label_source not in LABEL_SOURCES:
            raise UsageError(
                f"task.prompt.label_source must be one of {LABEL_SOURCES}, "
                f"but got {self.label_source!r}"
            )
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise UsageError(f"task.prompt.labels must be unique and non-empty: {self.labels}")
        _template_fields(self.choice_format, "task.prompt.choice_format", {"label", "text"})


class MultipleChoiceTask:
    """A multiple-choice task driven by a row format and a prompt spec.

    Args:
        name: Task name (used in run names and study fingerprints).
        prompt: How examples are rendered.
        row_format: Default row format spec (``{"name": ..., <options>}``); a source may
            bring its own when its rows have a different shape.
        scoring: Optional task-specific scoring defaults for the evaluator (``mode``: one
            of generate, letters, loglik; ``max_new_tokens``; ``stop`` strings; ``stop_patterns``
            regexes). The ``eval`` config group reads them as its defaults.
        fewshot: How demonstrations are laid out (zero-shot by default).
    """

    def __init__(
        self,
        name: str,
        prompt: PromptSpec,
        row_format: Mapping[str, Any],
        scoring: Mapping[str, Any] | None = None,
        fewshot: FewShotSpec | None = None,
    ) -> None:
        self.name = name
        self.prompt = prompt
        self.row_format = dict(row_format)
        resolve_row_format(self.row_format)  # validate early, before any data is read
        self.scoring = dict(scoring or {})
        check_keys(self.scoring, SCORING_KEYS, "task.scoring")
        if "mode" in self.scoring and self.scoring["mode"] not in SCORING_MODES:
            raise UsageError(
                f"task.scoring.mode must be one of {SCORING_MODES}, "
                f"but got {self.scoring.get('mode')!r}"
            )
        self.stop_strings = tuple(str(s) for s in self.scoring.get("stop") or ())
        self.stop_patterns = tuple(str(s) for s in self.scoring.get("stop_patterns") or ())
        self.fewshot = fewshot or FewShotSpec()
        self.template_fields = _template_fields(prompt.user, "task.prompt.user")
        spec = asdict(prompt)
        if spec["target"] == "label":  # the default keeps the versions prompts always had
            del spec["target"]
        shaped: dict[str, Any] = {"prompt": spec, "rows": self.row_format}
        if self.stop_strings or self.stop_patterns:
            # Not the prompt, but where a reply ends changes what is scored: same role.
            shaped["stop"] = [self.stop_strings, self.stop_patterns]
        if self.fewshot.version():  # zero-shot keeps the version it always had
            shaped["fewshot"] = self.fewshot.version()
        self.prompt_version = short_hash(shaped)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> MultipleChoiceTask:
        """A task from its validated config node (see `tale_opt.tasks.registry`)."""
        prompt_cfg = dict(cfg.get("prompt") or {})
        check_keys(prompt_cfg, PROMPT_KEYS, "task.prompt")
        if not prompt_cfg.get("user"):
            raise UsageError(
                "task.prompt.user (the user-turn template) is required, e.g. "
                "'{question}\\n{choices}'"
            )
        if "labels" in prompt_cfg:
            labels = prompt_cfg["labels"]
            # Accept "ABCD" as shorthand for [A, B, C, D].
            prompt_cfg["labels"] = tuple(labels) if isinstance(labels, str) else labels
        if not cfg.get("row_format"):
            raise UsageError("task.row_format is required, e.g. {name: labelled_choices}")
        row_format = cfg["row_format"]
        return cls(
            name=cfg["name"],
            prompt=PromptSpec(**prompt_cfg),
            row_format={"name": row_format} if isinstance(row_format, str) else dict(row_format),
            scoring=cfg.get("scoring"),
            fewshot=FewShotSpec.from_config(cfg.get("fewshot")),
        )

    # -- data -----------------------------------------------------------------------------

    def to_examples(
        self,
        rows: Sequence[Mapping[str, Any]],
        origin: str,
        row_format: Mapping[str, Any] | None = None,
    ) -> list[Example]:
        """Turn source rows into Examples, checking columns and gold answers.

        Args:
            rows: Rows from `sources.load_rows`.
            origin: Where the rows came from, for error messages and `Example.meta`.
            row_format: The source's own row format spec, if it differs from the task's.

        Raises:
            UsageError: a row lacks a needed column, has fewer than two choices, or its gold
                answer is not a choice.
        """
        fmt, options = resolve_row_format(row_format or self.row_format)
        template_columns = [f for f in self.template_fields if f not in RESERVED_FIELDS]
        require_columns(rows, [*fmt.required_columns(options), *template_columns], origin)
        # The gold column stays out of `fields`, so a prompt can never show the answer.
        if options["answer"] in template_columns:
            raise UsageError(
                f"task.prompt.user uses {{{options['answer']}}}, the gold answer column; "
                f"remove it from the template"
            )
        hidden = {options["answer"]}
        examples = []
        for index, row in enumerate(rows):
            try:
                extracted = fmt.extract(row, options)
            except RowError as err:
                raise UsageError(
                    f"source {origin} row {index} (id {row.get(options['id'])!r}) does not fit "
                    f"row format '{fmt.name}': {err}"
                ) from None
            if len(extracted.choices) < 2:
                # With one option every configuration gets the question right (with none,
                # wrong), so it only dilutes the differences the search is looking for.
                raise UsageError(
                    f"source {origin} row {index} (id {row.get(options['id'])!r}) has "
                    f"{len(extracted.choices)} option(s), but a multiple-choice question needs "
                    "at least two; remove the row or give it its options"
                )
            if len(extracted.choices) > len(self.prompt.labels):
                raise UsageError(
                    f"source {origin} row {index} has {len(extracted.choices)} choices but "
                    f"task.prompt.labels has only {len(self.prompt.labels)}; add labels"
                )
            fields = {k: v for k, v in row.items() if k not in hidden}
            example = Example(
                id="",
                fields=fields,
                choices=extracted.choices,
                answer_index=extracted.answer_index,
                meta={"source": origin, "native_labels": extracted.native_labels},
            )
            native_id = row.get(options["id"])
            if native_id is None or str(native_id) == "":
                # No native id: the content is the identity, so equal items get equal ids.
                native_id = content_id(self.content_key(example))
            examples.append(replace(example, id=str(native_id)))
        return examples

    def content_key(self, example: Example) -> str:
        """Normalized prompt content (template fields + choices), for duplicate detection."""
        columns = (f for f in self.template_fields if f not in RESERVED_FIELDS)
        parts = [normalize(example.fields.get(f, "")) for f in columns]
        parts += [normalize(choice) for choice in example.choices]
        return "\x1f".join(parts)

    # -- Task protocol ----------------------------------------------------------------------

    def messages(self, example: Example) -> list[Message]:
        """Chat messages: the optional system prompt, the example's demonstrations (each
        answered with its gold label), then the rendered user turn."""
        demos = [(self.user_turn(d), self.target(d)) for d in example.demos]
        return build_messages(self.prompt.system, demos, self.user_turn(example), self.fewshot)

    def user_turn(self, example: Example) -> str:
        """The example's user turn: the template filled with its fields and option lines."""
        return self.prompt.user.format(
            **{**example.fields, "choices": self.render_choices(example)}
        )

    def target(self, example: Example) -> str:
        """The gold label, e.g. ``"B"`` (the reply the system prompt asks for), or with
        ``prompt.target: text`` the gold choice's text (cloze prompts)."""
        if example.answer_index is None:
            raise UsageError(f"example {example.id!r} has no gold answer to demonstrate")
        if self.prompt.target == "text":
            return example.choices[example.answer_index]
        return self.labels(example)[example.answer_index]

    def render_choices(self, example: Example) -> str:
        """The option lines, e.g. ``"A. cat\\nB. dog"``."""
        lines = (
            self.prompt.choice_format.format(label=label, text=text)
            for label, text in zip(self.labels(example), example.choices, strict=True)
        )
        return self.prompt.choice_separator.join(lines)

    def labels(self, example: Example) -> tuple[str, ...]:
        """Display labels of the example's choices, in order."""
        native = tuple(example.meta.get("native_labels", ()))
        if self.prompt.label_source == "dataset" and len(native) == len(example.choices):
            return native
        return self.prompt.labels[: len(example.choices)]

    def continuations(self, example: Example) -> tuple[str, ...]:
        """The choice texts with `continuation_prefix`, for log-likelihood scoring."""
        return tuple(self.prompt.continuation_prefix + text for text in example.choices)

    def n_options(self, example: Example) -> int:
        """How many choices the example offers (uniform guessing is right 1 in this many)."""
        return len(example.choices)

    def parse(self, text: str, example: Example) -> int | None:
        """The choice index named by generated text, or None when invalid."""
        return parse_choice(text, self.labels(example), example.choices)

    def is_correct(self, prediction: Any | None, example: Example) -> bool:
        """Whether a parsed prediction (a choice index) is the gold choice."""
        return prediction is not None and prediction == example.answer_index


__all__ = ["MultipleChoiceTask", "PromptSpec"]
