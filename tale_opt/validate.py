"""The shared checks of config values: strict integers, numbers and booleans, and known keys.

Strict means the YAML/command-line type must already be right: ``true`` is not the integer 1,
``"8"`` is not a number, ``1.0`` is not an integer. Every failure is a `ConfigValueError`
whose one-line message names the key, the value received (with its type) and what is
expected, e.g. ``searcher.epsilon must be a number >= 0, but got 'abc' (str)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tale_opt.errors import ConfigValueError, did_you_mean


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if isinstance(value, str) else repr(value)


def _expected(kind: str, minimum: Any, above: Any, maximum: Any, allow_none: bool) -> str:
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if above is not None:
        bounds.append(f"> {above}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    text = f"{kind} {' and '.join(bounds)}".strip()
    return text + (" or null" if allow_none else "")


def integer(
    value: Any,
    key: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """`value` if it is an int (not a bool) within the bounds, else `ConfigValueError`."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        expected = _expected("an integer", minimum, None, maximum, allow_none)
        raise ConfigValueError(f"{key} must be {expected}, but got {_got(value)}")
    return value


def number(
    value: Any,
    key: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    allow_none: bool = False,
) -> float | None:
    """`value` as a float if it is an int or float (not a bool) within the bounds
    (`minimum` inclusive, `above` exclusive), else `ConfigValueError`."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != value  # NaN
        or (minimum is not None and value < minimum)
        or (above is not None and value <= above)
        or (maximum is not None and value > maximum)
    ):
        expected = _expected("a number", minimum, above, maximum, allow_none)
        raise ConfigValueError(f"{key} must be {expected}, but got {_got(value)}")
    return float(value)


def boolean(value: Any, key: str) -> bool:
    """`value` if it is true or false, else `ConfigValueError` (no 0/1, no "yes")."""
    if not isinstance(value, bool):
        raise ConfigValueError(f"{key} must be true or false, but got {_got(value)}")
    return value


def known_keys(options: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Refuse keys of `options` not in `known`, suggesting the closest known one."""
    known = sorted(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigValueError(
            f"{where} has no option '{unknown[0]}'.{did_you_mean(unknown[0], known)}"
        )
