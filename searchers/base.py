"""The interface every search strategy implements (suggest / update, as in Vizier)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from tale_opt.types import Candidate, Observation, SearchResult


@runtime_checkable
class Searcher(Protocol):
    """A pure search strategy.

    Contract (pinned by tests/searcher_contract.py, which every searcher's tests inherit):

    * `propose()` is a query: it returns the same candidates until `observe` is called, and
      never a candidate that was already observed (except one observed only as pruned whose
      upper bound does not prove it loses: it is proposed again, to be evaluated in full).
      An empty list while not `done` means "wait for results still in flight".
    * `observe()` is idempotent and order-insensitive: state is derived from a memo keyed by
      candidate, so replaying completed trials in any order rebuilds the same searcher.
    * Candidates never name an out-of-range or protected layer.
    """

    name: str
    num_layers: int

    def propose(self) -> list[Candidate]: ...

    def observe(self, observations: Iterable[Observation]) -> None: ...

    @property
    def done(self) -> bool: ...

    def result(self) -> SearchResult: ...
