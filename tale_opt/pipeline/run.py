"""Composition root of one search: config in, result files out.

Receives a plain dict (the CLI resolves Hydra's config first; nothing here imports hydra),
plans the search (`plan.py`: checks, splits, searcher, study; no weights loaded yet) and runs
the coordinator: candidates are evaluated in this process (`workers=0`) or by spawned local
workers (`workers=N`) and by any worker that joins from elsewhere. Then Baseline, Best, BSBA
and the AE-HM pick are evaluated once on the held-out split (`heldout.py` over `summary.py`;
a multi-task search (`multitask.py`) on every task's, `multitask_heldout.py`), and the result
files are written (`outputs.py`, `summary_table.py`, `tracking.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.coordination.coordinator import run_coordinator
from tale_opt.coordination.local_workers import LocalWorkers
from tale_opt.coordination.racing import NONE, describe_stop
from tale_opt.pipeline import worker
from tale_opt.pipeline.heldout import heldout_step
from tale_opt.pipeline.multitask import evaluator_for
from tale_opt.pipeline.multitask_heldout import log_suite_baseline
from tale_opt.pipeline.outputs import RunWriter, write_text_atomic
from tale_opt.pipeline.plan import SearchPlan, open_search_study, plan_search
from tale_opt.pipeline.progress import RoundProgress
from tale_opt.pipeline.significance import (
    chance_level,
    noise_warnings,
    round_sentence,
    round_tests,
    task_fewshot,
)
from tale_opt.pipeline.summary import pick_configurations
from tale_opt.pipeline.summary_table import describe_probe_text
from tale_opt.pipeline.tracking import SearchTracking
from tale_opt.reporting.plots import write_search_plots
from tale_opt.stats import SO_FAR, accuracy_interval, format_accuracy, so_far_interval
from tale_opt.types import PERPLEXITY, TASK_ACCURACY, Observation, SearchResult

# Probes whose score means something on its own (the hidden-state probes report per-layer
# statistics in their metrics and a placeholder score).
SCORED_PROBES = (TASK_ACCURACY, PERPLEXITY)

log = logging.getLogger("tale_opt")


def run(
    cfg: Mapping[str, Any], out_dir: Path, launch_dir: str | Path | None = None
) -> dict[str, Any]:
    """Run (or resume) one search described by `cfg` and write its results into `out_dir`.

    `launch_dir` is where the command was started (relative tracking paths resolve there).
    """
    started = time.perf_counter()
    plan = plan_search(cfg)
    evaluate = None
    if evaluates_here(plan):  # load the model before anything is recorded: it may not load
        loaded = {"task": plan.task, "splits": plan.splits}
        if plan.suite is not None:  # a multi-task search
            loaded = {"suite": plan.suite}
        # No bar per candidate: the console shows one line per round (`progress.py`).
        evaluate = evaluator_for(plan.config, **loaded)
    open_search_study(plan)
    # plan.cfg: for a multi-task search, its task names the tasks (`suite_search_config`).
    tracking = SearchTracking.start(plan.cfg, launch_dir=launch_dir, study=plan.study_name)
    try:
        summary = _run(plan, evaluate, tracking, Path(out_dir), started)
    except KeyboardInterrupt:
        tracking.abort("KILLED")
        raise
    except BaseException:
        tracking.abort("FAILED")
        raise
    return summary


def evaluates_here(plan: SearchPlan) -> bool:
    """Whether this process evaluates candidates: `workers=0`, unless `coordinator_evaluates`
    is false (it then only coordinates workers that join, e.g. a Slurm job array)."""
    return plan.workers == 0 and plan.cfg.get("coordinator_evaluates", True)


def _run(
    plan: SearchPlan, evaluate: Any, tracking: SearchTracking, out_dir: Path, started: float
) -> dict:
    # The held-out split(s): tokenized and checked (options, context length) now, not after a
    # long search, where this process holds the model.
    step = heldout_step(plan, evaluate)
    with RunWriter(out_dir, extra_fields=step.candidate_fields) as writer:
        loaded = time.perf_counter()
        result = _search(plan, evaluate, writer, tracking)
        searched = time.perf_counter()
        if evaluate is not None:
            evaluate.release_caches()  # before latency and held-out need the memory
        step.load()  # the workers evaluated: the model is loaded only now
        costs = step.costs(result.trajectory, plan.latency)
        picks = pick_configurations(result, plan.num_layers, plan.lam, costs)
        measured = time.perf_counter()
        heldout = step.evaluate(picks, writer)
        finished = time.perf_counter()

        summary = step.summary(result, picks, heldout, costs)
        summary["study"] = {
            "name": plan.study.study_name,
            "storage": plan.storage.describe(),
            "workers": plan.workers,
        }
        if tracking.parent_run_id is not None:
            summary["tracking"] = {"uri": tracking.uri, "parent_run_id": tracking.parent_run_id}
        summary["timings"] = {
            "load_s": round(loaded - started, 2),
            "search_s": round(searched - loaded, 2),
            "latency_s": round(measured - searched, 2),
            "heldout_s": round(finished - measured, 2),
            "total_s": round(finished - started, 2),
            "candidates": len(result.observations),
            # stopped early by the pruner: bounded by (exact) or raced out against their
            # round's leader
            "pruned_candidates": sum(not o.complete for o in result.observations),
            "raced_out_candidates": sum(o.raced_out for o in result.observations),
            "pruner": plan.pruner.name,
            "per_candidate_s": round((searched - loaded) / max(1, len(result.observations)), 3),
        }
        writer.write_summary(summary)
    table = step.table(summary)
    write_text_atomic(out_dir / "summary.md", table + "\n")
    write_search_plots(out_dir)
    tracking.finish(summary, out_dir)
    print(table)
    return summary


def _search(
    plan: SearchPlan, evaluate: Any, writer: RunWriter, tracking: SearchTracking
) -> SearchResult:
    """Coordinate the search: in this process (`evaluate`) or with `plan.workers` workers."""
    local = None
    if plan.workers > 0:
        local = LocalWorkers(
            plan.workers,
            worker.spawned,
            {
                "storage": plan.storage.as_dict(),
                "study": plan.study.study_name,
                "debug": plan.cfg.get("debug"),
            },
            device=plan.spec.device,
            threads=plan.threads,
        )
        local.start()
    elif evaluate is None:
        log.info("coordinator_evaluates=false: waiting for workers to join (command above)")
    searcher = plan.searcher
    chance = chance_level(plan.task, plan.splits.optimization) if plan.suite is None else None
    reported = 1  # accepted configurations whose test is logged (the baseline needs none)

    def report_accepted(trajectory: Sequence[Observation]) -> None:
        # Each newly accepted round against the baseline, on the examples both were scored on.
        nonlocal reported
        for test in round_tests(trajectory)[reported - 1 :]:
            log.info("optimization split, %s", round_sentence(test))
        reported = max(reported, len(trajectory))

    progress = RoundProgress()

    def record(obs: Observation, trial: Any) -> None:
        _log_candidate(obs, trial.number)  # DEBUG: the console shows the round's line
        writer.record_candidate(obs)
        tracking.log_configuration(obs, curve=trial.intermediate_values)
        if not obs.drop and obs.candidate.probe == TASK_ACCURACY and obs.complete:
            writer.write_predictions("optimization_baseline", obs.extras.get("predictions", []))
            if plan.suite is None:
                _log_baseline(obs.metrics, chance, plan.cfg["eval"].get("scoring"), plan.task)
            else:
                log_suite_baseline(plan.suite, obs)
        elif not obs.drop and obs.candidate.probe == PERPLEXITY:
            log.info(
                "baseline: perplexity %.2f on the probe text (%s), not on the task",
                -obs.score, describe_probe_text(searcher.text),
            )  # fmt: skip
        progress.observed(obs, searcher.propose())
        # After every candidate, for greedy and one-shot searchers alike.
        accepted = searcher.accepted
        writer.write_accepted(accepted, searcher.threshold)
        if accepted and accepted[0].candidate.probe == TASK_ACCURACY:
            report_accepted(accepted)

    try:
        with progress.console():
            result = run_coordinator(
                plan.study,
                searcher,
                evaluate=evaluate,
                on_observation=record,
                poll_interval=plan.storage.poll_interval,
                lost_after=2 * plan.storage.grace_period,
                max_retry=plan.storage.max_retry,
                check_workers=local.check if local is not None else lambda: None,
                # A multi-task search's pruner is `none` (`multitask.suite_pruner`).
                early_stop=plan.pruner.name != NONE,
            )
    except BaseException:
        if local is not None:
            local.stop(timeout=0)  # their trials go stale and are retried on resume
        raise
    finally:
        progress.close()
    if local is not None:
        local.stop()
    writer.write_accepted(result.trajectory, result.threshold)
    return result


def _log_candidate(obs: Observation, trial: int) -> None:
    """One candidate's outcome, at DEBUG (candidate_results.csv has every field)."""
    if obs.candidate.probe not in SCORED_PROBES:
        # A one-shot searcher's probe of the full model: per-layer statistics, no score.
        log.debug("probe %s of drop %s done (trial %d)", obs.candidate.probe, obs.drop, trial)
        return
    log.debug(
        "round %d drop %s: %s %s%.4f (trial %d)", len(obs.drop), obs.drop,
        "accuracy" if obs.candidate.probe == TASK_ACCURACY else "score",
        "" if obs.complete else "<= ", obs.score, trial,
    )  # fmt: skip
    if not obs.complete:
        log.debug(
            "  stopped early after %d of %d examples (%s so far): %s",
            obs.metrics.get("n_seen", 0), obs.metrics.get("n_examples", 0),
            format_accuracy(obs.metrics.get(SO_FAR), so_far_interval(obs.metrics), "%"),
            describe_stop(obs) or "?",
        )  # fmt: skip


def _log_baseline(
    metrics: Mapping[str, Any], chance: float | None, scoring: Any, task: Any
) -> None:
    """The baseline with its interval and chance level, as soon as it is known: a search on a
    model that only guesses is better stopped now than read later."""
    level = "-" if chance is None else f"{100 * chance:.1f}%"
    log.info(
        "baseline: %s on the optimization split (95%% interval), chance level %s",
        format_accuracy(metrics.get("accuracy"), accuracy_interval(metrics), "%"), level,
    )  # fmt: skip
    fewshot = task_fewshot(task)
    for warning in noise_warnings([("optimization", metrics, chance)], scoring, fewshot):
        log.warning("%s", warning)
