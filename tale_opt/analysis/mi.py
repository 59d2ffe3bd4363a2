"""Mutual information between each layer's output and the answer, for a model and a pick.

What is measured (``mi.target``):

* ``label``: X = the layer's output at the last prompt token, Y = the index of the gold option
  (for prompts that show the options, scored with ``letters`` or ``generate``);
* ``choice``: X = the layer's outputs at the last token of the prompt followed by each
  option's text (all options of the question together), Y = the index of the gold option. This
  is what ``loglik`` scoring reads: a cloze prompt (``arc_easy_cloze``) never shows the options,
  so its last prompt token cannot hold which one is right; only after reading an option can a
  layer tell, and only by comparison with the others. The estimators score each option's
  representation with one shared function and compare the scores within the question
  (`estimators`, ``per_option``). Questions with another number of options than the most
  common one are left out (their Y has other values).
* ``auto`` (default): ``choice`` for ``loglik`` scoring, ``label`` otherwise.

Per seed the questions are split into training and held-out ones; each estimator is fitted on
the training questions of one layer and evaluated on the held-out ones. Repeating it with
``mi.seeds`` seeds (each its own split and initialization) gives the spread reported beside
each mean.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
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
    """What the estimators read besides the states: the token ids to run (after the shared
    `prefix`; with ``choice``, each question's options one after another), and per question its
    label, the gold option's index."""

    target: str
    prefix: tuple[int, ...]
    sequences: tuple[tuple[int, ...], ...]
    labels: torch.Tensor  # [questions]
    n_classes: int
    options: int = 1  # sequences per question (``choice``: the options)
    left_out: int = 0  # questions without the common number of options (``choice``)

    @property
    def n_questions(self) -> int:
        return len(self.labels)

    @property
    def entropy(self) -> float:
        """H(Y) of the questions, in bits: no layer can hold more about Y."""
        return entropy_bits(self.labels)

    def arrange(self, states: torch.Tensor) -> torch.Tensor:
        """A layer's states of `sequences` (``[sequences, hidden]``) per question:
        ``[questions, hidden]``, or ``[questions, options, hidden]`` for ``choice``."""
        if self.options == 1:
            return states
        return states.view(self.n_questions, self.options, states.shape[-1])


def resolve_target(target: str, scoring: str) -> str:
    if target != "auto":
        return target
    return "choice" if scoring == "loglik" else "label"


def build_pairs(prepared: Any, target: str) -> Pairs:
    """The samples of a prepared split (`Evaluator.prepare`: prompts rendered and tokenized as
    evaluation does, continuations tokenized for ``loglik``).

    Raises:
        UsageError: An example without a gold option (a generative task), or ``choice``
            without continuations (prepare with ``loglik`` scoring).
    """
    for example in prepared.examples:
        if example.answer_index is None:
            raise UsageError(
                f"example {example.id!r} has no gold option; the mutual information with the "
                "answer needs a multiple-choice task"
            )
    labels = [example.answer_index for example in prepared.examples]
    prefix = tuple(prepared.shared_prefix)
    if target == "label":
        n_classes = max(max(labels) + 1, 2)
        return Pairs(target, prefix, tuple(tuple(p) for p in prepared.row_prompt_ids),
                     torch.tensor(labels), n_classes)  # fmt: skip
    if not prepared.continuation_ids:
        raise UsageError("mi.target=choice reads each option's text: use eval.scoring=loglik")
    counts = Counter(len(c) for c in prepared.continuation_ids)
    options = counts.most_common(1)[0][0]
    rows, kept = [], []
    for i, prompt in enumerate(prepared.row_prompt_ids):
        if len(prepared.continuation_ids[i]) != options:
            continue
        rows += [(*prompt, *continuation) for continuation in prepared.continuation_ids[i]]
        kept.append(labels[i])
    return Pairs(target, prefix, tuple(rows), torch.tensor(kept), options, options,
                 len(labels) - len(kept))  # fmt: skip


def held_out_mask(n_questions: int, fraction: float, seed: int) -> torch.Tensor:
    """Which questions are held out: a seeded `fraction` of them (at least one on each side)."""
    order = torch.randperm(n_questions, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, min(n_questions - 1, round(fraction * n_questions)))
    mask = torch.zeros(n_questions, dtype=torch.bool)
    mask[order[:n_test]] = True
    return mask


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
    per_option = pairs.options > 1
    for seed in range(settings.seeds):
        test = held_out_mask(pairs.n_questions, settings.test_fraction, seed)
        train_x, test_x = [], []
        for layer in range(n_layers):
            x = pairs.arrange(states[layer])
            # Fitted on the training questions' states (every option's, for `choice`).
            features = Features(x[~test].reshape(-1, x.shape[-1]), settings.features)
            train_x.append(features(x[~test]))
            test_x.append(features(x[test]))
        train, held = torch.stack(train_x), torch.stack(test_x)
        options = {"n_classes": pairs.n_classes, "per_option": per_option}
        with _one_thread():
            values = mine_bits(train, y[~test], held, y[test], settings.mine, seed=seed,
                               **options)  # fmt: skip
            found = probe_bits(train, y[~test], held, y[test], l2_grid=settings.l2_grid,
                               **options)  # fmt: skip
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
