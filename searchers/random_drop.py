"""The control: random drop sets of the requested sizes, for comparing criteria against chance."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from searchers.oneshot import OneShotSearcher, prefixes
from tale_opt.types import Candidate, DropSet, Observation


class RandomDrop(OneShotSearcher):
    """Drops a seeded random order of the removable layers: the first 1, 2, ..., n_drop.

    No probe: round 0 proposes the baseline and every drop set at once, each scored by task
    accuracy, so the result has the same shape as the one-shot rankers' (see
    `searchers.oneshot`). The order is a `random.Random(seed)` shuffle of the removable layers,
    so one seed gives one nested curve; run several seeds (``seed=0,1,2``) for a spread.

    Args:
        num_layers: decoder layers of the full model.
        n_drop: layers to remove at most (required).
        seed: seeds the order (the run's `seed` in the shipped config).
        protected: layers never removed (0-based).
    """

    name = "random"

    def __init__(
        self,
        num_layers: int,
        *,
        n_drop: int | None = None,
        seed: int = 0,
        protected: Iterable[int] = (),
        text: Any = None,
    ) -> None:
        # `text` is read by no probe here; it is accepted so that one sweep over searchers can
        # set `++searcher.text.*` for the others.
        del text
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer, but got seed={seed!r}")
        super().__init__(num_layers, n_drop=n_drop, protected=protected)
        self.seed = seed
        order = list(self.removable)
        random.Random(seed).shuffle(order)
        self.order = tuple(order)

    def probe_candidates(self) -> tuple[Candidate, ...]:
        return ()

    def drop_sets(self, probes: Mapping[str, Observation]) -> tuple[DropSet, ...]:
        return prefixes(self.order, self.n_drop)
