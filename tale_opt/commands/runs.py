"""A finished search's run directory as other commands read it: its summary, its resolved
config (`.hydra/config.yaml`) and the drop set of one of its picks.

`export` and `finetune` both start from a pick of a finished search; this is the one place
that knows what makes a run directory finished and where its settings are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tale_opt.errors import UsageError, did_you_mean
from tale_opt.types import DropSet

# Final (most layers dropped; exactly n_drop with n_drop=k) is the pick criteria are compared on.
PICKS = ("best", "bsba", "ae_hm", "final", "baseline")


@dataclass(frozen=True)
class FinishedRun:
    """A search's output directory with a `summary.json`.

    Attributes:
        run_dir: The directory.
        summary: summary.json's content.
        config: The search's resolved config (`.hydra/config.yaml`), or None when the
            directory has none (a search run from a script): the summary's model path then
            stands in for the model.
    """

    run_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any] | None

    @classmethod
    def open(cls, run_dir: str | Path) -> FinishedRun:
        """Read a finished search's directory.

        Raises:
            UsageError: Not a directory, or no summary.json (an interrupted or other run).
        """
        path = Path(run_dir).expanduser()
        if not path.is_dir():
            raise UsageError(f"run directory {str(path)!r} does not exist; pass a search's "
                             "output directory (outputs/<date>/<time>_<task>)")  # fmt: skip
        summary_path = path / "summary.json"
        if not summary_path.is_file():
            raise UsageError(
                f"{path} has no summary.json, so it is not a finished search; pass the output "
                "directory of a completed run (or run the search again to finish it)"
            )
        summary = json.loads(summary_path.read_text())
        config_path = path / ".hydra" / "config.yaml"
        config = None
        if config_path.is_file():
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
        return cls(path.resolve(), summary, config)

    def model_config(self) -> dict[str, Any]:
        """`ModelSpec` fields of the searched model (its config's `model` node, less `name`)."""
        model = dict(self.config["model"]) if self.config else {"path": self.summary["model_path"]}
        model.pop("name", None)
        return model

    def drop(self, pick: str) -> DropSet:
        """The layers the pick drops (0-based).

        Raises:
            UsageError: An unknown pick, or one this summary does not have.
        """
        if pick not in PICKS:
            raise UsageError(f"unknown pick {pick!r}.{did_you_mean(pick, PICKS)}")
        entry = self.summary.get(pick)
        if not isinstance(entry, dict) or "drop_layers" not in entry:
            raise UsageError(
                f"{self.run_dir}/summary.json has no {pick!r} pick (a run of an older "
                f"version); choose another of {', '.join(PICKS)}"
            )
        return DropSet.of(entry["drop_layers"])

    def pruned_drop(self, pick: str, flag: str = "--pick") -> DropSet:
        """`drop(pick)` for a command that exists to write a pruned model: a pick other than
        ``baseline`` that drops no layer (Best of a search that accepted nothing better than
        the full model, e.g. a perplexity searcher's) is refused instead of silently giving
        the unpruned model.

        Raises:
            UsageError: As `drop`, or the pick is the unpruned model; the message names the
                picks that do drop layers, and `flag` ``baseline`` for the full model.
        """
        drop = self.drop(pick)
        if drop or pick == "baseline":
            return drop
        flag += "" if flag.endswith("=") else " "  # --pick final, pick=final
        pruned = []
        for other in PICKS:
            entry = self.summary.get(other)
            if other != "baseline" and isinstance(entry, dict) and entry.get("drop_layers"):
                pruned.append(f"{flag}{other} (layers {DropSet.of(entry['drop_layers']).key})")
        searcher = self.summary.get("searcher", "this")
        why = (
            f"the {pick} pick of {self.run_dir} is the unpruned baseline (the {searcher} "
            f"search's {pick} is the full model: nothing it accepted scored higher), so "
            "there is nothing pruned to write"
        )
        if not pruned:
            raise UsageError(f"{why}; no pick of this search drops a layer; {flag}baseline "
                             "writes the full model if that is what you want")  # fmt: skip
        raise UsageError(
            f"{why}; choose a pick that drops layers: {', '.join(dict.fromkeys(pruned))}, "
            f"or {flag}baseline for the full model"
        )

    def require_single_task(self, command: str) -> None:
        """Refuse a multi-task search where `command` reads the one task a search ran on.

        Raises:
            UsageError: The run searched several tasks.
        """
        if self.summary.get("tasks"):
            raise UsageError(
                f"{self.run_dir} is a multi-task search ({self.summary.get('task')}), but "
                f"{command} run=... reads one searched task; its summary.json holds each "
                "task's held-out results, or give the pick's layers as drop=[...] with "
                "model=... task=NAME"
            )

    @property
    def parent_run_id(self) -> str | None:
        return (self.summary.get("tracking") or {}).get("parent_run_id")

    @property
    def tracking_uri(self) -> str | None:
        return (self.summary.get("tracking") or {}).get("uri")
