"""Pure layer-selection strategies.

A searcher proposes candidates and is told results; it never evaluates anything itself and
imports nothing from tale_opt except `tale_opt.types` (checked by tests/test_layering.py), so
any process can rebuild it by replaying completed observations from storage.

Every searcher derives from `searchers.base.Searcher`; `searchers.testing.SearcherContract` is
the behaviour each one must have, for the tests of any searcher (like `optuna.testing`).
"""

from searchers.base import Searcher
from searchers.greedy import GreedyElimination
from searchers.greedy_variants import SLEB, TalePerplexity
from searchers.oneshot import AngularDistance, BlockInfluence, OneShotSearcher, PerplexityRanking
from searchers.random_drop import RandomDrop
from searchers.selection import ae_hm, pick_ae_hm, pick_best, pick_bsba

REGISTRY: dict[str, type[Searcher]] = {
    "tale": GreedyElimination,
    "tale_ppl": TalePerplexity,
    "sleb": SLEB,
    "perplexity": PerplexityRanking,
    "cosine": BlockInfluence,
    "angular": AngularDistance,
    "random": RandomDrop,
}

__all__ = [
    "REGISTRY",
    "SLEB",
    "AngularDistance",
    "BlockInfluence",
    "GreedyElimination",
    "OneShotSearcher",
    "PerplexityRanking",
    "RandomDrop",
    "Searcher",
    "TalePerplexity",
    "ae_hm",
    "pick_ae_hm",
    "pick_best",
    "pick_bsba",
]
