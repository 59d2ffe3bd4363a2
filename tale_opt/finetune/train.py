"""Train the LoRA adapters with the transformers Trainer (accelerate underneath), resumably.

The Trainer writes a checkpoint (adapter, optimizer, scheduler, RNG state, step) every
`save_steps` steps under ``checkpoints/``; started again on the same output directory, training
resumes from the last one instead of step 0, so a killed fine-tune loses at most `save_steps`
steps. Each logged step (training loss, learning rate) goes to `on_log` as it happens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tale_opt.finetune.data import SequenceCollator, TrainingSequence
from tale_opt.finetune.settings import FinetuneSettings

log = logging.getLogger("tale_opt")

CHECKPOINTS = "checkpoints"


@dataclass
class TrainingOutcome:
    """What training did: steps, the logged loss curve, and whether it resumed."""

    global_step: int
    history: list[dict[str, float]]  # one entry per logged step: step, epoch, loss, lr
    resumed_from: str | None
    train_runtime_s: float | None


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest Trainer checkpoint under `out_dir`/checkpoints, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = out_dir / CHECKPOINTS
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def training_arguments(settings: FinetuneSettings, out_dir: Path, use_cpu: bool) -> Any:
    from transformers import TrainingArguments

    warmup = settings.warmup
    return TrainingArguments(
        output_dir=str(out_dir / CHECKPOINTS),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accumulation,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=int(warmup) if warmup >= 1 else warmup,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        num_train_epochs=settings.epochs if settings.epochs is not None else 1.0,
        max_steps=settings.max_steps if settings.max_steps is not None else -1,
        optim=settings.optimizer,
        bf16=settings.dtype == "bfloat16" and not use_cpu,
        fp16=settings.dtype == "float16",
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        report_to="none",  # tracking goes through tale_opt.tracking (`on_log`)
        use_cpu=use_cpu,
        remove_unused_columns=False,  # our batches are built by SequenceCollator
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def _callback(on_log: Callable[[int, Mapping[str, float]], None] | None) -> Any:
    from transformers import TrainerCallback

    class LogForwarder(TrainerCallback):
        """Hands every logged step (loss, learning rate, grad norm) to `on_log`."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log is not None and logs:
                numbers = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
                on_log(int(state.global_step), numbers)

    return LogForwarder()


def train(
    peft_model: Any,
    sequences: Sequence[TrainingSequence],
    pad_id: int,
    settings: FinetuneSettings,
    out_dir: Path,
    *,
    use_cpu: bool,
    on_log: Callable[[int, Mapping[str, float]], None] | None = None,
) -> TrainingOutcome:
    """Train `peft_model` on `sequences`, resuming from the newest checkpoint under `out_dir`.

    Returns:
        The step reached, the loss curve (all of it, also the part before a resume: the
        Trainer restores it from the checkpoint) and the checkpoint resumed from.
    """
    from transformers import Trainer

    resume = last_checkpoint(out_dir)
    if resume is not None:
        log.info("resuming training from %s", resume)
    trainer = Trainer(
        model=peft_model,
        args=training_arguments(settings, out_dir, use_cpu),
        train_dataset=list(sequences),
        data_collator=SequenceCollator(pad_id),
        callbacks=[_callback(on_log)],
    )
    result = trainer.train(resume_from_checkpoint=resume)
    history = [
        {
            "step": int(entry["step"]),
            "epoch": float(entry.get("epoch", 0.0)),
            "loss": float(entry["loss"]),
            "learning_rate": float(entry.get("learning_rate", 0.0)),
        }
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    runtime = (result.metrics or {}).get("train_runtime")
    return TrainingOutcome(trainer.state.global_step, history, resume, runtime)
