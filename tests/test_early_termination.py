"""Exact early termination: a candidate stops once it provably cannot win its greedy round.

* the bound rule every searcher shares (`searchers.base.Searcher.can_still_win`), exact ties
  in both directions;
* the evaluator stops after the first batch where the rule says "cannot win", in every scoring
  mode, with a valid upper bound and exactly the outcomes of a full run on what it scored;
* a pruned trial's round trip through SQLite with a worker (PRUNED, never retried or counted
  twice) and a searcher that re-evaluates candidates whose bound proves nothing;
* the property: on tiny random models over many seeds, a full search with early termination
  (and prefix reuse, when the evaluator has it) accepts the same layers with the same scores
  and stops for the same reason as one without.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import multiprocessing  # noqa: E402
import random  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import optuna  # noqa: E402
import pytest  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from searchers.base import Searcher  # noqa: E402
from searchers.greedy import GreedyElimination  # noqa: E402
from tale_opt.coordination import study as st  # noqa: E402
from tale_opt.coordination.coordinator import run_coordinator  # noqa: E402
from tale_opt.coordination.worker import WorkerStats, run_one, waiting_candidates  # noqa: E402
from tale_opt.evaluation.evaluator import Evaluator  # noqa: E402
from tale_opt.tasks.base import Example  # noqa: E402
from tale_opt.types import Candidate, DropSet, Observation, Status  # noqa: E402
from tests.conftest import make_tiny_model, make_tiny_tokenizer  # noqa: E402
from tests.fake_search import (  # noqa: E402
    CountingEvaluate,
    make_searcher,
    open_test_study,
    result_digest,
    worker_process,
)

D = DropSet.of


# -- the bound rule --------------------------------------------------------------------------
def test_rivals_share_a_base_and_differ_by_one_layer():
    assert Searcher.rivals(D((3, 5)), D((3, 7))) == (5, 7)
    assert Searcher.rivals(D((5,)), D((2,))) == (5, 2)
    assert Searcher.rivals(D((3, 5)), D((4, 7))) is None  # two layers apart: another base
    assert Searcher.rivals(D((3, 5)), D((3,))) is None  # another round
    assert Searcher.rivals(D((3, 5)), D((3, 5))) is None  # itself


@pytest.mark.parametrize(
    ("mine", "reach", "theirs", "their_count", "alive"),
    [
        ((5,), 11, (2,), 10, True),  # can still score more
        ((5,), 9, (2,), 10, False),  # cannot even tie
        ((5,), 10, (2,), 10, False),  # a tie goes to the lower added layer: 2 beats 5
        ((2,), 10, (5,), 10, True),  # ... and 2 still wins a tie against 5
        ((1, 2), 10, (1, 5), 10, True),  # the base does not count, only the added layer
        ((1, 5), 10, (1, 2), 10, False),
        ((1, 5), 0, (2, 7), 10, True),  # not a rival: never stopped by it
    ],
)
def test_can_still_win_is_the_searchers_tie_rule(mine, reach, theirs, their_count, alive):
    assert Searcher.can_still_win(D(mine), reach, D(theirs), their_count) is alive


def test_the_bound_rule_agrees_with_the_round_winner_of_the_searcher():
    # Whenever the rule says a candidate cannot win, the searcher, given the candidate's true
    # score (anything up to the bound) and the incumbent's, picks the incumbent.
    rng = random.Random(0)
    for _ in range(300):
        n = 8
        layer_a, layer_b = rng.sample(range(4), 2)
        count_a, bound_b = rng.randint(0, n), rng.randint(0, n)
        true_b = rng.randint(0, bound_b)
        searcher = GreedyElimination(4, epsilon=1.0, max_drop=1)
        scores = {layer_a: count_a / n, layer_b: true_b / n}
        searcher.observe(
            [Observation(Candidate(D(())), 0.5)]
            + [Observation(Candidate(D((x,))), scores.get(x, 0.0)) for x in range(4)]
        )
        winner = searcher.result().trajectory[-1].drop.layers
        if not Searcher.can_still_win(D((layer_b,)), bound_b, D((layer_a,)), count_a):
            assert winner != (layer_b,)


def test_best_rival_is_the_round_leader_under_the_tie_rule():
    completed = [(D((0, 4)), 6), (D((0, 2)), 7), (D((0, 3)), 7), (D((1, 5)), 9), (D((0,)), 9)]
    # (1, 5) is of another base, (0,) of another round: the leader is (0, 2) (7, lower layer).
    assert Searcher.best_rival(D((0, 6)), completed) == (D((0, 2)), 7)
    assert Searcher.best_rival(D((0, 6)), []) is None


# -- a tiny multiple-choice task -------------------------------------------------------------
LETTERS = "ABCD"


class TinyMCTask:
    """Random questions over a character-level vocabulary; `generate` answers are parsed from
    the first character (so a random model still gets some right)."""

    name = "tiny_mc"
    prompt_version = "tiny-1"
    stop_strings: tuple[str, ...] = ()
    stop_patterns: tuple[str, ...] = ()

    def messages(self, example: Example) -> list[dict[str, str]]:
        lines = [example.fields["question"]]
        lines += [f"{label} {text}" for label, text in zip(LETTERS, example.choices, strict=False)]
        return [{"role": "user", "content": "\n".join(lines)}]

    def labels(self, example: Example) -> tuple[str, ...]:
        return tuple(LETTERS[: len(example.choices)])

    def continuations(self, example: Example) -> tuple[str, ...]:
        return tuple(f" {choice}" for choice in example.choices)

    def parse(self, text: str, example: Example) -> int | None:
        text = text.strip()
        return ord(text[0]) % len(example.choices) if text else None

    def is_correct(self, prediction: Any, example: Example) -> bool:
        return prediction == example.answer_index


def make_examples(seed: int, n: int) -> list[Example]:
    rng = random.Random(seed)

    def word(lo: int, hi: int) -> str:
        return "".join(rng.choice("abcdefghij") for _ in range(rng.randint(lo, hi)))

    return [
        Example(
            id=f"s{seed}q{i}",
            fields={"question": " ".join(word(2, 6) for _ in range(rng.randint(1, 5)))},
            choices=tuple(word(1, 3) for _ in range(rng.choice((2, 3, 4)))),
            answer_index=None,
        )
        for i in range(n)
    ]


def with_gold(examples: list[Example], seed: int) -> list[Example]:
    rng = random.Random(seed + 1000)
    return [
        Example(ex.id, ex.fields, ex.choices, answer_index=rng.randrange(len(ex.choices)))
        for ex in examples
    ]


def tiny_setup(seed: int, scoring: str, n: int = 24, batch_size: int = 3):
    model = make_tiny_model("llama", seed=seed)
    tokenizer = make_tiny_tokenizer()
    task = TinyMCTask()
    examples = with_gold(make_examples(seed, n), seed)
    evaluator = Evaluator(model, tokenizer, task, scoring=scoring, batch_size=batch_size)
    return model, tokenizer, task, examples, evaluator


# -- the evaluator stops after the first hopeless batch --------------------------------------
@pytest.mark.parametrize("scoring", ["letters", "loglik", "generate"])
def test_the_evaluator_stops_after_the_first_batch_that_cannot_win(scoring):
    _, _, _, examples, evaluator = tiny_setup(3, scoring)
    prepared = evaluator.prepare(examples)
    drop = D((2,))
    full = evaluator.evaluate(prepared, drop)
    n = full.n_examples
    # A rule that never gives up sees the reachable count before and after every batch.
    reach: list[int] = []
    again = evaluator.evaluate(prepared, drop, race=lambda s: reach.append(s.max_correct) or True)
    assert again.complete and again.predictions == full.predictions  # it changes nothing
    assert reach[0] == n and reach[-1] == full.n_correct
    assert all(a >= b for a, b in zip(reach, reach[1:], strict=False))
    assert full.n_correct < n - 2, "the tiny model should miss some examples"
    target = next(r for r in reach if r < n - 1)  # stop once the count falls to this
    first = reach.index(target)
    calls: list[int] = []

    def rule(state) -> bool:
        calls.append(state.max_correct)
        return state.max_correct > target

    stopped = evaluator.evaluate(prepared, drop, race=rule)
    assert calls == reach[: first + 1]  # after exactly the first batch that cannot win
    assert not stopped.complete and 0 < stopped.n_seen < n
    assert stopped.max_correct == target >= full.n_correct  # a valid upper bound
    assert stopped.accuracy == target / n
    by_id = {p.example_id: p for p in full.predictions}
    assert len(stopped.predictions) == stopped.n_seen
    for p in stopped.predictions:  # exactly the outcomes of the full run
        assert p == by_id[p.example_id]
    assert stopped.n_correct == sum(p.correct for p in stopped.predictions)
    metrics = stopped.metrics()
    assert "accuracy" not in metrics
    assert metrics["n_seen"] == stopped.n_seen
    assert metrics["n_correct_so_far"] == stopped.n_correct
    assert metrics["upper_bound"] == stopped.accuracy


def test_a_candidate_that_cannot_even_tie_is_not_evaluated_at_all():
    _, _, _, examples, evaluator = tiny_setup(1, "letters")
    prepared = evaluator.prepare(examples)
    stopped = evaluator.evaluate(prepared, D((4,)), race=lambda s: s.max_correct > len(examples))
    assert stopped.n_seen == 0 and stopped.max_correct == len(examples)
    assert stopped.predictions == []


# -- a pruned trial through SQLite, with a worker ---------------------------------------------
OUTCOMES = {
    "": [True] * 6 + [False] * 2,  # baseline 6/8
    "0": [True, False] * 4,  # ties "1" at 2 + 4 = 6 after 2 batches (layer 0 < 1 goes on),
    # then 3 + 2 = 5 < 6 after 3: pruned
    "1": [True, True, True, True, True, False, True, False],  # 6/8: the round's winner
    "2": [False] * 8,  # after 1 batch 0 + 6 only ties "1", and layer 1 < 2 wins the tie
    "3": [True] * 4 + [False] * 4,  # 4/8: 4 + 2 = 6 ties "1" after 3 batches; layer 1 wins
}


def test_a_pruned_trial_round_trips_through_sqlite(tmp_path):
    storage = {"kind": "sqlite", "path": str(tmp_path / "t.db")}
    study = open_test_study(storage, "pruned")
    evaluate = CountingEvaluate(n=8, outcomes=OUTCOMES)
    for key in ("", "1", "2", "3", "0"):
        st.enqueue(study, Candidate(DropSet.parse(key)), prunable=True)
    stats = WorkerStats()
    while waiting_candidates(study):  # the worker claims them oldest first
        run_one(study, evaluate, stats)
    trials = {st.candidate_of(t).drop.key: t for t in study.get_trials()}
    assert [trials[k].state for k in ("", "1")] == [TrialState.COMPLETE] * 2
    assert [trials[k].state for k in ("0", "2", "3")] == [TrialState.PRUNED] * 3
    assert stats.evaluated == 5 and stats.pruned == 3
    hopeless = st.observation_of(trials["2"])
    assert hopeless.status is Status.PRUNED
    assert hopeless.score == 6 / 8  # 0 right of 2, 6 left
    assert hopeless.metrics["n_seen"] == 2
    assert hopeless.extras["bounded_by"] == {"drop": "1", "n_correct": 6}
    tie = st.observation_of(trials["3"])
    assert tie.score == 6 / 8 and tie.metrics["n_seen"] == 6  # reaching 6 ties; 1 < 3 wins
    lower = st.observation_of(trials["0"])
    assert lower.score == 5 / 8 and lower.metrics["n_seen"] == 6  # went on past its tie
    # A pruned trial is final: nothing to fail as stale, nothing re-queued.
    optuna.storages.fail_stale_trials(study)
    assert len(study.get_trials()) == 5
    # The coordinator counts each candidate once and re-evaluates nothing.
    seen: list[str] = []
    searcher = GreedyElimination(4, epsilon=0.5, max_drop=1)
    result = run_coordinator(
        study, searcher, evaluate=evaluate, early_stop=True, poll_interval=0.01,
        on_observation=lambda obs, trial: seen.append(obs.drop.key),
    )  # fmt: skip
    assert sorted(seen) == ["", "0", "1", "2", "3"]
    assert len(study.get_trials()) == 5
    assert result.trajectory[-1].drop.key == "1"


def test_a_bound_that_proves_nothing_in_this_search_is_evaluated_in_full(tmp_path):
    # Trial "2" was pruned against layer 1 by a search that could drop it; this one protects
    # layer 1, so nothing of its round outranks the bound: "2" is evaluated again, in full.
    storage = {"kind": "sqlite", "path": str(tmp_path / "t.db")}
    study = open_test_study(storage, "shared")
    evaluate = CountingEvaluate(n=8, outcomes=OUTCOMES)
    for key in ("", "1", "2"):
        st.enqueue(study, Candidate(DropSet.parse(key)), prunable=True)
    while waiting_candidates(study):
        run_one(study, evaluate)
    assert st.observation_of(study.get_trials()[2]).status is Status.PRUNED
    searcher = GreedyElimination(4, epsilon=1.0, max_drop=1, protected=(1,))
    result = run_coordinator(study, searcher, evaluate=evaluate, early_stop=True,
                             poll_interval=0.01)  # fmt: skip
    redone = [t for t in study.get_trials() if st.candidate_of(t).drop.key == "2"]
    assert [t.state for t in redone] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert not st.is_prunable(redone[1])
    by_key = {o.drop.key: o for o in result.observations}
    assert by_key["2"].complete and by_key["2"].score == 0.0
    # "0" and "3" were also stopped against "1" at first, then redone: 4/8 each, 0 < 3 wins.
    assert by_key["0"].complete and by_key["3"].complete
    assert result.trajectory[-1].drop.key == "0"


def in_memory_study(name: str = "s") -> optuna.Study:
    return st.open_study(optuna.storages.InMemoryStorage(), name, {"fake": True}, {})


def decisions(result) -> dict[str, Any]:
    """What early termination must not change: everything but the pruned candidates' rows."""
    digest = result_digest(result)
    digest["observations"] = [o for o in digest["observations"] if o[2] == "complete"]
    return digest


@pytest.mark.slow
def test_spawned_workers_prune_exactly(tmp_path):
    cfg = {"kind": "sqlite", "path": str(tmp_path / "t.db"), "heartbeat_interval": 1,
           "grace_period": 5, "poll_interval": 0.05}  # fmt: skip
    study = open_test_study(cfg, "workers")
    evaluate = CountingEvaluate(seed=3, n=16, batch=2)
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=worker_process, args=(cfg, "workers", evaluate, 60), daemon=True)
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    result = run_coordinator(
        study, make_searcher(max_drop=3), early_stop=True, poll_interval=0.05, lost_after=60
    )
    for worker in workers:
        worker.join(30)
    reference = run_coordinator(in_memory_study(), make_searcher(max_drop=3), evaluate=evaluate)
    ours, theirs = decisions(result), decisions(reference)
    assert set(map(tuple, ours["observations"])) <= set(map(tuple, theirs["observations"]))
    ours.pop("observations"), theirs.pop("observations")
    assert ours == theirs
    trials = study.get_trials()
    assert any(t.state == TrialState.PRUNED for t in trials)
    keys = [st.candidate_of(t).key for t in trials if st.observation_of(t) is not None]
    assert len(keys) == len(set(keys)) == len(result.observations)  # each candidate once


# -- the property: same search with and without the optimizations ---------------------------
def candidate_evaluator(monkeypatch, seed: int, scoring: str, prefix_gb: float):
    """The real `CandidateEvaluator`, on a tiny random model instead of a loaded checkpoint."""
    from tale_opt.pipeline import candidates

    model, tokenizer, task, examples, _ = tiny_setup(seed, scoring)
    monkeypatch.setattr("tale_opt.model.loading.load_model", lambda spec: (model, tokenizer))

    @dataclass
    class TinySplits:
        optimization: list[Example]
        evaluation: list[Example]
        fingerprint: str = "tiny"

    config = {
        "model": {"path": "tiny-random-llama", "device": "cpu"},
        "eval": {"scoring": scoring, "batch_size": 3, "max_new_tokens": 1},
        "prefix_cache_gb": prefix_gb,
    }
    splits = TinySplits(examples, examples)
    return candidates.CandidateEvaluator(config, task=task, splits=splits)


def search(evaluate: Any, early_stop: bool, epsilon: float):
    study = in_memory_study()
    searcher = GreedyElimination(6, epsilon=epsilon, max_drop=3)
    result = run_coordinator(
        study, searcher, evaluate=evaluate, early_stop=early_stop, poll_interval=0.01
    )
    return result, study.get_trials()


def accepted(result) -> list[tuple[str, float, float, float]]:
    return [
        (o.drop.key, o.score, o.metrics["n_correct"], o.metrics["n_examples"])
        for o in result.trajectory
    ]


def test_early_termination_and_prefix_reuse_never_change_the_search(monkeypatch, one_thread):
    pruned, scored, total = 0, 0, 0
    for seed in range(24):
        scoring = ("letters", "loglik", "generate")[seed % 3]
        epsilon = (0.0, 0.05, 0.15, 1.0)[seed % 4]
        plain = candidate_evaluator(monkeypatch, seed, scoring, prefix_gb=0)
        fast = candidate_evaluator(monkeypatch, seed, scoring, prefix_gb=1)
        reference, _ = search(plain, False, epsilon)
        result, trials = search(fast, True, epsilon)
        context = f"seed {seed} ({scoring}, epsilon {epsilon})"
        assert accepted(result) == accepted(reference), context
        assert result.stop_reason == reference.stop_reason, context
        for pick in ("best", "bsba"):
            ours, theirs = getattr(result, pick), getattr(reference, pick)
            assert (ours.drop, ours.score) == (theirs.drop, theirs.score), context
        assert result.threshold == reference.threshold, context
        for obs in result.observations:
            if obs.complete:  # a complete candidate is scored exactly as without pruning
                assert obs.score == next(
                    o.score for o in reference.observations if o.drop == obs.drop
                ), context
        pruned += sum(t.state == TrialState.PRUNED for t in trials)
        for t in trials:
            metrics = st.observation_of(t).metrics
            scored += int(metrics.get("n_seen", metrics["n_examples"]))
            total += int(metrics["n_examples"])
    assert pruned > 0, "no candidate was ever stopped early: the property held vacuously"
    assert scored < total
