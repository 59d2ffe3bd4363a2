"""Named answer parsers of generative tasks: gold extraction, output parsing, comparison.

A generative task's YAML names one (``answer: {name: gsm8k}``); nothing branches on the task
name. Each parser turns

* a row's gold column into a normalized gold answer (`gold`) and a demonstration reply
  (`demo`, the assistant turn of a few-shot example),
* a model's output into a normalized answer, or None when it states none (`parse`; counted as
  invalid, never guessed),

and decides whether two normalized answers agree (`equal`).

==========  ==========================================  ========================================
name        gold column                                 output parsing
==========  ==========================================  ========================================
gsm8k       worked solution ending ``#### 1,234``       first ``#### N``; ``extract: flexible``
            (or a bare number)                          (default) then a boxed number, then
                                                        "the answer is N", then the last number
math        solution with ``\\boxed{...}`` (or the       ``format: boxed`` (default): last
            bare answer)                                ``\\boxed{}``, then ``#### X``, then "final
                                                        answer is X"; ``format: integer`` (the
                                                        paper's): last ``#### N``, digits only
boolean     ``True``/``False`` (bool or text)           the whole reply, a leading verdict,
                                                        "answer is X", a restated expression
                                                        ending "is X", or the only one of
                                                        True/False it mentions
==========  ==========================================  ========================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from tale_opt.errors import UsageError, did_you_mean
from tale_opt.tasks import math_answers
from tale_opt.tasks.templates import check_keys

# A number as written in word problems: 1234, 1,234, -3, 2.50, .5, $18.
_NUMBER = r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\.\d+"
_WRAPPERS = "*_`\"' "


class GoldError(ValueError):
    """A row's gold column holds no usable answer (re-raised as a UsageError with the row)."""


@dataclass(frozen=True)
class AnswerParser:
    """One named answer convention (see the module docstring)."""

    name: str
    gold: Callable[[Any], str]
    demo: Callable[[Any, str], str]
    parse: Callable[[str], str | None]
    equal: Callable[[str, str], bool]
    # How many answers are possible (True/False: 2); 0 = free-form, where guessing scores ~0.
    n_options: int = 0


def canonical_number(text: str) -> str | None:
    """``"$1,234.50"`` -> ``"1234.5"``; None when `text` is not one number."""
    cleaned = text.strip().strip(_WRAPPERS).rstrip(".").replace("$", "").replace(",", "")
    try:
        value = Decimal(cleaned.replace(" ", ""))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _numbers_equal(a: str, b: str) -> bool:
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return a == b


def _boxed_number(text: str) -> str | None:
    """A boxed number (``\\boxed{18}``, ``\\boxed{\\frac{1}{2}}``) as ``"18"`` / ``"0.5"``."""
    boxed = math_answers.last_boxed(text)
    value = math_answers.to_number(math_answers.normalize(boxed)) if boxed else None
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    decimal = Decimal(value.numerator) / Decimal(value.denominator)
    return canonical_number(str(decimal)) if Fraction(decimal) == value else str(value)


# -- GSM8K ----------------------------------------------------------------------------------


def _gsm8k_gold(value: Any) -> str:
    text = str(value)
    tail = text.rsplit("####", 1)[-1]
    number = canonical_number(tail)
    if number is None:
        raise GoldError(f"expected a solution ending '#### <number>' or a number, got {text!r}")
    return number


def _gsm8k_demo(value: Any, gold: str) -> str:
    text = str(value)
    # GSM8K solutions carry calculator annotations (<<48/2=24>>) no model should imitate.
    text = re.sub(r"<<[^<>]*>>", "", text).strip()
    return text if "####" in text else f"{text}\n#### {gold}"


def _gsm8k_parse(flexible: bool) -> Callable[[str], str | None]:
    def parse(text: str) -> str | None:
        marked = re.search(r"####\s*(" + _NUMBER + ")", text)
        if marked:
            return canonical_number(marked.group(1))
        if not flexible:
            return None
        boxed = _boxed_number(text)
        if boxed is not None:
            return boxed
        phrase = re.search(r"(?i)answer is[:\s]*\**\s*(" + _NUMBER + ")", text)
        if phrase:
            return canonical_number(phrase.group(1))
        numbers = re.findall(_NUMBER, text)
        return canonical_number(numbers[-1]) if numbers else None

    return parse


# -- MATH -----------------------------------------------------------------------------------


def _math_gold(value: Any) -> str:
    text = str(value)
    boxed = math_answers.last_boxed(text)
    answer = math_answers.normalize(boxed if boxed is not None else text)
    if not answer:
        raise GoldError(f"expected a solution with \\boxed{{answer}} or an answer, got {text!r}")
    return answer


def _math_parse(integer_only: bool) -> Callable[[str], str | None]:
    def parse(text: str) -> str | None:
        marked = re.findall(r"####[ \t]*([^\n]*)", text)
        if integer_only:
            if not marked:
                return None
            value = marked[-1].strip().rstrip(".")
            return value if re.fullmatch(r"-?\d+", value) else None
        found = math_answers.last_boxed(text)
        if found is None and marked:
            found = marked[-1]
        if found is None:
            found = math_answers.final_answer_phrase(text)
        if found is None:
            return None
        return math_answers.normalize(found) or None

    return parse


def _math_demo(integer_only: bool) -> Callable[[Any, str], str]:
    def demo(value: Any, gold: str) -> str:
        return f"{value}\n#### {gold}" if integer_only else str(value)

    return demo


# -- boolean ---------------------------------------------------------------------------------


def _boolean_gold(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    text = str(value).strip()
    if text.casefold() not in ("true", "false"):
        raise GoldError(f"expected True or False, got {value!r}")
    return text.capitalize()


def _boolean_parse(text: str) -> str | None:
    cleaned = text.strip().strip(_WRAPPERS).rstrip(".!").strip(_WRAPPERS)
    if cleaned.casefold() in ("true", "false"):
        return cleaned.capitalize()
    # A leading verdict closed by a period or line break: "False. Because ...".
    lead = re.match(r"(?i)(true|false)(?:[.!]|\s*\n)", cleaned)
    if lead:
        return lead.group(1).capitalize()
    phrase = re.findall(
        r"(?i)(?:answer is|evaluates to|result is|=)[:\s]*\**\s*(true|false)\b", text
    )
    if phrase:
        return phrase[-1].capitalize()
    # The expression restated, then its value: "not ( True ) and ( True ) is False".
    closing = re.search(r"(?i)\bis\s+\**(true|false)\**\W*$", text)
    if closing:
        return closing.group(1).capitalize()
    mentioned = {m.capitalize() for m in re.findall(r"(?i)\b(true|false)\b", text)}
    return mentioned.pop() if len(mentioned) == 1 else None


# -- registry --------------------------------------------------------------------------------


def _gsm8k(options: Mapping[str, Any]) -> AnswerParser:
    parse = _gsm8k_parse(flexible=options["extract"] == "flexible")
    return AnswerParser("gsm8k", _gsm8k_gold, _gsm8k_demo, parse, _numbers_equal)


def _math(options: Mapping[str, Any]) -> AnswerParser:
    integer_only = options["format"] == "integer"
    return AnswerParser(
        "math", _math_gold, _math_demo(integer_only), _math_parse(integer_only),
        math_answers.equivalent,
    )  # fmt: skip


def _boolean(options: Mapping[str, Any]) -> AnswerParser:
    return AnswerParser(
        "boolean", _boolean_gold, lambda _, gold: gold, _boolean_parse, str.__eq__, n_options=2
    )


# name -> (factory, default options); an option's allowed values are in _CHOICES.
_PARSERS: dict[str, tuple[Callable[[Mapping[str, Any]], AnswerParser], dict[str, Any]]] = {
    "gsm8k": (_gsm8k, {"extract": "flexible"}),
    "math": (_math, {"format": "boxed"}),
    "boolean": (_boolean, {}),
}
_CHOICES = {"extract": ("flexible", "strict"), "format": ("boxed", "integer")}
ANSWER_PARSERS = tuple(_PARSERS)


def build_answer_parser(spec: Mapping[str, Any] | str | None) -> AnswerParser:
    """The answer parser a task config names, e.g. ``{"name": "math", "format": "integer"}``.

    Raises:
        UsageError: unknown parser name, option, or option value.
    """
    spec = {"name": spec} if isinstance(spec, str) else dict(spec or {})
    name = spec.pop("name", None)
    if name not in _PARSERS:
        raise UsageError(
            f"task.answer.name must name an answer parser, but got {name!r}."
            + did_you_mean(str(name), _PARSERS)
        )
    factory, defaults = _PARSERS[name]
    check_keys(spec, tuple(defaults), f"task.answer (parser '{name}')")
    options = {**defaults, **spec}
    for key, value in options.items():
        if value not in _CHOICES[key]:
            raise UsageError(f"task.answer.{key} must be one of {_CHOICES[key]}, got {value!r}")
    return factory(options)
