"""User-facing errors.

A `UsageError` is bad input that the user can fix (a config value, a path, a data file). The CLI
prints its message on one line and exits with code 2, without a traceback unless `debug=true`.
Messages say what is wrong, echo the value received, and say how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(Exception):
    """Bad input at the boundary (CLI, config, data file, model path)."""


class ConfigValueError(UsageError, ValueError):
    """A config value of the wrong type or out of range (see `tale_opt.validate`).

    Also a ValueError, so code that validates its own arguments with ValueError (settings
    dataclasses, constructors) keeps its contract when it uses the shared checks.
    """


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """A " Did you mean 'x'? Available: a, b, c" suffix for unknown-name errors."""
    choices = sorted(choices)
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{hint} Available: {', '.join(choices)}"


class SearchFailed(Exception):
    """The search cannot go on: an evaluation raised in a worker, or workers keep dying.

    Unlike a `UsageError` this is not bad input; running the same command again resumes the
    search once the cause is fixed.
    """


def printed_error(text: str) -> str:
    """The message of the last `error: ...` line in `text` (what a tale_opt process printed
    before it exited, e.g. in a scheduler job's stderr), else `text`'s last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else (lines[-1] if lines else "")
