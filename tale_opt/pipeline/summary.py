"""What a finished search reports: its picks, their costs and their held-out accuracy.

The picks are Baseline, Best, BSBA (paper), AE-HM (appendix J) and Final (the last accepted
configuration: most layers dropped; with `n_drop=k`, the one with k). AE-HM uses the measured
speed-up where latency was measured and the measurement is credible (within what removing the
layers can give, against the full model timed in the same loop), and the layer-count estimate
otherwise; each pick records which one it got (``speedup_source``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from searchers.selection import layer_count_speedup, pick_ae_hm
from tale_opt.pipeline.candidates import prediction_rows
from tale_opt.pipeline.outputs import HELDOUT, RunWriter, observation_record
from tale_opt.pipeline.significance import (
    chance_level,
    heldout_record,
    heldout_warnings,
    noise_warnings,
    round_tests,
    task_fewshot,
)
from tale_opt.stats import ALPHA, CONFIDENCE
from tale_opt.types import TASK_ACCURACY, DropSet, Observation, SearchResult

log = logging.getLogger("tale_opt")

PICKS = ("baseline", "best", "bsba", "ae_hm", "final")


def accepted_costs(
    evaluator: Any, trajectory: Sequence[Observation], latency: Any, prepared: Any
) -> dict[DropSet, dict[str, Any]]:
    """TFLOPs of the held-out evaluation and (unless latency=null) measured latency of every
    accepted configuration, on this process's device."""
    from tale_opt.cost.bench import pick_costs

    names = {obs.drop.key or "baseline": obs.drop for obs in trajectory}
    if latency is not None:
        log.info(
            "measuring latency of %d accepted configuration(s), interleaved with the full "
            "model: %d repeat(s) × batch size(s) %s",
            len(names), latency.repeats, ",".join(str(b) for b in latency.batch_sizes),
        )  # fmt: skip
    costs = pick_costs(
        evaluator.model,
        names,
        latency,
        prepared=prepared,
        max_new_tokens=evaluator.max_new_tokens,
        progress=lambda line: log.info("latency: %s", line),
    )
    for name, cost in costs.items():
        if "speedup_check" in cost and names[name]:
            _log_speedup(names[name], cost["speedup_check"])
    return {names[name]: cost for name, cost in costs.items()}


def _log_speedup(drop: DropSet, check: Mapping[str, Any]) -> None:
    spread = f"repeats {check['low']:.2f}–{check['high']:.2f}×"
    if check["credible"]:
        log.info("drop %s: measured speed-up %.2f× (%s)", drop, check["measured"], spread)
        return
    log.warning(
        "drop %s: %s (%s), so not credible; using the layer-count estimate %.3f× instead",
        drop, check["reason"], spread, check["ceiling"],
    )  # fmt: skip


def evaluate_heldout(
    evaluator: Any, prepared: Any, picks: dict[str, Observation], writer: RunWriter
) -> dict[str, Any]:
    """Evaluate each picked configuration once on the held-out split (touched only now).

    Each pick's entry holds its metrics (accuracy with a 95% interval), its most frequent
    answer, and, for every pick but the Baseline, the exact McNemar test against the
    Baseline on these same examples.
    """
    heldout: dict[str, Any] = {}
    by_drop: dict[str, Any] = {}
    baseline = None
    for pick, obs in picks.items():
        if obs.drop.key not in by_drop:
            res = evaluator.evaluate(prepared, obs.drop, progress=f"held-out {pick}")
            by_drop[obs.drop.key] = res
            writer.write_predictions(f"heldout_{pick}", prediction_rows(res))
        res = by_drop[obs.drop.key]
        if pick == "baseline":
            baseline = res
        reference = None if pick == "baseline" else baseline
        heldout[pick] = heldout_record(evaluator.task, res, prepared.examples, reference)
    return heldout


def _speedup(num_layers: int, costs: Mapping[DropSet, Mapping[str, Any]]):
    """Measured speed-up where latency was measured, else the layer-count estimate."""
    estimate = layer_count_speedup(num_layers)

    def speedup(obs: Observation) -> float:
        measured = costs.get(obs.drop, {}).get("speedup_measured")
        return float(measured) if measured is not None else estimate(obs)

    return speedup


def pick_configurations(
    result: SearchResult, num_layers: int, lam: float, costs: Mapping[DropSet, Mapping[str, Any]]
) -> dict[str, Observation]:
    speedup = _speedup(num_layers, costs)
    aehm = pick_ae_hm(result.trajectory, result.baseline.score, lam, speedup)
    return {
        "baseline": result.baseline,
        "best": result.best,
        "bsba": result.bsba,
        "ae_hm": aehm,
        "final": result.trajectory[-1],
    }


def with_costs(
    record: Mapping[str, Any],
    cost: Mapping[str, Any],
    n_eval: int,
    heldout: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`record` with an accepted configuration's costs: latency and measured speed-up as they
    are, the TFLOPs of evaluating the held-out split under `HELDOUT` beside that split's
    `heldout` metrics (the record's optimization TFLOPs stay under `OPT`)."""
    cost = dict(cost)
    held = dict(heldout or {})
    tflops = cost.pop("tflops", None)
    if tflops is not None:
        held["tflops"] = tflops
        held["tflops_per_example"] = tflops / max(1, n_eval)
    return {**record, **cost, **({HELDOUT: held} if held else {})}


def build_summary(plan: Any, result, picks, heldout, costs, tasks=None) -> dict[str, Any]:
    """summary.json: the search's settings, trajectory and every pick with its held-out metrics.

    `tasks`: ``(fields, warnings)`` of a multi-task search (`multitask_heldout.suite_fields`);
    a single-task search's are computed here (`task_fields`).
    """
    cfg, num_layers = plan.cfg, plan.num_layers
    fields, warnings = tasks if tasks is not None else task_fields(plan, result, heldout)
    estimate = layer_count_speedup(num_layers)
    # Held-out examples the costs' TFLOPs were measured on (a multi-task search: every
    # task's held-out split, whose TFLOPs its costs add up).
    n_eval = fields["n_eval"]
    configs = {}
    speedup = _speedup(num_layers, costs)
    for name, obs in picks.items():
        cost = costs.get(obs.drop, {})
        record = {
            **observation_record(obs),
            "n_layers": num_layers - len(obs.drop),
            "speedup_estimate": round(estimate(obs), 4),
            # What AE-HM and the table use: measured when credible, else the estimate.
            "speedup": round(speedup(obs), 4),
            "speedup_source": "measured" if "speedup_measured" in cost else "estimated",
        }
        configs[name] = with_costs(record, cost, n_eval, heldout[name])
    accuracy_probe = result.baseline.candidate.probe == TASK_ACCURACY
    return {
        "model": cfg["model"].get("name", cfg["model"].get("path")),
        "model_path": cfg["model"].get("path"),
        "task": fields["task"],
        "searcher": cfg["searcher"].get("name"),
        "probe": plan.searcher.probe,  # what ranks the layers
        "probe_text": plan.searcher.text,  # what a text probe reads (None: no text)
        # What every `score` below is (one-shot searchers rank by a probe, then score accuracy).
        "score_probe": result.baseline.candidate.probe,
        "scoring": fields["scoring"],
        "seed": cfg["seed"],
        "num_layers": num_layers,
        "n_opt": fields["n_opt"],
        "n_eval": fields["n_eval"],
        "splits_fingerprint": fields["splits_fingerprint"],
        "prompt_version": fields["prompt_version"],
        "epsilon": cfg["searcher"].get("epsilon"),
        "baseline_accuracy": result.baseline.score,
        "threshold": result.threshold,
        "stop_reason": result.stop_reason,
        "ae_hm_lambda": plan.lam,
        "trajectory": [
            with_costs(observation_record(obs), costs.get(obs.drop, {}), n_eval)
            for obs in result.trajectory
        ],
        # 95% Wilson intervals (accuracy_ci_low/high) on every accuracy; paired exact McNemar
        # tests against the Baseline at this level.
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "chance_accuracy": fields["chance_accuracy"],
        "rounds_vs_baseline": round_tests(result.trajectory) if accuracy_probe else [],
        "warnings": warnings,
        **{k: v for k, v in fields.items() if k not in _TASK_FIELDS},  # e.g. multi-task `tasks`
        **configs,
    }


# What `task_fields` gives every summary; a multi-task search adds its per-task entries.
_TASK_FIELDS = ("task", "scoring", "n_opt", "n_eval", "splits_fingerprint", "prompt_version",
                "chance_accuracy")  # fmt: skip


def task_fields(plan: Any, result: SearchResult, heldout: Mapping[str, Any]) -> tuple:
    """The summary fields of a single-task search's task and splits, and its warnings."""
    task, splits = plan.task, plan.splits
    scoring = plan.cfg["eval"].get("scoring")
    chance = {
        "optimization": chance_level(task, splits.optimization),
        "heldout": chance_level(task, splits.evaluation),
    }
    accuracy_probe = result.baseline.candidate.probe == TASK_ACCURACY
    warnings = noise_warnings(
        [
            ("optimization", result.baseline.metrics if accuracy_probe else None,
             chance["optimization"]),
            ("held-out", heldout.get("baseline"), chance["heldout"]),
        ],
        scoring,
        task_fewshot(task),
    ) + heldout_warnings(heldout, len(splits.optimization))  # fmt: skip
    fields = {
        "task": task.name,
        "scoring": scoring,
        "n_opt": len(splits.optimization),
        "n_eval": len(splits.evaluation),
        "splits_fingerprint": splits.fingerprint,
        "prompt_version": task.prompt_version,
        "chance_accuracy": chance,
    }
    return fields, warnings
