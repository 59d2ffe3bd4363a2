"""Model loading, layer surgery and export of pruned checkpoints (torch + transformers)."""

from tale_opt.model.export import export_pruned
from tale_opt.model.loading import ModelSpec, describe_model, load_model, model_fingerprint
from tale_opt.model.surgery import (
    SUPPORTED_FAMILIES,
    decoder_layers,
    dropped_layers,
    kept_layers,
    num_decoder_layers,
    prune,
)

__all__ = [
    "SUPPORTED_FAMILIES",
    "ModelSpec",
    "decoder_layers",
    "describe_model",
    "dropped_layers",
    "export_pruned",
    "kept_layers",
    "load_model",
    "model_fingerprint",
    "num_decoder_layers",
    "prune",
]
