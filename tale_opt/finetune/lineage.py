"""Which layers of the original model a (re)pruned checkpoint holds.

A checkpoint written by `export` or by a fine-tune records its original layer count and the
original indices of the layers it kept (`tale_opt_export.json`). Pruning it again drops layers
by their positions in *it* (0-based, as every search reports them); mapping those positions
through its kept layers gives the original indices, so TALE → FT → TALE reports one drop set
in the numbering of the model everything started from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tale_opt.model.export import EXPORT_METADATA_FILE
from tale_opt.types import DropSet


@dataclass(frozen=True)
class Lineage:
    """The original model's layer count and the original indices of the layers kept."""

    original_num_layers: int
    kept: tuple[int, ...]

    @property
    def dropped(self) -> DropSet:
        return DropSet.of(sorted(set(range(self.original_num_layers)) - set(self.kept)))

    def then_drop(self, drop: DropSet) -> Lineage:
        """This model with `drop` (positions in this model, 0-based) removed too.

        Raises:
            ValueError: A position outside this model's layers.
        """
        for i in drop.layers:
            if not 0 <= i < len(self.kept):
                raise ValueError(f"layer {i} is out of range for a model of {len(self.kept)}")
        kept = tuple(k for i, k in enumerate(self.kept) if i not in set(drop.layers))
        return Lineage(self.original_num_layers, kept)

    def as_metadata(self) -> dict[str, object]:
        """The fields of `tale_opt_export.json` that describe the layers."""
        return {
            "original_num_layers": self.original_num_layers,
            "dropped_layers": list(self.dropped.layers),
            "kept_layers": list(self.kept),
            "num_layers": len(self.kept),
            "layer_index_base": 0,
        }


def lineage_of(model_path: str, num_layers: int) -> Lineage:
    """The lineage of the model at `model_path` with `num_layers` decoder layers: read from its
    export metadata when it is a checkpoint tale_opt wrote, else the model is an original."""
    meta_file = Path(model_path).expanduser() / EXPORT_METADATA_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        kept = tuple(int(i) for i in meta.get("kept_layers", ()))
        if len(kept) == num_layers and "original_num_layers" in meta:
            return Lineage(int(meta["original_num_layers"]), kept)
    return Lineage(num_layers, tuple(range(num_layers)))
