"""The layer × round matrix of candidate scores of a greedy search (pure data, no plotting).

Round r of a greedy elimination tries removing each remaining layer from the configuration
accepted in round r − 1, so every candidate of round r is that base set plus one layer. The
cell (round r, layer ℓ) holds the score of removing ℓ in round r; layers removed earlier have
no cell (None). The base set of each round comes from the accepted trajectory when given; else
it is inferred: the layers common to all of the round's candidates, or for a round with a single
candidate, the best-scoring drop set of the round before (what greedy accepts).

Candidates that are not "base + one layer" (one-shot rankers propose whole drop sets) are
counted in `skipped` and left out: the heatmap describes greedy searches.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _layers(value: Any) -> frozenset[int]:
    if isinstance(value, str):
        return frozenset(int(p) for p in value.split(",") if p.strip())
    return frozenset(int(v) for v in value)


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


@dataclass(frozen=True)
class Candidate:
    """One row of candidate_results.csv, parsed."""

    round: int
    drop: frozenset[int]
    score: float
    pruned: bool


def read_candidates(path: str | Path, probe: str = "task_accuracy") -> list[Candidate]:
    """Parse the rows of candidate_results.csv scored by `probe` (one-shot searchers also
    log probe rows); a drop set logged twice (a resumed run) counts once."""
    with Path(path).open(newline="") as handle:
        rows = csv.DictReader(handle)
        return parse_candidates(r for r in rows if (r.get("probe") or "task_accuracy") == probe)


def parse_candidates(
    rows: Iterable[Mapping[str, Any]], value_key: str = "score"
) -> list[Candidate]:
    """Rows with ``drop_key``, ``score`` (or `value_key`), optional ``round`` and ``status``."""
    by_drop: dict[frozenset[int], Candidate] = {}
    for row in rows:
        drop = _layers(row.get("drop_key", row.get("drop_layers", "")))
        score = _float(row.get(value_key))
        if score is None:
            continue
        round_no = row.get("round")
        by_drop[drop] = Candidate(
            round=int(round_no) if round_no not in (None, "") else len(drop),
            drop=drop,
            score=score,
            pruned=str(row.get("status", "complete")) == "pruned",
        )
    return sorted(by_drop.values(), key=lambda c: (c.round, sorted(c.drop)))


@dataclass
class Heatmap:
    """Scores by [round index][layer]; `rounds[i]` is the round number of row i."""

    num_layers: int
    rounds: list[int]
    values: list[list[float | None]]
    pruned: list[list[bool]]
    chosen: dict[int, int] = field(default_factory=dict)  # round -> layer accepted
    skipped: int = 0


def _bases(
    by_round: Mapping[int, list[Candidate]], trajectory: Sequence[Iterable[int]] | None
) -> dict[int, frozenset[int]]:
    if trajectory is not None:
        accepted = [_layers(t) for t in trajectory]
        return {r: accepted[r - 1] for r in by_round if 0 < r <= len(accepted)}
    bases: dict[int, frozenset[int]] = {}
    for r in sorted(by_round):
        cands = by_round[r]
        if len(cands) >= 2:
            bases[r] = frozenset.intersection(*(c.drop for c in cands))
        elif r - 1 in by_round:
            bases[r] = max(by_round[r - 1], key=lambda c: (c.score, -min(c.drop, default=0))).drop
        elif r == 1:
            bases[r] = frozenset()
    return bases


def heatmap_matrix(
    candidates: Sequence[Candidate],
    num_layers: int,
    trajectory: Sequence[Iterable[int]] | None = None,
) -> Heatmap:
    """Arrange a greedy search's candidates as a round × layer matrix.

    Args:
        candidates: From `read_candidates` / `parse_candidates` (round 0 is skipped).
        num_layers: Decoder layers of the full model.
        trajectory: The accepted drop sets in order (round 0 = the empty set), e.g. from
            summary.json's ``trajectory[*].drop_layers``; None infers them.
    """
    by_round: dict[int, list[Candidate]] = {}
    for cand in candidates:
        if cand.round > 0:
            by_round.setdefault(cand.round, []).append(cand)
    bases = _bases(by_round, trajectory)
    accepted = [_layers(t) for t in trajectory] if trajectory is not None else None
    rounds = sorted(r for r in by_round if r in bases)
    values = [[None] * num_layers for _ in rounds]
    pruned = [[False] * num_layers for _ in rounds]
    chosen: dict[int, int] = {}
    skipped = sum(len(by_round[r]) for r in by_round if r not in bases)
    for i, r in enumerate(rounds):
        for cand in by_round[r]:
            extra = cand.drop - bases[r]
            if len(extra) != 1 or not bases[r] <= cand.drop:
                skipped += 1
                continue
            layer = next(iter(extra))
            if layer >= num_layers:
                skipped += 1
                continue
            values[i][layer] = cand.score
            pruned[i][layer] = cand.pruned
        after = accepted[r] if accepted is not None and r < len(accepted) else bases.get(r + 1)
        if after is not None and len(after - bases[r]) == 1:
            chosen[r] = next(iter(after - bases[r]))
    return Heatmap(num_layers, rounds, values, pruned, chosen, skipped)
