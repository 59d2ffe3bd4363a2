"""Write a directory atomically: build it beside the target, then rename it into place.

Readers then see either no directory or a complete one, never a half-written checkpoint, even
when the writer is killed. The temporary directory must live on the same filesystem as the
target (hence "beside"), or the rename is a copy.
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


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target`, replacing whatever is there."""
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
