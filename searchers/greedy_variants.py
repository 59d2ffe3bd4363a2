"""Greedy elimination with other probes and stopping rules: SLEB, and TALE on perplexity.

Both are `GreedyElimination` (one algorithm) with other defaults, registered under
their own names so that runs, studies and comparison reports tell the criteria apart.

Their scores are ``-perplexity`` of the probe text, so `SearchResult` means, for them:
``trajectory`` = the accepted configurations with their perplexity observations (baseline
first, one more layer dropped per entry); ``best`` = the lowest perplexity among them (often
the baseline); ``bsba`` = the most layers dropped with perplexity <= the baseline's (usually the
baseline). Compare criteria on the held-out task accuracy of the final configuration
(``trajectory[-1]``, exactly `n_drop` layers), not on these picks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from searchers.greedy import GreedyElimination
from searchers.options import check_num_layers

DEFAULT_SLEB_TEXT = {"source": "lambada", "limit": 32}


class SLEB(GreedyElimination):
    """SLEB (Song et al., 2024): greedy block elimination on calibration perplexity.

    Each round removes the layer whose removal gives the lowest perplexity of the calibration
    text, until exactly `n_drop` layers (or ``ceil(sparsity * num_layers)``, SLEB's rule) are
    gone. The first and last layers are protected by default, as in SLEB.

    Args:
        num_layers: decoder layers of the full model.
        n_drop: layers to remove. Exactly one of `n_drop` and `sparsity` must be set.
        sparsity: fraction of the layers to remove, 0 < sparsity < 1.
        protected: layers never removed; None (default) = the first and the last.
        min_keep: never leave fewer layers than this.
        text: the calibration text (`searchers.options.check_text`); default: 32 LAMBADA
            passages. ``{source: task}`` uses the task's optimization-split text instead.
        probe: ``perplexity`` (the SLEB criterion); ``task_accuracy`` turns it into TALE with
            SLEB's protection and stop rule.
    """

    name = "sleb"

    def __init__(
        self,
        num_layers: int,
        *,
        n_drop: int | None = None,
        sparsity: float | None = None,
        protected: Iterable[int] | None = None,
        min_keep: int = 1,
        text: Mapping[str, Any] | None = None,
        probe: str = "perplexity",
    ) -> None:
        check_num_layers(num_layers)
        if (n_drop is None) == (sparsity is None):
            raise ValueError(
                "sleb stops at a layer count or a sparsity: set exactly one of n_drop=K or "
                f"searcher.sparsity=F, but got (n_drop={n_drop!r}, sparsity={sparsity!r})"
            )
        if sparsity is not None:
            if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
                raise ValueError(f"`0 < sparsity < 1` must hold, but got sparsity={sparsity!r}")
            if not 0 < sparsity < 1:
                raise ValueError(f"`0 < sparsity < 1` must hold, but got sparsity={sparsity!r}")
            # SLEB's own rule; the rounding keeps 0.14 * 50 = 7.000000000000001 at 7, not 8.
            n_drop = max(1, math.ceil(round(sparsity * num_layers, 9)))
        if protected is None:
            protected = (0, num_layers - 1)
        self.sparsity = sparsity
        super().__init__(
            num_layers,
            protected=protected,
            min_keep=min_keep,
            probe=probe,
            n_drop=n_drop,
            text=DEFAULT_SLEB_TEXT if text is None else text,
        )


class TalePerplexity(GreedyElimination):
    """TALE's greedy search scored by perplexity on the task's own text (the paper's
    perplexity comparison): prompts of the optimization split with their gold answers.

    Same arguments as `GreedyElimination`; the defaults differ: ``probe=perplexity``,
    ``text={source: task}``. Without `n_drop`, `epsilon` is in perplexity points: the search
    stops once the round's best perplexity exceeds the baseline's by more than `epsilon`.
    """

    name = "tale_ppl"

    def __init__(
        self,
        num_layers: int,
        *,
        epsilon: float = 5.0,
        max_drop: int | None = None,
        protected: Iterable[int] = (),
        min_keep: int = 1,
        probe: str = "perplexity",
        n_drop: int | None = None,
        text: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            num_layers,
            epsilon=epsilon,
            max_drop=max_drop,
            protected=protected,
            min_keep=min_keep,
            probe=probe,
            n_drop=n_drop,
            text={"source": "task"} if text is None else text,
        )
