"""Mutual information between each layer's output and the answer, for a model and a pick.

What is measured (``mi.target``):

* ``label``: X = the layer's output at the last prompt token, Y = the index of the gold option
  (for prompts that show the options, scored with ``letters`` or ``generate``);
* ``choice``: one pair per (question, option): X = the layer's output at the last token of the
  prompt followed by that option's text, Y = whether it is the gold option. This is what
  ``loglik`` scoring reads: a cloze prompt (``arc_easy_cloze``) never shows the options, so its
  last prompt token cannot hold the gold option's position, and only after reading an option can
  a layer know whether it is the right one;
* ``auto`` (default): ``choice`` for ``loglik`` scoring, ``label`` otherwise.

The pairs are split into training and held-out pairs by question (a question's options stay
together), per seed; each estimator (`estimators`) is fitted on the training pairs of one layer
and evaluated on the held-out ones. Repeating it with ``mi.seeds`` seeds (each its own split and
initialization) gives the spread reported beside each mean.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tale_opt import validate
from tale_opt.analysis.estimators import (
    Features,
    MineSettings,
    entropy_bits,
    mine_bits,
    probe_bits,
)
from tale_opt.errors import ConfigValueError, UsageError

log = logging.getLogger("tale_opt")

TARGETS = ("auto", "label", "choice")


@dataclass(frozen=True)
class MiSettings:
    """``mi.*`` of `python -m tale_opt analyze mi` (see conf/analyze_mi.yaml)."""

    target: str = "auto"
    test_fraction: float = 0.3
    seeds: int = 3
    features: int | None = 64
    l2_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    mine: MineSettings = field(default_factory=MineSettings)

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> MiSettings:
        """The settings of an ``mi`` config node.

        Raises:
            ConfigValueError: An unknown key or a bad value, named ``mi.KEY``.
        """
        node = dict(node or {})
        validate.known_keys(node, [*cls.__dataclass_fields__], "mi")
        mine = dict(node.pop("mine", None) or {})
        validate.known_keys(mine, [*MineSettings.__dataclass_fields__], "mi.mine")
        target = node.get("target", "auto")
        if target not in TARGETS:
            raise ConfigValueError(f"mi.target must be one of {', '.join(TARGETS)}, "
                                   f"but got {target!r}")  # fmt: skip
        fraction = validate.number(node.get("test_fraction", 0.3), "mi.test_fraction",
                                   above=0)  # fmt: skip
        if fraction >= 1:
            raise ConfigValueError(f"mi.test_fraction must be below 1, but got {fraction!r}")
        grid = node.get("l2_grid", cls.l2_grid)
        if not isinstance(grid, Sequence) or not grid:
            raise ConfigValueError(f"mi.l2_grid must be a list of numbers, but got {grid!r}")
        for value in grid:
            validate.number(value, "mi.l2_grid[]", minimum=0)
        try:
            mine_settings = MineSettings(**mine)
        except (TypeError, ValueError) as err:
            raise ConfigValueError(str(err)) from err
        return cls(
            target=str(target),
            test_fraction=float(fraction),
            seeds=validate.integer(node.get("seeds", 3), "mi.seeds", minimum=1),
            features=validate.integer(
                node.get("features", 64), "mi.features", minimum=1, allow_none=True
            ),  # fmt: skip
            l2_grid=tuple(float(v) for v in grid),
            mine=mine_settings,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Pairs:
    """What the estimators read besides the states: per pair its token ids (after the shared
    `prefix`), label, and question (the unit the training / held-out split keeps together)."""

    target: str
    prefix: tuple[int, ...]
    sequences: tuple[tuple[int, ...], ...]
    labels: torch.Tensor
    questions: torch.Tensor
    n_classes: int

    @property
    def entropy(self) -> float:
        """H(Y) of all pairs, in bits: no layer can hold more about Y."""
        return entropy_bits(self.labels)


def resolve_target(target: str, scoring: str) -> str:
    if target != "auto":
        return target
    return "choice" if scoring == "loglik" else "label"


def build_pairs(prepared: Any, target: str) -> Pairs:
    """The pairs of a prepared split (`Evaluator.prepare`: prompts rendered and tokenized as
    evaluation does, continuations tokenized for ``loglik``).

    Raises:
        UsageError: An example without a gold option (a generative task), or ``choice``
            without continuations (prepare with ``loglik`` scoring).
    """
    rows, labels, questions = [], [], []
    for i, (example, prompt) in enumerate(
        zip(prepared.examples, prepared.row_prompt_ids, strict=True)
    ):
        if example.answer_index is None:
            raise UsageError(
                f"example {example.id!r} has no gold option; the mutual information with the "
                "answer needs a multiple-choice task"
            )
        if target == "label":
            rows.append(tuple(prompt))
            labels.append(example.answer_index)
            questions.append(i)
            continue
        if not prepared.continuation_ids:
            raise UsageError("mi.target=choice reads each option's text: use eval.scoring=loglik")
        for j, continuation in enumerate(prepared.continuation_ids[i]):
            rows.append((*prompt, *continuation))
            labels.append(int(j == example.answer_index))
            questions.append(i)
    labels_t = torch.tensor(labels)
    n_classes = int(labels_t.max()) + 1 if target == "label" else 2
    return Pairs(target, tuple(prepared.shared_prefix), tuple(rows), labels_t,
                 torch.tensor(questions), max(n_classes, 2))  # fmt: skip


def held_out_mask(questions: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Which pairs are held out: those of a seeded `fraction` of the questions."""
    ids = torch.unique(questions)
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    n_test = max(1, min(len(ids) - 1, round(fraction * len(ids))))
    return torch.isin(questions, order[:n_test])


def layer_estimates(
    states: torch.Tensor, pairs: Pairs, settings: MiSettings, *, label: str = ""
) -> list[dict[str, Any]]:
    """Per layer (rows of `states`, ``[layers, pairs, hidden]``): both estimators over every
    seed, in bits, with their mean and standard deviation over the seeds. One seed's MINE
    networks of all layers train together (same split, same minibatches)."""
    n_layers = states.shape[0]
    mine: list[list[float]] = [[] for _ in range(n_layers)]
    probe: list[list[float]] = [[] for _ in range(n_layers)]
    chosen: list[list[float]] = [[] for _ in range(n_layers)]
    y = pairs.labels
    for seed in range(settings.seeds):
        test = held_out_mask(pairs.questions, settings.test_fraction, seed)
        train_x, test_x = [], []
        for layer in range(n_layers):
            features = Features(states[layer][~test], settings.features)
            train_x.append(features(states[layer][~test]))
            test_x.append(features(states[layer][test]))
        train, held = torch.stack(train_x), torch.stack(test_x)
        with _one_thread():
            values = mine_bits(train, y[~test], held, y[test], settings.mine, seed=seed,
                               n_classes=pairs.n_classes)  # fmt: skip
            found = probe_bits(train, y[~test], held, y[test], n_classes=pairs.n_classes,
                               l2_grid=settings.l2_grid)  # fmt: skip
        for layer in range(n_layers):
            mine[layer].append(values[layer])
            probe[layer].append(found[layer].bound)
            chosen[layer].append(found[layer].l2)
        log.info("%sseed %d of %d estimated", label, seed + 1, settings.seeds)
    results = []
    for layer in range(n_layers):
        results.append({"mine": _spread(mine[layer]), "probe": _spread(probe[layer]),
                        "probe_l2": chosen[layer]})  # fmt: skip
        log.info("%slayer output %d: MINE %.3f ± %.3f bits, linear probe %.3f ± %.3f bits",
                 label, layer, results[-1]["mine"]["mean"], results[-1]["mine"]["sd"],
                 results[-1]["probe"]["mean"], results[-1]["probe"]["sd"])  # fmt: skip
    return results


@contextmanager
def _one_thread() -> Iterator[None]:
    """The estimators run many small operations: more threads only add synchronization."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    mean = sum(values) / len(values)
    sd = (
        math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        if len(values) > 1
        else 0.0
    )
    return {"mean": mean, "sd": sd, "seeds": list(values)}
