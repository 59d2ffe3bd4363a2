"""The step after the candidates: costs, held-out accuracy, summary and table of the picks.

`heldout_step(plan, evaluate)` gives the step of a single-task search (`TaskHeldOut`) or of a
multi-task one (`multitask_heldout.SuiteHeldOut`); `run.py` drives either the same way:

* built before the search, so the held-out split is tokenized and checked (options, context
  length) now, not after a long search -- where the model is loaded in this process;
* `load()` after the search: with ``workers=N`` the model is loaded here only now;
* `costs`, `evaluate` (the held-out split, touched once), `summary`, `table`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tale_opt.pipeline.candidates import build_evaluator
from tale_opt.pipeline.outputs import RunWriter
from tale_opt.pipeline.summary import accepted_costs, build_summary, evaluate_heldout
from tale_opt.pipeline.summary_table import format_summary_table
from tale_opt.types import DropSet, Observation, SearchResult


class TaskHeldOut:
    """The held-out step of a single-task search (one evaluator, one held-out split)."""

    candidate_fields: tuple[str, ...] = ()  # extra candidate_results.csv columns: none

    def __init__(self, plan: Any, evaluate: Any) -> None:
        self.plan = plan
        self.evaluator = evaluate.evaluator if evaluate is not None else None
        self.prepared = self._prepare() if self.evaluator is not None else None

    def _prepare(self) -> Any:
        return self.evaluator.prepare(self.plan.splits.evaluation, split="held-out")

    def load(self) -> None:
        """The workers have left: load the model here, once, for latency and the held-out
        split (nothing to do when this process evaluated the candidates)."""
        if self.evaluator is not None:
            return
        from tale_opt.model.loading import load_model

        model, tokenizer = load_model(self.plan.spec)
        self.evaluator = build_evaluator(self.plan.config, model, tokenizer, self.plan.task)
        self.prepared = self._prepare()

    def costs(
        self, trajectory: Sequence[Observation], latency: Any
    ) -> dict[DropSet, dict[str, Any]]:
        return accepted_costs(self.evaluator, trajectory, latency, self.prepared)

    def evaluate(self, picks: Mapping[str, Observation], writer: RunWriter) -> dict[str, Any]:
        return evaluate_heldout(self.evaluator, self.prepared, dict(picks), writer)

    def summary(self, result: SearchResult, picks: Any, heldout: Any, costs: Any) -> dict:
        return build_summary(self.plan, result, picks, heldout, costs)

    def table(self, summary: Mapping[str, Any]) -> str:
        return format_summary_table(summary)


def heldout_step(plan: Any, evaluate: Any) -> Any:
    """The held-out step of `plan`'s search; `evaluate` is this process's candidate
    evaluator (None when workers evaluated the candidates)."""
    if plan.suite is not None:
        from tale_opt.pipeline.multitask_heldout import SuiteHeldOut

        return SuiteHeldOut(plan, evaluate)
    return TaskHeldOut(plan, evaluate)
