"""The model a fine-tune trains: the starting model with its layers removed for good, with LoRA
adapters (peft) on the chosen linear layers, optionally over 4-bit weights (QLoRA).

The layers are removed before peft sees the model, so adapters are created only for the
layers that stay, named by their new 0-based positions (`model.layers.0` ...): the adapter
belongs to the pruned model and merges into it (`merge.py`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from tale_opt.errors import UsageError, did_you_mean
from tale_opt.finetune.settings import ALL_LINEAR, FinetuneSettings
from tale_opt.model.loading import ModelSpec, load_model, resolve_device
from tale_opt.model.surgery import num_decoder_layers, prune
from tale_opt.types import DropSet


def load_pruned(
    spec: ModelSpec, drop: DropSet, dtype: str, quantization: str | None = None
) -> tuple[Any, Any]:
    """The model of `spec` in `dtype` with the layers in `drop` removed for good.

    Raises:
        UsageError: A bad model path, a layer out of range, or nf4 without CUDA/bitsandbytes.
    """
    spec = replace(spec, dtype=dtype)
    model, tokenizer = load_model(
        spec, quantization_config=_quantization(spec, quantization, dtype)
    )
    try:
        prune(model, drop)
    except ValueError as err:
        raise UsageError(f"cannot drop layers {drop.key!r} from {spec.path!r}: {err}") from err
    return model, tokenizer


def _quantization(spec: ModelSpec, quantization: str | None, dtype: str) -> Any:
    if quantization is None:
        return None
    import importlib.util

    import torch

    if not resolve_device(spec.device).startswith("cuda") or not torch.cuda.is_available():
        raise UsageError(
            "finetune.quantization=nf4 (QLoRA) needs a CUDA GPU; on this machine set "
            "finetune.quantization=null (finetune=cpu)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(
            "finetune.quantization=nf4 needs bitsandbytes: pip install bitsandbytes "
            "(or set finetune.quantization=null)"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=getattr(torch, dtype),
        bnb_4bit_use_double_quant=False,
    )


def linear_module_names(model: nn.Module) -> list[str]:
    """The last name component of every linear layer inside the decoder layers
    (``q_proj``, ``down_proj`` ...): what `target_modules` may name."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in f".{name}":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model: nn.Module, target_modules: tuple[str, ...] | str) -> None:
    """Refuse a `target_modules` entry that names no linear layer of the model.

    Raises:
        UsageError: The first unknown name, with the closest known one and the full list.
    """
    if target_modules == ALL_LINEAR:
        return
    known = linear_module_names(model)
    for name in target_modules:
        if name not in known:
            raise UsageError(
                f"finetune.target_modules: the model has no linear layer named {name!r}."
                + did_you_mean(name, known)
            )


def add_lora(model: nn.Module, settings: FinetuneSettings) -> Any:
    """Wrap the (pruned) model with trainable LoRA adapters; every other weight is frozen.

    Raises:
        UsageError: `target_modules` names a layer the model does not have.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    check_target_modules(model, settings.target_modules)
    layers = num_decoder_layers(model)
    model.config.use_cache = False  # no KV cache while training (and it warns with checkpoints)
    if settings.quantization is not None:
        model = prepare_model_for_kbit_training(model)
    target = settings.target_modules
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if num_decoder_layers(peft_model.get_base_model()) != layers:  # peft must not add layers
        raise RuntimeError("peft changed the number of decoder layers")
    return peft_model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
