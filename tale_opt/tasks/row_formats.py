"""Named row formats: how a dataset row stores its choices and its gold answer.

Each multiple-choice dataset keeps choices and gold in one of a few shapes. Naming those shapes
lets a task YAML say which one applies (``row_format: {name: labelled_choices, ...}``) instead
of code branching on the task name; a new dataset with a known shape is a YAML change.

=================  =====================================================  ==================
name               row shape                                              examples
=================  =====================================================  ==================
labelled_choices   ``choices: {text: [...], label: [...]}``, gold label   ARC, CommonsenseQA
choice_list        ``choices: [...]``, gold index (int)                   MMLU, oe-eval docs
boolean            gold is a bool; choices are fixed texts (true first)   BoolQ
option_columns     one column per option, gold is one of ``answer_values``  Winogrande
=================  =====================================================  ==================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tale_opt.errors import UsageError, did_you_mean


class RowError(ValueError):
    """A row does not have the shape its row format expects (re-raised with the source)."""


@dataclass(frozen=True)
class Extracted:
    """What a row format reads from one row."""

    choices: tuple[str, ...]
    answer_index: int
    native_labels: tuple[str, ...] = ()  # the dataset's own labels, when it has any


@dataclass(frozen=True)
class RowFormat:
    """A named row shape with its options (column names and constants) and their defaults."""

    name: str
    defaults: Mapping[str, Any]
    column_keys: tuple[str, ...]  # options that name a top-level column the row must have
    extract: Callable[[Mapping[str, Any], Mapping[str, Any]], Extracted]

    def required_columns(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        columns: list[str] = []
        for key in self.column_keys:
            value = options[key]
            columns.extend(value if isinstance(value, list | tuple) else [value])
        return tuple(columns)


def _labelled_choices(row: Mapping[str, Any], opt: Mapping[str, Any]) -> Extracted:
    block = row[opt["choices"]]
    if not isinstance(block, Mapping):
        raise RowError(f"column '{opt['choices']}' must hold {{text: [...], label: [...]}}")
    texts, labels = block.get(opt["text"]), block.get(opt["label"])
    if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
        raise RowError(
            f"'{opt['choices']}.{opt['text']}' and '{opt['choices']}.{opt['label']}' must be "
            f"lists of equal length, but got {texts!r} and {labels!r}"
        )
    gold = str(row[opt["answer"]]).strip()
    labels = [str(label).strip() for label in labels]
    if gold not in labels:
        raise RowError(f"gold label {gold!r} is not one of the choice labels {labels}")
    return Extracted(tuple(str(t) for t in texts), labels.index(gold), tuple(labels))


def _choice_list(row: Mapping[str, Any], opt: Mapping[str, Any]) -> Extracted:
    texts = row[opt["choices"]]
    if not isinstance(texts, list) or not texts:
        raise RowError(f"column '{opt['choices']}' must be a non-empty list, but got {texts!r}")
    raw = row[opt["answer"]]
    try:
        index = int(raw) - int(opt["answer_base"])
    except (TypeError, ValueError):
        raise RowError(f"gold '{opt['answer']}' must be an integer, but got {raw!r}") from None
    if isinstance(raw, bool) or not 0 <= index < len(texts):
        raise RowError(f"gold index {raw!r} is out of range for {len(texts)} choices")
    return Extracted(tuple(str(t) for t in texts), index)


def _boolean(row: Mapping[str, Any], opt: Mapping[str, Any]) -> Extracted:
    raw = row[opt["answer"]]
    # CSV and JSON users write booleans in many ways; accept the unambiguous ones only.
    truthy = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    value = raw if isinstance(raw, bool) else truthy.get(str(raw).strip().lower())
    if value is None:
        raise RowError(f"gold '{opt['answer']}' must be a boolean, but got {raw!r}")
    texts = tuple(str(t) for t in opt["texts"])
    return Extracted(texts, 0 if value else 1)


def _option_columns(row: Mapping[str, Any], opt: Mapping[str, Any]) -> Extracted:
    texts = tuple(str(row[column]) for column in opt["options"])
    values = [str(v) for v in opt["answer_values"]]
    gold = str(row[opt["answer"]]).strip()
    if gold not in values:
        raise RowError(f"gold {gold!r} is not one of answer_values {values}")
    return Extracted(texts, values.index(gold))


ROW_FORMATS: dict[str, RowFormat] = {
    f.name: f
    for f in (
        RowFormat(
            "labelled_choices",
            {"choices": "choices", "text": "text", "label": "label", "answer": "answerKey"},
            ("choices", "answer"),
            _labelled_choices,
        ),
        RowFormat(
            "choice_list",
            {"choices": "choices", "answer": "answer", "answer_base": 0},
            ("choices", "answer"),
            _choice_list,
        ),
        RowFormat(
            "boolean",
            {"answer": "answer", "texts": ["Yes", "No"]},
            ("answer",),
            _boolean,
        ),
        RowFormat(
            "option_columns",
            {"options": ["option1", "option2"], "answer": "answer", "answer_values": ["1", "2"]},
            ("options", "answer"),
            _option_columns,
        ),
    )
}

# Options every format accepts: `name` picks the format, `id` names the id column (a row without
# it gets a content hash as id).
_COMMON_DEFAULTS: dict[str, Any] = {"id": "id"}


def resolve_row_format(spec: Mapping[str, Any] | str) -> tuple[RowFormat, dict[str, Any]]:
    """The row format named in `spec` and its options with defaults filled in.

    Args:
        spec: ``{"name": "labelled_choices", "answer": "answerKey", ...}`` or just the name.

    Raises:
        UsageError: unknown format name or unknown option for that format.
    """
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name not in ROW_FORMATS:
        raise UsageError(
            f"task.row_format.name must name a row format, but got {name!r}."
            + did_you_mean(str(name), ROW_FORMATS)
        )
    fmt = ROW_FORMATS[name]
    allowed = {**_COMMON_DEFAULTS, **fmt.defaults}
    for key in spec:
        if key not in allowed:
            raise UsageError(
                f"task.row_format has an option {key!r} that row format '{name}' does not take."
                + did_you_mean(key, allowed)
            )
    options = {**allowed, **spec}
    if name == "boolean" and len(options["texts"]) != 2:
        raise UsageError(
            f"row format 'boolean' needs texts: [<true text>, <false text>], "
            f"but got {options['texts']!r}"
        )
    if name == "option_columns" and len(options["options"]) != len(options["answer_values"]):
        raise UsageError(
            "row format 'option_columns' needs one answer value per option column, but got "
            f"options={options['options']!r} and answer_values={options['answer_values']!r}"
        )
    return fmt, options
