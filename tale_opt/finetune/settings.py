"""The `finetune` config node, checked: LoRA shape, optimizer and schedule, training length,
batch, precision, and the training data.

Every value is checked here, before any model is read, so a typo or a zero step count costs a
second, not a model load. Which module names `target_modules` may hold depends on the model;
that check runs once the model is loaded (`lora.check_target_modules`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tale_opt import validate
from tale_opt.errors import ConfigValueError, did_you_mean

# transformers' SchedulerType values that need no extra arguments.
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
    "constant_with_warmup", "inverse_sqrt",
)  # fmt: skip
# Optimizers of the Trainer (`optim`); the paged and 8-bit ones need bitsandbytes and a GPU.
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adafactor", "sgd",
    "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit", "adamw_bnb_8bit",
)  # fmt: skip
DTYPES = ("float32", "bfloat16", "float16")
# null: train the model in `dtype`; nf4: 4-bit NormalFloat weights (QLoRA; bitsandbytes, CUDA).
QUANTIZATIONS = (None, "nf4")
ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output head
DATA_KEYS = ("n_train", "max_length", "demos", "source")
KEYS = (
    "rank", "alpha", "dropout", "target_modules", "learning_rate", "lr_scheduler",
    "warmup", "weight_decay", "max_grad_norm", "epochs", "max_steps", "batch_size",
    "grad_accumulation", "optimizer", "dtype", "quantization", "seed", "logging_steps",
    "save_steps", "save_total_limit", "data",
)  # fmt: skip


@dataclass(frozen=True)
class TrainingData:
    """Which examples the fine-tune trains on.

    Attributes:
        n_train: How many training examples (None: every example left after the search's
            parts are taken out).
        max_length: Examples whose prompt plus answer is longer (tokens) are left out.
        demos: Show the task's few-shot demonstrations in the training prompts too (longer
            sequences; the held-out prompts show them either way).
        source: A data source of the task's shape to train on (e.g. the task's official
            train split); None carves the training part out of the task's own pool.
    """

    n_train: int | None
    max_length: int
    demos: bool
    source: Mapping[str, Any] | None


@dataclass(frozen=True)
class FinetuneSettings:
    """A checked `finetune` node; see conf/finetune/cpu.yaml for what each key means."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...] | str
    learning_rate: float
    lr_scheduler: str
    warmup: float
    weight_decay: float
    max_grad_norm: float
    epochs: float | None
    max_steps: int | None
    batch_size: int
    grad_accumulation: int
    optimizer: str
    dtype: str
    quantization: str | None
    seed: int
    logging_steps: int
    save_steps: int
    save_total_limit: int | None
    data: TrainingData

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> FinetuneSettings:
        """Check every value of a `finetune` node.

        Raises:
            ConfigValueError: The first bad key or value, named as ``finetune.KEY``.
        """
        node = dict(node)
        validate.known_keys(node, KEYS, "finetune")
        missing = [k for k in KEYS if k not in node]
        if missing:
            raise ConfigValueError(
                f"finetune.{missing[0]} is missing; start from a shipped config "
                "(finetune=cpu or finetune=paper_qlora) and override single keys"
            )
        epochs = validate.number(node["epochs"], "finetune.epochs", above=0, allow_none=True)
        max_steps = _steps(node["max_steps"], epochs)

        def integer(key: str, **bounds: Any) -> Any:
            return validate.integer(node[key], f"finetune.{key}", **bounds)

        def number(key: str, **bounds: Any) -> Any:
            return validate.number(node[key], f"finetune.{key}", **bounds)

        def choice(key: str, choices: Sequence[Any]) -> Any:
            return _choice(node[key], choices, f"finetune.{key}")

        return cls(
            rank=integer("rank", minimum=1),
            alpha=number("alpha", above=0),
            dropout=number("dropout", minimum=0, maximum=0.99),
            target_modules=_target_modules(node["target_modules"]),
            learning_rate=number("learning_rate", above=0),
            lr_scheduler=choice("lr_scheduler", SCHEDULERS),
            warmup=_warmup(node["warmup"]),
            weight_decay=number("weight_decay", minimum=0),
            max_grad_norm=number("max_grad_norm", above=0),
            epochs=epochs,
            max_steps=max_steps,
            batch_size=integer("batch_size", minimum=1),
            grad_accumulation=integer("grad_accumulation", minimum=1),
            optimizer=choice("optimizer", OPTIMIZERS),
            dtype=choice("dtype", DTYPES),
            quantization=choice("quantization", QUANTIZATIONS),
            seed=integer("seed", minimum=0),
            logging_steps=integer("logging_steps", minimum=1),
            save_steps=integer("save_steps", minimum=1),
            save_total_limit=integer("save_total_limit", minimum=1, allow_none=True),
            data=_data(node["data"]),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what a finished fine-tune records, and what a resume must match."""
        out = asdict(self)
        if isinstance(self.target_modules, tuple):
            out["target_modules"] = list(self.target_modules)
        out["data"]["source"] = dict(self.data.source) if self.data.source else None
        return out


def _steps(value: Any, epochs: float | None) -> int | None:
    """`max_steps`: a positive count, or null to train `epochs` epochs; never zero steps."""
    steps = validate.integer(value, "finetune.max_steps", minimum=1, allow_none=True)
    if steps is None and epochs is None:
        raise ConfigValueError(
            "finetune.max_steps and finetune.epochs are both null, so training has no length; "
            "set finetune.max_steps=100 or finetune.epochs=3"
        )
    return steps


def _target_modules(value: Any) -> tuple[str, ...] | str:
    if value == ALL_LINEAR:
        return ALL_LINEAR
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigValueError(
            f"finetune.target_modules must be a non-empty list of module names (e.g. "
            f"[q_proj, v_proj]) or '{ALL_LINEAR}', but got {value!r}"
        )
    for name in value:
        if not isinstance(name, str) or not name:
            raise ConfigValueError(f"finetune.target_modules has a bad entry {name!r}")
    return tuple(value)


def _warmup(value: Any) -> float:
    """A fraction of the training steps in [0, 1), or a whole number of steps (>= 1)."""
    warmup = validate.number(value, "finetune.warmup", minimum=0)
    if warmup >= 1 and warmup != int(warmup):
        raise ConfigValueError(
            f"finetune.warmup must be a fraction of the steps in [0, 1) or a whole number of "
            f"steps, but got {value!r}"
        )
    return warmup


def _choice(value: Any, choices: Sequence[Any], key: str) -> Any:
    if value not in choices:
        names = [str(c) if c is not None else "null" for c in choices]
        raise ConfigValueError(f"{key}: unknown value {value!r}.{did_you_mean(str(value), names)}")
    return value


def _data(node: Any) -> TrainingData:
    if not isinstance(node, Mapping):
        raise ConfigValueError(f"finetune.data must be a mapping, but got {node!r}")
    node = dict(node)
    validate.known_keys(node, DATA_KEYS, "finetune.data")
    source = node.get("source")
    if source is not None and not isinstance(source, Mapping):
        raise ConfigValueError(
            f"finetune.data.source must be a task source like {{path: train.jsonl}} or null, "
            f"but got {source!r}"
        )
    return TrainingData(
        n_train=validate.integer(
            node.get("n_train"), "finetune.data.n_train", minimum=1, allow_none=True
        ),
        max_length=validate.integer(
            node.get("max_length", 512), "finetune.data.max_length", minimum=2
        ),
        demos=validate.boolean(node.get("demos", False), "finetune.data.demos"),
        source=dict(source) if source is not None else None,
    )
