"""Run one fine-tune end to end, resumably: held-out accuracy of the starting model, LoRA
training, merge and export, held-out accuracy of the result, summary and tracking.

Each step leaves a file behind and is skipped when it is there, so the same command started
again after a kill picks up where it stopped: ``heldout_before.json``, the Trainer's
checkpoints (training resumes mid-way), ``adapter/``, ``merged/``, ``finetune_summary.json``.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.finetune import outputs
from tale_opt.finetune.data import encode_training, training_examples
from tale_opt.finetune.heldout import (
    HeldoutScorer,
    paired_by_id,
    predictions,
    search_predictions_file,
)
from tale_opt.finetune.job import FinetuneJob
from tale_opt.finetune.lineage import lineage_of
from tale_opt.finetune.lora import (
    add_lora,
    check_target_modules,
    load_pruned,
    trainable_parameters,
)
from tale_opt.finetune.merge import merge_adapter
from tale_opt.finetune.train import train
from tale_opt.model.loading import ModelSpec, load_model, model_skeleton, resolve_device
from tale_opt.model.surgery import num_decoder_layers
from tale_opt.pipeline.outputs import heldout_tflops
from tale_opt.pipeline.significance import chance_level
from tale_opt.tasks.registry import build_task, load_splits
from tale_opt.tracking.finetune_run import FinetuneRun

log = logging.getLogger("tale_opt")

# Training log keys that go to the tracker as step series.
STEP_METRICS = {"loss": "train.loss", "learning_rate": "train.learning_rate",
                "grad_norm": "train.grad_norm", "epoch": "train.epoch"}  # fmt: skip


def run_finetune(job: FinetuneJob) -> dict[str, Any]:
    """Fine-tune `job`'s model, or finish a fine-tune that was stopped; returns the summary.

    Raises:
        UsageError: Bad settings or data, or an output directory of another fine-tune.
    """
    out = job.out_dir
    done = out / outputs.SUMMARY_JSON
    if done.is_file():
        job.claim_out_dir()  # the same settings, or an error: never report another job
        log.info("%s is a finished fine-tune; nothing to do", out)
        return json.loads(done.read_text())
    spec = ModelSpec(**job.model)
    skeleton = model_skeleton(spec)  # no weights: bad names fail before any work is done
    check_target_modules(skeleton, job.settings.target_modules)
    started = time.perf_counter()
    task = build_task(job.task)
    splits = load_splits(job.task, seed=job.seed, n_opt=job.n_opt, n_eval=job.n_eval)
    _check_same_splits(job, splits)
    examples, data_info = training_examples(job.task, splits, job.settings.seed, job.settings.data)
    job.claim_out_dir()  # every check passed: only now is anything written
    scorer = HeldoutScorer(job.eval, task, splits.evaluation)
    run = FinetuneRun.start(
        job.tracking, base_dir=job.launch_dir, params=_params(job), tags=_tags(job, task),
        run_key=job.key(), run_name=f"finetune {task.name} drop {job.drop.key or 'none'}",
        parent_run_id=job.parent_run_id,
    )  # fmt: skip
    try:
        summary = _run(job, spec, task, splits, examples, data_info, scorer, run, started)
    except BaseException as err:
        run.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    run.finish()
    return summary


def _run(job, spec, task, splits, examples, data_info, scorer, run, started) -> dict[str, Any]:
    out = job.out_dir
    before = _heldout_before(job, spec, scorer)
    scored = time.perf_counter()
    training = _training(job, spec, task, examples, run)
    trained = time.perf_counter()
    merged = _merged(job, spec)
    merged_at = time.perf_counter()
    result, tflops = scorer.score(merged["model"], merged["tokenizer"])
    after_rows = predictions(result)
    outputs.write_predictions(out, "heldout_after", after_rows)
    after = scorer.record(result, tflops)
    after["vs_start"] = paired_by_id(after_rows, outputs.read_predictions(out, "heldout_before"))
    finished = time.perf_counter()
    lineage = merged["lineage"]
    summary = {
        "origin": job.origin,
        "model": job.model.get("path"),
        "task": task.name,
        "scoring": job.eval.get("scoring"),
        "seed": job.seed,
        "drop_in_start": list(job.drop.layers),
        "dropped_layers": list(lineage.dropped.layers),  # in the original model's numbering
        "original_num_layers": lineage.original_num_layers,
        "num_layers": len(lineage.kept),
        "settings": job.settings.as_dict(),
        "training": {**training, "data": {k: v for k, v in data_info.items() if k != "ids"}},
        "heldout": {
            "n": len(splits.evaluation),
            "chance_accuracy": chance_level(task, splits.evaluation),
            "before": before,
            "after": after,
        },
        "adapter": str(out / outputs.ADAPTER),
        "merged": str(merged["path"]),
        "max_logit_diff": merged["max_logit_diff"],
        "tracking": {"uri": run.uri, "run_id": run.run_id, "parent_run_id": job.parent_run_id},
        "timings": {
            "heldout_before_s": round(scored - started, 2),
            "training_s": round(trained - scored, 2),
            "merge_s": round(merged_at - trained, 2),
            "heldout_after_s": round(finished - merged_at, 2),
            "total_s": round(finished - started, 2),
        },
    }
    outputs.write_summary(out, summary)
    run.log_result(_result_metrics(summary), {"tale_opt.merged": str(merged["path"])})
    run.log_artifacts(out / outputs.ADAPTER, "adapter")
    for name in (outputs.SUMMARY_JSON, outputs.SUMMARY_MD, outputs.LOSS_CSV, outputs.LOSS_PNG):
        if (out / name).is_file():
            run.log_file(out / name)
    print(outputs.summary_markdown(summary))
    return summary


def _check_same_splits(job: FinetuneJob, splits: Any) -> None:
    want = job.origin.get("splits_fingerprint")
    if want and want != splits.fingerprint:
        raise UsageError(
            f"the splits drawn now differ from those of the search in {job.origin.get('run_dir')} "
            "(its data files or task config changed since), so its held-out split cannot be "
            "told apart from training data; run the search again"
        )


def _heldout_before(job: FinetuneJob, spec: ModelSpec, scorer: HeldoutScorer) -> dict:
    """The starting model's held-out record (scored once; read back on a resume). A pick of a
    search was scored by the search itself, on this split with these evaluator options (the
    splits' fingerprint was checked): its record and predictions are taken from there."""
    saved = job.out_dir / outputs.BEFORE_JSON
    if saved.is_file() and outputs.has_predictions(job.out_dir, "heldout_before"):
        return json.loads(saved.read_text())
    reused = _search_heldout(job)
    if reused is not None:
        record, rows = reused
        outputs.write_predictions(job.out_dir, "heldout_before", rows)
        outputs.write_json(saved, record)
        return record
    log.info("held-out accuracy of the starting model (drop %s)", job.drop.key or "none")
    model, tokenizer = load_model(spec)
    result, tflops = scorer.score(model, tokenizer, job.drop)
    record = scorer.record(result, tflops)
    outputs.write_predictions(job.out_dir, "heldout_before", predictions(result))
    outputs.write_json(saved, record)
    del model
    gc.collect()
    return record


def _search_heldout(job: FinetuneJob) -> tuple[dict, list[dict]] | None:
    """The search's held-out record and predictions of the pick fine-tuned, if it has them."""
    if job.origin.get("kind") != "search":
        return None
    run_dir, pick = Path(job.origin["run_dir"]), job.origin["pick"]
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    rows_file = search_predictions_file(run_dir, summary, pick)
    entry = summary.get(pick) or {}
    if rows_file is None:
        return None
    tflops = heldout_tflops(entry)
    if "heldout" not in entry or tflops is None:
        return None
    skip = ("vs_baseline", "tflops", "tflops_per_example")
    record = {k: v for k, v in entry["heldout"].items() if k not in skip}
    record["tflops_per_example"] = tflops / max(1, summary["n_eval"])
    record["scored_by"] = str(run_dir)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    return record, rows


def _training(job: FinetuneJob, spec: ModelSpec, task: Any, examples: list, run: Any) -> dict:
    """Train (or resume training) unless the adapter is saved; returns the training record."""
    out, settings = job.out_dir, job.settings
    saved = out / outputs.TRAINING_JSON
    if saved.is_file() and (out / outputs.ADAPTER / "adapter_config.json").is_file():
        return json.loads(saved.read_text())
    model, tokenizer = load_pruned(spec, job.drop, settings.dtype, settings.quantization)
    sequences, too_long = encode_training(
        task, tokenizer, examples,
        scoring=job.eval.get("scoring", "letters"),
        chat_template=job.eval.get("chat_template", True),
        max_length=settings.data.max_length,
    )  # fmt: skip
    layers = num_decoder_layers(model)
    peft_model = add_lora(model, settings)
    trainable, total = trainable_parameters(peft_model)
    log.info(
        "training %d LoRA parameters of %d (%d layers) on %d examples (%d too long, left out)",
        trainable, total, layers, len(sequences), too_long,
    )  # fmt: skip

    def on_log(step: int, logs: dict[str, float]) -> None:
        run.log_step(step, {STEP_METRICS[k]: v for k, v in logs.items() if k in STEP_METRICS})

    outcome = train(
        peft_model, sequences, tokenizer.pad_token_id, settings, out,
        use_cpu=resolve_device(spec.device) == "cpu", on_log=on_log,
    )  # fmt: skip
    peft_model.save_pretrained(str(out / outputs.ADAPTER))
    tokenizer.save_pretrained(str(out / outputs.ADAPTER))
    outputs.write_loss_curve(out, outcome.history)
    losses = [h["loss"] for h in outcome.history]
    record = {
        "n_sequences": len(sequences),
        "too_long": too_long,
        "answer_tokens": sum(s.answer_tokens for s in sequences),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "num_layers": layers,
        "steps": outcome.global_step,
        "resumed_from": outcome.resumed_from,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_runtime_s": outcome.train_runtime_s,
    }
    outputs.write_json(saved, record)
    del peft_model, model
    gc.collect()
    return record


def _merged(job: FinetuneJob, spec: ModelSpec) -> dict[str, Any]:
    """The merged model: merged and exported now, or loaded from a previous run's export."""
    out = job.out_dir
    lineage = lineage_of(spec.path, _layer_count(spec)).then_drop(job.drop)
    meta = out / outputs.MERGED / "tale_opt_export.json"
    record_file = out / outputs.MERGE_JSON
    if meta.is_file() and record_file.is_file():
        model, tokenizer = load_model(
            ModelSpec(**{**job.model, "path": str(out / outputs.MERGED)})
        )
        diff = json.loads(record_file.read_text())["max_logit_diff"]
        return {"model": model, "tokenizer": tokenizer, "path": out / outputs.MERGED,
                "max_logit_diff": diff, "lineage": lineage}  # fmt: skip
    merged = merge_adapter(
        spec, job.drop, out / outputs.ADAPTER, out / outputs.MERGED,
        lineage=lineage, dtype=spec.dtype,
        metadata={"finetune": {"adapter": str(out / outputs.ADAPTER),
                               "settings": job.settings.as_dict(), "origin": job.origin}},
    )  # fmt: skip
    outputs.write_json(record_file, {"max_logit_diff": merged.max_logit_diff})
    log.info("merged checkpoint %s (reload max |logit diff| %.2e)", merged.path,
             merged.max_logit_diff)  # fmt: skip
    return {"model": merged.model, "tokenizer": merged.tokenizer, "path": merged.path,
            "max_logit_diff": merged.max_logit_diff, "lineage": lineage}  # fmt: skip


def _layer_count(spec: ModelSpec) -> int:
    return num_decoder_layers(model_skeleton(spec))


def _params(job: FinetuneJob) -> dict[str, Any]:
    return {
        "finetune": job.settings.as_dict(),
        "model": job.model,
        "drop": job.drop.key or "none",
        "task": job.task.get("name"),
        "seed": job.seed,
        "origin": job.origin,
    }


def _tags(job: FinetuneJob, task: Any) -> dict[str, str]:
    return {
        "task": task.name,
        "model": str(job.model.get("path")),
        "drop": job.drop.key or "none",
        "origin": str(job.origin.get("kind")),
    }


def _result_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    held = summary["heldout"]
    metrics = {
        "heldout.before.accuracy": held["before"].get("accuracy"),
        "heldout.after.accuracy": held["after"].get("accuracy"),
        "heldout.after.accuracy_ci_low": held["after"].get("accuracy_ci_low"),
        "heldout.after.accuracy_ci_high": held["after"].get("accuracy_ci_high"),
        "heldout.after.vs_start.p_value": held["after"]["vs_start"].get("p_value"),
        "heldout.after.tflops_per_example": held["after"].get("tflops_per_example"),
        "num_layers": summary["num_layers"],
        "n_dropped": len(summary["dropped_layers"]),
        "train.final_loss": summary["training"].get("final_loss"),
    }
    return {k: v for k, v in metrics.items() if v is not None}
