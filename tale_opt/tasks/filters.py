"""Named example filters that carve a sub-task out of a data set (``filter:`` in a task YAML).

``min_premises`` defines GSM8K-Hard: GSM8K questions with more than five premises.

A *premise* is one stated fact of the question, counted like this:

1. The question text is split into sentences at ``.``, ``!`` or ``?`` (optionally followed by a
   closing quote or bracket) followed by whitespace and then an upper-case letter, a digit, a
   quote, ``(`` or ``$``. So ``$2.50``, ``3.5 hours`` and ``$.40`` never split a sentence.
2. Sentences ending in ``?`` ask the question; they are not premises, even when they hold a
   condition ("If she buys 3 more, how many ...?").
3. Every other sentence is split further into clauses at ``;`` and at a comma followed by a
   coordinating conjunction (``, and`` ``, but`` ``, so`` ``, while`` ``, whereas`` ``, yet``
   ``, then``): "He buys 3 apples, and she buys 2." states two facts.
4. The premises are the non-empty clauses; GSM8K-Hard keeps questions with ``more_than: 5``
   of them (6 or more). Of the 1319 GSM8K test questions, 64 pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tale_opt import validate
from tale_opt.errors import UsageError, did_you_mean
from tale_opt.tasks.base import Example
from tale_opt.tasks.templates import check_keys

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'($])")
_CLAUSE_BREAK = re.compile(r";|,\s+(?:and|but|so|while|whereas|yet|then)\s+")


def sentences(text: str) -> list[str]:
    """The sentences of `text` (rule 1 of the module docstring)."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text.strip()) if s.strip()]


def premises(question: str) -> list[str]:
    """The premises of a word problem (rules 1-3 of the module docstring), in order."""
    stated = [s for s in sentences(question) if not s.rstrip("\"')] ").endswith("?")]
    return [c.strip() for s in stated for c in _CLAUSE_BREAK.split(s) if c.strip()]


def _min_premises(options: Mapping[str, Any]) -> Callable[[Example], bool]:
    column, more_than = options["column"], options["more_than"]
    validate.integer(more_than, "task.filter.more_than", minimum=0)

    def keep(example: Example) -> bool:
        return len(premises(str(example.fields.get(column, "")))) > more_than

    return keep


def _integer_answer(options: Mapping[str, Any]) -> Callable[[Example], bool]:
    def keep(example: Example) -> bool:
        return re.fullmatch(r"-?\d+", example.answer or "") is not None

    return keep


# name -> (factory, default options)
_FILTERS: dict[str, tuple[Callable[[Mapping[str, Any]], Callable[[Example], bool]], dict]] = {
    "min_premises": (_min_premises, {"column": "question", "more_than": 5}),
    "integer_answer": (_integer_answer, {}),
}


def build_filter(spec: Mapping[str, Any] | str) -> Callable[[Example], bool]:
    """The keep-predicate a task's ``filter`` node names.

    Raises:
        UsageError: unknown filter name or option.
    """
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name not in _FILTERS:
        raise UsageError(
            f"task.filter.name must name a filter, but got {name!r}."
            + did_you_mean(str(name), _FILTERS)
        )
    factory, defaults = _FILTERS[name]
    check_keys(spec, tuple(defaults), f"task.filter ('{name}')")
    return factory({**defaults, **spec})
