"""Core value types shared by searchers, the evaluator and the coordinator.

Pure standard library on purpose: `searchers/` may import this module and nothing else from
tale_opt, so a search strategy never depends on torch, optuna or mlflow.

Layer indices are 0-based everywhere in tale_opt (layer 0 is the first decoder layer).
Scores are always higher-is-better; a perplexity probe reports negative perplexity.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class DropSet:
    """A set of decoder layers to remove: sorted, unique, 0-based indices."""

    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise TypeError(f"layer indices must be int, but got {layer!r}")
            if layer < 0:
                raise ValueError(f"layer indices must be >= 0, but got {layer}")
        object.__setattr__(self, "layers", tuple(sorted(set(layers))))

    @classmethod
    def of(cls, layers: Iterable[int]) -> DropSet:
        return cls(tuple(layers))

    @classmethod
    def parse(cls, key: str) -> DropSet:
        """Inverse of `key`: ``"3,7,12"`` -> DropSet((3, 7, 12)); ``""`` is the empty set."""
        key = key.strip()
        if not key:
            return cls()
        try:
            return cls(tuple(int(part) for part in key.split(",")))
        except ValueError as err:
            raise ValueError(
                f"a drop-set key is comma-separated layer indices like '3,7,12', but got {key!r}"
            ) from err

    @property
    def key(self) -> str:
        """Canonical string form, used as an identity in storage and files."""
        return ",".join(str(layer) for layer in self.layers)

    def add(self, layer: int) -> DropSet:
        return DropSet(self.layers + (layer,))

    def kept(self, num_layers: int) -> tuple[int, ...]:
        """Indices of the layers that remain in a model of `num_layers` layers."""
        if self.layers and self.layers[-1] >= num_layers:
            raise ValueError(
                f"layer {self.layers[-1]} is out of range for a model with {num_layers} "
                f"decoder layers (valid: 0..{num_layers - 1})"
            )
        dropped = set(self.layers)
        return tuple(i for i in range(num_layers) if i not in dropped)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def __str__(self) -> str:
        return "{" + self.key + "}"


@dataclass(frozen=True)
class Candidate:
    """One configuration to evaluate: a drop set and the probe that scores it."""

    drop: DropSet
    probe: str = "task_accuracy"

    @property
    def key(self) -> str:
        return f"{self.probe}:{self.drop.key}"


class Status(enum.StrEnum):
    COMPLETE = "complete"
    # Evaluation stopped early: the candidate provably cannot beat the incumbent (exact
    # early termination), or a racing pruner judged it out of its round (`RACED_OUT`);
    # `score` is then an upper bound on the score a full evaluation would give.
    PRUNED = "pruned"


# `Observation.extras` key of a pruned observation that a racing pruner stopped: the candidate
# lost its round (by the pruner's rule, not by proof), so a searcher settles it (never
# proposes it again); the value says why (pruner, its numbers).
RACED_OUT = "raced_out"
# `Observation.extras` key of a pruned observation that exact early termination stopped: the
# completed rival whose count its upper bound cannot beat ({"drop": key, "n_correct": k}).
BOUNDED_BY = "bounded_by"


@dataclass(frozen=True)
class Observation:
    """The outcome of evaluating a candidate. `score` is higher-is-better."""

    candidate: Candidate
    score: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)
    status: Status = Status.COMPLETE

    @property
    def drop(self) -> DropSet:
        return self.candidate.drop

    @property
    def complete(self) -> bool:
        return self.status is Status.COMPLETE

    @property
    def raced_out(self) -> bool:
        """Stopped by a racing pruner: it lost its round (see `RACED_OUT`)."""
        return self.status is Status.PRUNED and RACED_OUT in self.extras


@dataclass(frozen=True)
class SearchResult:
    """What a finished search hands back.

    `trajectory` lists the accepted configurations in order, starting with the unpruned
    baseline (round 0). `best` is the highest-scoring accepted configuration; `bsba` (best
    speed-up at baseline accuracy) is the one with most layers dropped whose score is still
    >= the baseline's.
    """

    baseline: Observation
    threshold: float | None
    trajectory: tuple[Observation, ...]
    best: Observation
    bsba: Observation
    stop_reason: str
    observations: tuple[Observation, ...]


# -- probes ------------------------------------------------------------------------------------
# The names a `Candidate.probe` takes, and the per-layer metric keys the hidden-state probes
# report (searchers read them from `Observation.metrics`; the evaluator writes them).
TASK_ACCURACY = "task_accuracy"
PERPLEXITY = "perplexity"  # score = -perplexity of the probe text
BLOCK_INFLUENCE = "block_influence"  # metrics block_influence_key(layer)
ANGULAR_DISTANCE = "angular_distance"  # metrics angular_distance_key(layer, n)
PROBES = (TASK_ACCURACY, PERPLEXITY, BLOCK_INFLUENCE, ANGULAR_DISTANCE)
TEXT_PROBES = (PERPLEXITY, BLOCK_INFLUENCE, ANGULAR_DISTANCE)  # read the probe text


def block_influence_key(layer: int) -> str:
    """Metric key of layer `layer`'s Block Influence, 1 - mean cos(input, output)."""
    return f"bi.{layer}"


def angular_distance_key(layer: int, n: int) -> str:
    """Metric key of d(layer, n): the angular distance between the input of `layer` and the
    input of `layer + n` (the output of the block of `n` layers starting at `layer`)."""
    return f"angular.{n}.{layer}"
