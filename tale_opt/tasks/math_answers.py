"""Final answers of competition math (MATH / MATH-500): find them, normalize them, compare them.

Written for this project, after the conventions of the MATH and Minerva evaluations: the answer
is the content of the last ``\\boxed{...}`` (nested braces allowed), normalized so that
notational variants compare equal:

* layout only: ``\\left``/``\\right``, spacing commands (``\\!``, ``\\,``, ``\\;``, ``~``), ``$``,
  ``\\displaystyle``, whitespace, a trailing period;
* synonyms: ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\frac12`` -> ``\\frac{1}{2}``;
  ``\\sqrt2`` -> ``\\sqrt{2}``; ``10,\\!080`` -> ``10080``; ``.5`` -> ``0.5``; ``(C)`` -> ``C``;
* decoration: degrees (``^\\circ``), percent signs, dollar signs, a trailing unit in
  ``\\text{...}``/``\\mbox{...}``, and a leading one-letter ``x =``; a whole-answer
  ``\\text{Evelyn}`` is unwrapped to ``Evelyn``.

Two answers are equal when their normalized strings are, or when both parse as exact rational
numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``, with a sign) that are equal, so
``0.5`` == ``\\frac{1}{2}`` == ``1/2``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_TEXT_COMMAND = r"\\(?:text|textbf|textit|textnormal|mathrm|mbox)"
_SPACING = re.compile(r"\\[!,;: ]|\\q?quad\b|~|\\displaystyle|\\(?:left|right|[bB]igg?[lr]?)\b")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in `text`.

    Braces nest: ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. None when there is none or
    its braces never close (a truncated generation).
    """
    start, command = max((text.rfind(command), command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start + len(command) :]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        # "\boxed 5": the argument is the next token.
        token = re.match(r"\s+([^\s$]+)", rest)
        return token.group(1) if token else None
    rest = rest.lstrip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for index, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:index]
    return None


def normalize(answer: str) -> str:
    """The canonical form of a final answer (see the module docstring)."""
    s = answer.strip().strip("$").strip()
    s = _drop_units(s)
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\s+", "", s)
    # Shorthand arguments: \frac12, \frac1{2}, \frac{1}2, \sqrt2.
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\w)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.rstrip(".")
    assignment = re.fullmatch(r"[a-zA-Z]=([^=]+)", s)
    if assignment:
        s = assignment.group(1)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)
    letter = re.fullmatch(r"\(([A-Z])\)", s)
    return letter.group(1) if letter else s


def to_number(answer: str) -> Fraction | None:
    """The exact value of a normalized numeric answer, or None when it is not a plain number."""
    sign = -1 if answer.startswith("-") else 1
    body = answer[1:] if sign < 0 else answer
    frac = re.fullmatch(r"\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", body) or re.fullmatch(
        r"(-?[\d.]+)/(-?[\d.]+)", body
    )
    try:
        if frac:
            value = Fraction(Decimal(frac.group(1))) / Fraction(Decimal(frac.group(2)))
        elif re.fullmatch(r"\d+(\.\d+)?", body):
            value = Fraction(Decimal(body))
        else:
            return None
    except (InvalidOperation, ZeroDivisionError):
        return None
    return sign * value


def equivalent(prediction: str, gold: str) -> bool:
    """Normalized strings equal, or both exact numbers of equal value."""
    a, b = normalize(prediction), normalize(gold)
    if a == b:
        return True
    x, y = to_number(a), to_number(b)
    return x is not None and y is not None and x == y


def final_answer_phrase(text: str) -> str | None:
    """The answer after the last "final answer is" / "answer is" phrase, if any."""
    matches = list(re.finditer(r"(?i)(?:final answer|the answer) is[:\s]*", text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    math = re.match(r"\$+([^$]+)\$+", rest)
    if math:
        return math.group(1)
    clause = re.match(r"([^\n]*?)(?:\.\s|\.$|\n|$)", rest)
    value = clause.group(1).strip() if clause else ""
    return value or None


def _drop_units(s: str) -> str:
    """Unwrap a whole-answer text command; drop one that trails other content (a unit)."""
    whole = re.fullmatch(_TEXT_COMMAND + r"\{([^{}]*)\}", s)
    if whole:
        return whole.group(1).strip()
    s = re.sub(r"(?<=\S)\s*" + _TEXT_COMMAND + r"\{[^{}]*\}(\^\{?\d\}?)?\s*$", "", s)
    return re.sub(_TEXT_COMMAND + r"\{([^{}]*)\}", r"\1", s)
