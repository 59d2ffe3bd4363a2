"""Turn a model's generated text into a choice index, or an explicit None when it is unclear.

Parsing is a separate, named step so the evaluator can count invalid outputs instead of
letting a guess inflate accuracy. The rules are deliberately strict:

* the whole output is a label, optionally wrapped: ``B``, `` B``, ``B.``, ``(B)``, ``**B**``;
  a lone lower-case letter (``c``) counts only when it is the entire output;
* the output starts with a label followed by a delimiter: ``B) text``, ``B. text``, ``B:``;
* an answer phrase names a label: ``Answer: B``, ``The answer is (C)``, ``option D``;
* the output is exactly one choice's text (case-insensitive);

and anything naming two different labels (``A or B``), a label outside the label set, or no
label at all is None. The article "a" inside a sentence is never answer A: lower-case letters
are only read when they are the whole output.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

# Characters models wrap answers in: markdown emphasis, code ticks, quotes.
_WRAPPERS = "*_`\"'"
# Any single capital letter can be a label; seeing one outside the label set makes the output
# invalid rather than silently ignored.
_CAPITAL = r"[A-Z]"


def parse_choice(text: str, labels: Sequence[str], choices: Sequence[str] = ()) -> int | None:
    """The index of the choice a generated answer names, or None when unparseable.

    Args:
        text: The model's generated text (may include leading whitespace or markup).
        labels: Display labels in choice order, e.g. ``("A", "B", "C", "D")``.
        choices: The choice texts in the same order; an output equal to one of them
            (case-insensitive) selects it.

    Returns:
        The 0-based choice index, or None when the output is empty, names no label, names
        several different labels, or names a label outside ``labels``.
    """
    if not text or not text.strip():
        return None
    cleaned = _strip_wrappers(unicodedata.normalize("NFKC", text))
    if not cleaned:
        return None
    label_alt = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    token = f"(?:{label_alt}|{_CAPITAL})" if label_alt else _CAPITAL

    whole = _whole_output_label(cleaned, labels, token)
    if whole is not None:
        return _index_of(whole, labels)

    by_text = _match_choice_text(cleaned, choices)
    if by_text is not None:
        return by_text

    found = _labels_mentioned(cleaned, token)
    if len(found) != 1:
        return None
    return _index_of(found.pop(), labels)


def _strip_wrappers(text: str) -> str:
    return text.strip().strip(_WRAPPERS).strip()


def _whole_output_label(text: str, labels: Sequence[str], token: str) -> str | None:
    """The label when the entire output is one label with optional brackets/punctuation."""
    match = re.fullmatch(rf"[(\[]?({token}|[a-z])[)\]]?[.:]?", text)
    if match is None:
        return None
    found = match.group(1)
    if found in labels:
        return found
    # A lone lower-case letter is accepted only as the whole output (never inside a sentence).
    upper = found.upper()
    return upper if upper in labels else found


def _match_choice_text(text: str, choices: Sequence[str]) -> int | None:
    wanted = _normalize_text(text)
    hits = [i for i, choice in enumerate(choices) if _normalize_text(choice) == wanted]
    return hits[0] if len(hits) == 1 else None


def _normalize_text(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".").strip()


def _labels_mentioned(text: str, token: str) -> set[str]:
    """Every label the text explicitly names in an answer-like position."""
    patterns = (
        # "B) text", "B. text", "B: text", "B\n..." at the very start.
        rf"^[(\[]?({token})(?:[.):\]]|\s*\n|$)",
        # "Answer: B", "The answer is (C)", "correct option is D", "Choice: A".
        rf"(?i:answer|option|choice)\s*(?i:is)?\s*[:\-]?\s*[(\[*]*({token})(?![A-Za-z0-9])",
        # "(C)" or "[C]" anywhere.
        rf"[(\[]({token})[)\]]",
        # "**C**" anywhere.
        rf"\*\*({token})\*\*",
        # "A or B", "A/B", "A and B": a hedge names both.
        rf"(?<![A-Za-z])({token})\s*(?:or|and|/|,)\s*[(\[]?({token})(?![A-Za-z0-9])",
    )
    found: set[str] = set()
    for pattern in patterns:
        for match in re.finditer(pattern, text):
            found.update(group for group in match.groups() if group)
    return found


def _index_of(label: str, labels: Sequence[str]) -> int | None:
    try:
        return list(labels).index(label)
    except ValueError:
        return None
