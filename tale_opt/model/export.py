"""Export a pruned model as a plain Hugging Face checkpoint.

The result loads with `AutoModelForCausalLM.from_pretrained(out_dir)` and no tale_opt installed:
the config says how many layers there are and which attention type each has, and the weights are
renumbered 0..k-1. A small `tale_opt_export.json` records where the checkpoint came from.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from tale_opt.errors import UsageError
from tale_opt.model.surgery import dropped_layers, num_decoder_layers
from tale_opt.types import DropSet

EXPORT_METADATA_FILE = "tale_opt_export.json"


def export_pruned(
    model: nn.Module,
    tokenizer: Any | None,
    drop: DropSet,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    source: str | None = None,
) -> Path:
    """Write `model` without the layers in `drop` to `out_dir` as a safetensors checkpoint.

    The in-memory model is left unchanged: the layers are removed only for the duration of
    `save_pretrained` (the reversible `dropped_layers` context), so no weights are copied, which
    matters for models that barely fit in memory. The checkpoint is written to a temporary
    directory beside `out_dir` and renamed into place, so an interrupted export never leaves a
    half-written checkpoint under `out_dir`.

    Args:
        model: A causal LM of a supported family, with all its layers (indices in `drop` are
            0-based indices into the model's current layers).
        tokenizer: Saved beside the weights when given, so the directory is self-contained.
        drop: The layers to remove.
        out_dir: Target directory; must not exist or be empty unless `overwrite` is True.
        overwrite: Replace a non-empty `out_dir`.
        source: Recorded as the source model in the metadata; defaults to the path the model
            was loaded from (`config._name_or_path`).

    Returns:
        The path of the written checkpoint directory.

    Raises:
        UsageError: `out_dir` is a non-empty directory (or a file) and `overwrite` is False.
        ValueError: `drop` names an out-of-range layer or every layer.
    """
    out = Path(out_dir).expanduser().resolve()
    _check_target(out, overwrite)
    num_layers = num_decoder_layers(model)
    kept = drop.kept(num_layers)  # validate before writing anything
    metadata = {
        "format_version": 1,
        "source": source if source is not None else getattr(model.config, "_name_or_path", ""),
        "model_type": model.config.model_type,
        "original_num_layers": num_layers,
        "dropped_layers": list(drop.layers),
        "kept_layers": list(kept),
        "num_layers": len(kept),
        "layer_index_base": 0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with dropped_layers(model, drop):
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / EXPORT_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"export target {str(out)!r} is a file; pass a directory path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(
            f"export directory {str(out)!r} already exists and is not empty; pick another "
            "directory or pass overwrite=True to replace it."
        )


def _move_into_place(tmp: Path, out: Path) -> None:
    # rename(2) replaces an empty directory atomically but refuses a non-empty one, so an
    # existing checkpoint is first moved aside and deleted only once the new one is in place.
    if out.is_dir() and any(out.iterdir()):
        backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, backup)  # backup is an empty directory, so this rename is allowed
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(backup, out)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)
