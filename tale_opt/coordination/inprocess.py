"""Single-process coordination: propose, evaluate, observe, until the searcher is done.

The distributed coordinator (Optuna trials in a shared storage) follows the same cycle; this
one keeps everything in memory and hands each finished observation to `on_observation`
before the searcher sees it, so the caller can persist it first.
"""

from __future__ import annotations

from collections.abc import Callable

from searchers.base import Searcher
from tale_opt.types import Candidate, Observation, SearchResult


def run_search(
    searcher: Searcher,
    evaluate: Callable[[Candidate], Observation],
    on_observation: Callable[[Observation], None] = lambda obs: None,
) -> SearchResult:
    """Evaluate every proposed candidate in order until the searcher stops."""
    while not searcher.done:
        batch = searcher.propose()
        if not batch:
            raise RuntimeError(
                f"{type(searcher).__name__}.propose() returned no candidates while not done; "
                "with nothing in flight that would wait forever"
            )
        for candidate in batch:
            observation = evaluate(candidate)
            on_observation(observation)
            searcher.observe([observation])
    return searcher.result()
