"""Passwords out of everything tale_opt writes or prints.

A storage URL (``postgresql://user:PASSWORD@host/db``) or a tracking URI can carry a password,
from the command line or from an environment variable. Every writer -- logs, messages,
summary.json, MLflow params and tags, the run's `.hydra/*.yaml` -- passes values through
`mask` (one string) or `mask_values` (a config tree) first.

The password of a URL is everything between ``user:`` and the *last* ``@`` of the string: a
raw ``@`` inside a password (``u:p@ss@host``) is common and drivers accept it, so stopping at
the first ``@`` would show the rest. When in doubt this hides too much (an ``@`` in a query
string), never too little. Query parameters that carry secrets (``?password=...``) are
masked too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

MASKED = "***"
# scheme://user: then the password, greedy up to the last "@" (see the module docstring).
# The colons may be escaped (`postgresql\://u\:pw@h`: how Hydra prints a sweep's overrides).
_URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*\\?://[^\s:/@?#\\]*\\?:)(.*)@")
_QUERY_SECRET = re.compile(
    r"([?&;](?:password|passwd|pwd|token|access_token|secret|api_key|apikey)=)[^&#\s]*",
    re.IGNORECASE,
)


def mask(text: str | None) -> str:
    """`text` with URL passwords and secret query parameters replaced by ``***``."""
    if not text:
        return ""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASKED}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{MASKED}", text)


def mask_values(value: Any) -> Any:
    """A copy of a config tree (mappings, lists, scalars) with every string masked."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {key: mask_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_values(item) for item in value)
    return value


def install_log_masking() -> None:
    """Mask every log record of this process, whichever library logs it (Hydra prints a
    sweep's overrides, storage URLs included). Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "masks_credentials", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it when the record is emitted
            return record
        if "@" in message or "=" in message:
            masked = mask(message)
            if masked != message:
                record.msg, record.args = masked, None
        return record

    factory.masks_credentials = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def has_secret(value: Any) -> bool:
    """Whether masking would change `value` (a string or a config tree)."""
    return mask_values(value) != value
