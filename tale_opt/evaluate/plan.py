"""What one `evaluate` command scores, known before any weights are loaded: the model, the
drop sets of it, and per task the split to score them on (with the searches whose optimization
split that task's examples must stay out of)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.types import DropSet

# split key -> how tables, files and progress bars name it
SPLITS = {"heldout": "held-out", "optimization": "optimization"}
BASELINE = "Baseline"
RECORD = "evaluation.json"  # written last: its presence marks a finished evaluation


@dataclass(frozen=True)
class Configuration:
    """One drop set to score, and where it comes from.

    Attributes:
        label: Its name in tables and file names (``Final``, ``drop 3,7``,
            ``arc_easy_cloze Final`` when several searches are compared).
        drop: The decoder layers it removes (0-based).
        run_dir: The search it is a pick of (None: given as ``drop=``).
        pick: Which of that search's picks (best, bsba, ae_hm, final, baseline).
        source_task: The task the search chose the layers on.
    """

    label: str
    drop: DropSet
    run_dir: str | None = None
    pick: str | None = None
    source_task: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "drop_layers": list(self.drop.layers),
            "run": self.run_dir,
            "pick": self.pick,
            "source_task": self.source_task,
        }


@dataclass(frozen=True)
class SearchedSplit:
    """The split settings of a search on a task: its optimization split is the part of the
    task's data its layers were chosen on, so a score there is biased upwards."""

    run_dir: str
    task: Mapping[str, Any]
    seed: int
    n_opt: int | None
    n_eval: int | None
    fingerprint: str | None  # the search's splits fingerprint (summary.json)


@dataclass
class TaskSetting:
    """One task to score on: its config node, evaluator options and split settings.

    Attributes:
        task: The task config node (a search's own node for the task it searched).
        eval: Evaluator options (scoring, batch size, ...).
        seed, n_opt, n_eval: Split settings; the scored split is the part a search with them
            holds out (or optimizes on, with ``split=optimization``).
        searched: Searches of this task among the evaluated runs.
    """

    task: dict[str, Any]
    eval: dict[str, Any]
    seed: int
    n_opt: int | None
    n_eval: int | None
    searched: list[SearchedSplit] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.task.get("name"))


@dataclass
class EvaluationPlan:
    """Everything an evaluation needs before the model is loaded.

    Attributes:
        model: `ModelSpec` fields of the model (before any layer is dropped).
        model_name: How tables name it.
        tasks: The tasks to score on, in order.
        configurations: The drop sets to score besides the Baseline (the model as loaded).
        baseline: Score the Baseline too and test every configuration against it; always
            on when there is no configuration (the model itself is then what is scored).
        split: ``heldout`` or ``optimization`` (a key of `SPLITS`).
        allow_optimization_split: Score examples a search optimized on anyway.
        out_dir: Where the results go.
        fresh: `out_dir` is a prefix: the results go to the first of ``out_dir``,
            ``out_dir_2``, ... that does not exist (the default, like a search's run dir).
    """

    model: dict[str, Any]
    model_name: str
    tasks: list[TaskSetting]
    configurations: list[Configuration]
    baseline: bool
    split: str
    allow_optimization_split: bool
    out_dir: Path
    fresh: bool = True

    @property
    def scores_baseline(self) -> bool:
        return self.baseline or not self.configurations


def check_drop_sets(configurations: Sequence[Configuration], num_layers: int) -> None:
    """Every drop set fits a model of `num_layers` decoder layers and keeps one.

    Raises:
        UsageError: A layer out of range or every layer dropped, naming the configuration.
    """
    for conf in configurations:
        where = f"drop=[{conf.drop.key}]" if conf.run_dir is None else (
            f"pick {conf.pick} of {conf.run_dir}"
        )  # fmt: skip
        try:
            kept = conf.drop.kept(num_layers)
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
        if not kept:
            raise UsageError(f"{where} drops all {num_layers} decoder layers; keep at least one")
