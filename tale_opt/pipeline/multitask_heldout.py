"""What a finished multi-task search reports: every pick on every task's held-out split.

Each pick is scored on each task's held-out split (the one a single-task search of that task
with the same seed holds out), with its 95% Wilson interval and the exact McNemar test against
the Baseline on that task's examples; its aggregate is the mean (or minimum) of those held-out
accuracies, like its score. summary.json keeps the per-task records under
``<pick>.heldout.tasks.<name>``, the tasks' settings under ``tasks``, and the printed table
gets one row per task and pick below the usual one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tale_opt.pipeline.candidates import build_evaluator
from tale_opt.pipeline.multitask import aggregate, candidate_fields, task_metric, task_metrics
from tale_opt.pipeline.outputs import RunWriter, opt_metrics
from tale_opt.pipeline.significance import (
    chance_level,
    heldout_warnings,
    noise_warnings,
    task_fewshot,
)
from tale_opt.pipeline.summary import accepted_costs, build_summary, evaluate_heldout
from tale_opt.pipeline.summary_table import ROWS, format_summary_table
from tale_opt.stats import CI_HIGH, CI_LOW, accuracy_interval, format_accuracy, format_p
from tale_opt.types import DropSet, Observation, SearchResult

log = logging.getLogger("tale_opt")


class _TaskFiles:
    """A `RunWriter` whose prediction files go to ``predictions/<task>/``."""

    def __init__(self, writer: RunWriter, task: str) -> None:
        self.writer, self.task = writer, task

    def write_predictions(self, name: str, rows: Any) -> Any:
        return self.writer.write_predictions(f"{self.task}/{name}", rows)


class SuiteHeldOut:
    """The held-out step of a multi-task search (see `heldout.TaskHeldOut`)."""

    def __init__(self, plan: Any, evaluate: Any) -> None:
        self.plan = plan
        self.suite = plan.suite
        self.how = str(plan.config["aggregate"])
        self.candidate_fields = candidate_fields(self.suite)
        self.evaluators: dict[str, Any] | None = None
        self.prepared: dict[str, Any] = {}
        if evaluate is not None:
            self.evaluators = {n: part.evaluator for n, part in evaluate.parts.items()}
            self._prepare()

    def _prepare(self) -> None:
        assert self.evaluators is not None
        for t in self.suite:
            split = f"held-out ({t.name})"
            self.prepared[t.name] = self.evaluators[t.name].prepare(t.splits.evaluation,
                                                                    split=split)  # fmt: skip

    def load(self) -> None:
        """With workers=N: load the model once, one evaluator per task on it."""
        if self.evaluators is not None:
            return
        from tale_opt.model.loading import load_model

        model, tokenizer = load_model(self.plan.spec)
        self.evaluators = {
            t.name: build_evaluator(t.config, model, tokenizer, t.task) for t in self.suite
        }
        self._prepare()

    def costs(
        self, trajectory: Sequence[Observation], latency: Any
    ) -> dict[DropSet, dict[str, Any]]:
        """Latency once (task-free: synthetic prompts) and the TFLOPs of every task's
        held-out evaluation, added up."""
        from tale_opt.cost.workload import evaluation_flops

        assert self.evaluators is not None
        first = next(iter(self.evaluators.values()))
        costs = accepted_costs(first, trajectory, latency, prepared=None)
        config = first.model.config
        for drop, cost in costs.items():
            cost["tflops"] = sum(
                evaluation_flops(config, drop, self.prepared[name],
                                 max_new_tokens=evaluator.max_new_tokens).tflops
                for name, evaluator in self.evaluators.items()
            )  # fmt: skip
        return costs

    def evaluate(self, picks: Mapping[str, Observation], writer: RunWriter) -> dict[str, Any]:
        """Per pick: the aggregate held-out accuracy and each task's held-out record."""
        assert self.evaluators is not None
        per_task = {
            name: evaluate_heldout(evaluator, self.prepared[name], dict(picks),
                                   _TaskFiles(writer, name))  # type: ignore[arg-type]
            for name, evaluator in self.evaluators.items()
        }  # fmt: skip
        heldout = {}
        for pick in picks:
            records = {name: per_task[name][pick] for name in per_task}
            n = sum(r["n_examples"] for r in records.values())
            invalid = sum(r["n_invalid"] for r in records.values())
            heldout[pick] = {
                "accuracy": aggregate([r["accuracy"] for r in records.values()], self.how),
                "aggregate": self.how,
                "invalid_rate": invalid / n if n else None,
                "n_examples": n,
                "tasks": records,
            }
        return heldout

    def summary(self, result: SearchResult, picks: Any, heldout: Any, costs: Any) -> dict:
        fields = suite_fields(self.plan, result, heldout)
        return build_summary(self.plan, result, picks, heldout, costs, tasks=fields)

    def table(self, summary: Mapping[str, Any]) -> str:
        return format_summary_table(summary) + "\n\n" + format_task_table(summary)


def log_suite_baseline(suite: Sequence[Any], obs: Observation) -> None:
    """Each task's baseline with its interval and chance level, as soon as it is known."""
    for t in suite:
        metrics = task_metrics(obs.metrics, t.name)
        chance = chance_level(t.task, t.splits.optimization)
        log.info(
            "baseline on %s: %s on the optimization split (95%% interval), chance level %s",
            t.name, format_accuracy(metrics.get("accuracy"), accuracy_interval(metrics), "%"),
            "-" if chance is None else f"{100 * chance:.1f}%",
        )  # fmt: skip
        scoring = t.config["eval"].get("scoring")
        found = noise_warnings([("optimization", metrics, chance)], scoring, task_fewshot(t.task))
        for warning in found:
            log.warning("%s: %s", t.name, warning)
    log.info("baseline score: %.4f (the tasks' accuracies aggregated)", obs.score)


def suite_fields(plan: Any, result: SearchResult, heldout: Mapping[str, Any]) -> tuple:
    """The summary fields of a multi-task search's tasks, and their warnings (each task's
    baseline against its chance level, each task's picks against its Baseline)."""
    how = str(plan.config["aggregate"])
    tasks, warnings = {}, []
    for t in plan.suite:
        chance = {
            "optimization": chance_level(t.task, t.splits.optimization),
            "heldout": chance_level(t.task, t.splits.evaluation),
        }
        baseline = task_metrics(result.baseline.metrics, t.name)
        records = {pick: entry["tasks"][t.name] for pick, entry in heldout.items()}
        scoring = t.config["eval"].get("scoring")
        found = noise_warnings(
            [("optimization", baseline, chance["optimization"]),
             ("held-out", records.get("baseline"), chance["heldout"])],
            scoring, task_fewshot(t.task),
        ) + heldout_warnings(records, len(t.splits.optimization))  # fmt: skip
        warnings += [f"{t.name}: {w}" for w in found]
        tasks[t.name] = {
            "scoring": scoring,
            "fewshot": task_fewshot(t.task),
            "n_opt": len(t.splits.optimization),
            "n_eval": len(t.splits.evaluation),
            "splits_fingerprint": t.splits.fingerprint,
            "prompt_version": t.task.prompt_version,
            "chance_accuracy": chance,
        }
    # The aggregate's chance level is the mean of the tasks' (for the minimum there is no
    # such simple reference).
    chance = {
        split: aggregate([t["chance_accuracy"][split] for t in tasks.values()], "mean")
        if how == "mean" and all(t["chance_accuracy"][split] is not None for t in tasks.values())
        else None
        for split in ("optimization", "heldout")
    }
    fields = {
        "task": plan.config["task"]["name"],
        "scoring": ", ".join(f"{n}: {t['scoring']}" for n, t in tasks.items()),
        "n_opt": sum(t["n_opt"] for t in tasks.values()),
        "n_eval": sum(t["n_eval"] for t in tasks.values()),
        "splits_fingerprint": {n: t["splits_fingerprint"] for n, t in tasks.items()},
        "prompt_version": {n: t["prompt_version"] for n, t in tasks.items()},
        "chance_accuracy": chance,
        "aggregate": how,
        "tasks": tasks,
    }
    return fields, warnings


def _versus(vs: Mapping[str, Any] | None) -> tuple[str, str]:
    if not vs:
        return "—", "—"
    return f"+{vs['only_pick']}/−{vs['only_baseline']}, {format_p(vs['p_value'])}", vs["verdict"]


def format_task_table(summary: Mapping[str, Any]) -> str:
    """One row per task and pick: optimization and held-out accuracy with 95% intervals and
    the paired test against the Baseline on that task's held-out examples."""
    lines = [
        f"per task ({summary.get('aggregate', 'mean')} of the tasks' accuracies is the score "
        "above):",
        "| task | config | layers dropped (0-based) | opt acc % [95% CI] | held-out acc % [95% CI]"
        " | vs Baseline (held-out) | verdict |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name in summary.get("tasks") or {}:
        for label, key in ROWS:
            cfg = summary.get(key)
            if cfg is None:
                continue
            dropped = ",".join(str(i) for i in cfg["drop_layers"]) or "—"
            metrics = opt_metrics(cfg)  # the pick's optimization-split metrics
            opt = {k: metrics.get(task_metric(name, k)) for k in ("n_examples", "n_correct",
                                                                  CI_LOW, CI_HIGH)}  # fmt: skip
            accuracy = metrics.get(task_metric(name, "accuracy"))
            opt_cell = format_accuracy(accuracy, accuracy_interval(opt) if accuracy else None)
            record = ((cfg.get("heldout") or {}).get("tasks") or {}).get(name) or {}
            held = format_accuracy(record.get("accuracy"), accuracy_interval(record))
            versus, verdict = _versus(record.get("vs_baseline"))
            lines.append(f"| {name} | {label} | {dropped} | {opt_cell} | {held} | {versus} "
                         f"| {verdict} |")  # fmt: skip
    sizes = ", ".join(
        f"{name} {info['n_opt']} / {info['n_eval']} ({info['scoring']}, {info['fewshot']}-shot)"
        for name, info in (summary.get("tasks") or {}).items()
    )
    lines.append(f"optimization / held-out examples per task: {sizes}")
    return "\n".join(lines)
