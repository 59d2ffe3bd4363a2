"""Write a directory atomically: build it beside the target, then rename it into place.

Readers then see either no directory or a complete one, never a half-written checkpoint, even
when the writer is killed. The temporary directory must live on the same filesystem as the
target (hence "beside"), or the rename is a copy. What lands there has the permissions any
file the user creates gets (0644 files and 0755 directories under the usual umask 022), not
the 0600 of the temporary files some writers (transformers' safetensors save) go through.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def sibling_temp_dir(target: Path, tag: str = "tmp") -> Path:
    """A new empty hidden directory next to `target`.

    Created with `mkdir` rather than `tempfile.mkdtemp`, whose mode 0700 would survive the rename
    and make an exported checkpoint or a shared model cache unreadable to other users.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells (else set and reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_permissions(root: Path) -> None:
    """Give `root` and everything under it the modes a plain `open` / `mkdir` would: 0666 /
    0777 less the umask (a file's execute bits are kept)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        else:
            executable = path.stat().st_mode & 0o111
            os.chmod(path, (0o666 | executable) & ~mask)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target`, replacing whatever is there, with
    `ordinary_permissions`."""
    ordinary_permissions(tmp)
    # rename(2) replaces an empty directory atomically but refuses a non-empty one, so an
    # existing directory is first moved aside and deleted only once the new one is in place.
    if target.is_dir() and any(target.iterdir()):
        backup = sibling_temp_dir(target, "old")
        os.replace(target, backup)  # backup is empty, so this rename is allowed
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(backup, target)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, target)
