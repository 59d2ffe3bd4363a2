"""What one fine-tune is: the starting model, the layers it drops, the task and the search's
split settings, the evaluator options, the LoRA settings and where the outputs go.

The job's identity (everything but where it is tracked) is written into its output directory
when it starts; running it again on that directory resumes it, and a job with other settings
is refused there instead of mixing two fine-tunes' checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.finetune.settings import FinetuneSettings
from tale_opt.types import DropSet

JOB_FILE = "finetune_job.json"


@dataclass
class FinetuneJob:
    """One fine-tune.

    Attributes:
        model: `ModelSpec` fields of the starting model, before `drop` is removed.
        drop: Layers of that model to remove (0-based) before training.
        task: The task config node (the search's, when the model comes from a search).
        eval: Evaluator options for the held-out accuracy (the search's).
        seed, n_opt, n_eval: The search's split settings; the training part is drawn outside
            the splits they give.
        settings: LoRA, optimizer, schedule and data settings.
        out_dir: Output directory (checkpoints, adapter, merged model, summary).
        origin: Where the model comes from: ``{"kind": "search", "run_dir", "pick",
            "splits_fingerprint"}``, ``{"kind": "checkpoint", "path"}`` or ``{"kind": "model"}``.
        tracking: The tracking node (None or kind none: nothing is recorded).
        parent_run_id: The search's MLflow parent run, to nest the fine-tune's run under.
        launch_dir: Where the command was started (relative tracking paths resolve there).
    """

    model: dict[str, Any]
    drop: DropSet
    task: dict[str, Any]
    eval: dict[str, Any]
    seed: int
    n_opt: int | None
    n_eval: int | None
    settings: FinetuneSettings
    out_dir: Path
    origin: dict[str, Any] = field(default_factory=lambda: {"kind": "model"})
    tracking: Mapping[str, Any] | None = None
    parent_run_id: str | None = None
    launch_dir: str | Path | None = None

    def identity(self) -> dict[str, Any]:
        """What decides the fine-tune's result (JSON); a resume must match it."""
        return {
            "model": self.model,
            "drop": list(self.drop.layers),
            "task": self.task,
            "eval": self.eval,
            "seed": self.seed,
            "n_opt": self.n_opt,
            "n_eval": self.n_eval,
            "finetune": self.settings.as_dict(),
            "origin": self.origin,
        }

    def key(self) -> str:
        """A short stable id of the identity (names the tracked run across resumes)."""
        payload = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def claim_out_dir(self) -> None:
        """Write the identity into `out_dir`, or check that the one there is this job's.

        Raises:
            UsageError: `out_dir` holds a fine-tune with other settings.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / JOB_FILE
        mine = json.loads(json.dumps(self.identity(), default=str))
        if path.is_file():
            theirs = json.loads(path.read_text())
            if theirs != mine:
                key = _first_difference(theirs, mine)
                raise UsageError(
                    f"{self.out_dir} holds a fine-tune with other settings ({key} differs); "
                    "pass another out=DIR, or overwrite=true to start over there"
                )
            return
        path.write_text(json.dumps(mine, indent=2) + "\n")


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "the job"
