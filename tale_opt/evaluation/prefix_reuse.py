"""Which base model's hidden states to keep while a worker evaluates a stream of candidates.

A worker sees candidates one at a time, in any order, from any round. Every candidate
``B ∪ {ℓ}`` of a round extends the round's base B (the accepted drop set), and the states of
the model without B are what the candidates can start from. The coordinator stores B with each
trial and the worker passes it as `base`; it is used when it is a strict subset of the
candidate. Without it (a caller that does not know B) the base is inferred:

* the cache it holds fits when its base is the candidate minus one layer;
* otherwise, two consecutive candidates of the same size k that share k − 1 layers are two
  removals from one round: their intersection is B, and its states are captured now.

Whatever is passed or inferred, the cache is only used for a candidate that strictly contains
its base (`PrefixCache.start_layer`), which is exactly when the reuse is exact; any other
candidate, including one of a stale round, runs the plain path. A wrong base costs one
capture, never a wrong score.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tale_opt import validate
from tale_opt.evaluation.evaluator import Evaluator, PreparedSplit
from tale_opt.evaluation.prefix import PREFIX_SCORING, PrefixCache
from tale_opt.evaluation.results import EvalResult
from tale_opt.types import DropSet

log = logging.getLogger("tale_opt")


class PrefixReuse:
    """Evaluates candidates on one prepared split, reusing a base model's hidden states.

    Args:
        evaluator: The evaluator (its model, batching and scoring mode).
        prepared: The split every candidate is scored on.
        budget_gb: Memory for the cached states (GiB); beyond it only every k-th layer's
            states are kept (see `tale_opt.evaluation.prefix`); 0 disables reuse.

    Raises:
        ValueError: A negative budget.
    """

    def __init__(self, evaluator: Evaluator, prepared: PreparedSplit, budget_gb: float) -> None:
        validate.number(budget_gb, "eval.prefix_cache_gb", minimum=0)
        self.evaluator = evaluator
        self.prepared = prepared
        self.budget_gb = float(budget_gb)
        self.cache: PrefixCache | None = None
        self.captures = 0  # how many base passes were run (for tests and logs)
        self._previous: DropSet | None = None
        self._base: DropSet | None = None  # the base of the last capture (even a failed one)

    @property
    def enabled(self) -> bool:
        return self.budget_gb > 0 and self.evaluator.scoring in PREFIX_SCORING

    def evaluate(
        self,
        drop: DropSet,
        *,
        base: DropSet | None = None,
        progress: bool | str = False,
        **options: Any,
    ) -> EvalResult:
        """`Evaluator.evaluate(prepared, drop, ...)`, from cached states when they apply.

        Args:
            drop: The candidate.
            base: The candidate's base if the caller knows it (a hint; ignored unless it is
                a strict subset of `drop`).
            progress: As in `Evaluator.evaluate`.
            **options: Passed on to `Evaluator.evaluate`.
        """
        cache = self._cache_for(drop, base) if self.enabled else None
        return self.evaluator.evaluate(
            self.prepared, drop, progress=progress, prefix=cache, **options
        )

    def release(self) -> int:
        """Drop the cached states and forget the round base; returns the bytes they held.

        For when the candidates are done (the same model then measures latency and scores the
        held-out split, which need the memory, not the states). A later candidate simply
        captures again.
        """
        held = self.cache.nbytes if self.cache is not None else 0
        self.cache, self._base, self._previous = None, None, None
        if held and torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the freed blocks back, not just to torch's pool
        return held

    def _cache_for(self, drop: DropSet, hint: DropSet | None) -> PrefixCache | None:
        previous, self._previous = self._previous, drop
        wanted = hint if hint is not None and _strict_subset(hint, drop) else None
        if wanted is None and not self._is_round_base(drop):
            wanted = _shared_base(previous, drop)
        if wanted is not None and wanted != self._base:
            self._capture(wanted)
        if self.cache is not None and _strict_subset(self.cache.base, drop):
            return self.cache
        return None

    def _is_round_base(self, drop: DropSet) -> bool:
        return (
            self.cache is not None
            and _strict_subset(self.cache.base, drop)
            and len(drop) - len(self.cache.base) == 1
        )

    def _capture(self, base: DropSet) -> None:
        self.cache, self._base = None, base  # release the old states before allocating new ones
        self.cache = self.evaluator.prefix_cache(self.prepared, base, budget_gb=self.budget_gb)
        self.captures += 1
        if self.cache is None:
            log.info("prefix reuse: budget %.3g GiB holds no layer's states", self.budget_gb)
            return
        log.debug(  # once per round and worker: detail, not progress
            "prefix reuse: base %s captured, %.3f GiB, every %d kept layer(s)",
            base, self.cache.nbytes / 2**30, self.cache.stride,
        )  # fmt: skip


def _strict_subset(base: DropSet, drop: DropSet) -> bool:
    return len(base) < len(drop) and set(base) <= set(drop)


def _shared_base(previous: DropSet | None, drop: DropSet) -> DropSet | None:
    """The round base of two consecutive same-size candidates sharing all but one layer."""
    if previous is None or len(previous) != len(drop) or previous == drop:
        return None
    shared = set(previous) & set(drop)
    return DropSet.of(shared) if len(shared) == len(drop) - 1 else None
