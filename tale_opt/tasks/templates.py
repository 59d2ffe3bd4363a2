"""Small helpers every task type shares: prompt templates, content normalization, hashing."""

from __future__ import annotations

import hashlib
import json
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from tale_opt.errors import UsageError, did_you_mean

# Keys of a task's `scoring` node, for every task type (the eval group reads mode and
# max_new_tokens as its defaults; the task keeps the stop settings for the evaluator).
SCORING_KEYS = ("mode", "max_new_tokens", "stop", "stop_patterns", "chat_template")


def template_fields(template: str, where: str, allowed: set[str] | None = None) -> tuple[str, ...]:
    """Named placeholders of a ``str.format`` template, in order of first use.

    Raises:
        UsageError: the template does not parse, a placeholder is not a plain name, or (with
            `allowed`) names something outside `allowed`.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise UsageError(f"{where} is not a valid format template ({err}): {template!r}") from None
    names: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        root = name.split(".")[0].split("[")[0]
        if not root.isidentifier():
            raise UsageError(
                f"{where} placeholders must be column names like {{question}}, but got "
                f"{{{name}}} in {template!r} (write {{{{ and }}}} for literal braces)"
            )
        if allowed is not None and root not in allowed:
            raise UsageError(f"{where} may only use {sorted(allowed)}, but got {{{name}}}")
        if root not in names:
            names.append(root)
    return tuple(names)


def system_prompt(value: Any) -> str | None:
    """The system prompt a task shows, or None for none.

    null, ``""`` and whitespace-only text all mean "no system prompt": they render alike (no
    system turn, so a chat template may add its own default) and, because every prompt spec
    stores this value, they also get one prompt version. Real text is kept verbatim.

    Raises:
        UsageError: Neither text nor null.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(
            f"task.prompt.system must be text or null (no system prompt), but got {value!r}"
        )
    return value if value.strip() else None


def normalize(value: Any) -> str:
    """Case-, width- and whitespace-insensitive text, for duplicate detection."""
    return " ".join(unicodedata.normalize("NFKC", str(value)).casefold().split())


def short_hash(payload: Any) -> str:
    """12 hex digits of sha256 over canonical JSON (stable across runs and machines)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def content_id(text: str) -> str:
    """An id for rows without one: equal content gets equal ids."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def check_keys(cfg: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Raise a UsageError naming the first key of `cfg` not in `allowed` (with a suggestion)."""
    for key in cfg:
        if key not in allowed:
            raise UsageError(
                f"{where} has an unknown key {key!r}." + did_you_mean(str(key), allowed)
            )
