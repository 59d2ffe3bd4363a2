"""Fold a trained adapter into the pruned model and write a plain checkpoint.

The merge starts from a fresh, unquantized copy of the starting model with the same layers
removed (so a QLoRA adapter merges into full-precision weights, not 4-bit ones), loads the
adapter, and merges it: the result is an ordinary model of the pruned shape, which
`AutoModelForCausalLM.from_pretrained` loads without peft or tale_opt. Before reporting success
the checkpoint is reloaded that way and its logits compared with the merged model in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tale_opt.finetune.lineage import Lineage
from tale_opt.finetune.lora import load_pruned
from tale_opt.model.export import export_pruned, verify_export
from tale_opt.model.loading import ModelSpec
from tale_opt.model.surgery import num_decoder_layers
from tale_opt.types import DropSet

# A reload runs the same weights through the same kernels: any difference is a bug.
MERGE_TOLERANCE = 1e-4


@dataclass
class MergedModel:
    model: Any
    tokenizer: Any
    path: Path
    max_logit_diff: float


def merge_adapter(
    spec: ModelSpec,
    drop: DropSet,
    adapter_dir: Path,
    out_dir: Path,
    *,
    lineage: Lineage,
    dtype: str,
    metadata: Mapping[str, Any],
) -> MergedModel:
    """Merge the adapter in `adapter_dir` into `spec`'s model minus `drop`; write `out_dir`.

    Args:
        spec: The starting model (before pruning).
        drop: The layers the adapter's model was trained without (0-based in `spec`'s model).
        adapter_dir: The saved peft adapter.
        out_dir: Where the merged checkpoint goes (replaced if it exists).
        lineage: The layers of the original model the merged model holds.
        dtype: The merged weights' precision.
        metadata: Recorded in `tale_opt_export.json` (what was fine-tuned, how).

    Raises:
        ExportVerificationError: The checkpoint does not reload as the merged model.
    """
    from peft import PeftModel

    base, tokenizer = load_pruned(spec, drop, dtype)
    layers = num_decoder_layers(base)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.eval()
    if num_decoder_layers(merged) != layers:
        raise RuntimeError(
            f"merging changed the layer count: {layers} -> {num_decoder_layers(merged)}"
        )
    merged.config.use_cache = True
    path = export_pruned(
        merged,
        tokenizer,
        DropSet(),
        out_dir,
        overwrite=True,
        source=spec.path,
        metadata={**lineage.as_metadata(), **dict(metadata)},
    )
    max_diff = verify_export(merged, tokenizer, DropSet(), path, tolerance=MERGE_TOLERANCE)
    return MergedModel(merged, tokenizer, path, max_diff)
