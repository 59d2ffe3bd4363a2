"""The other selection criteria: SLEB, TALE on perplexity, one-shot perplexity,
Block Influence (cosine), angular distance and the random control. Each inherits the searcher
contract; known-answer tests drive them with explicit score tables."""

from __future__ import annotations

import pytest

from searchers import REGISTRY
from searchers.greedy import MAX_DROP, GreedyElimination
from searchers.greedy_variants import SLEB, TalePerplexity
from searchers.oneshot import N_DROP_REACHED, AngularDistance, BlockInfluence, PerplexityRanking
from searchers.options import check_text
from searchers.random_drop import RandomDrop
from searchers.testing import SearcherContract, run_to_completion
from tale_opt.types import (
    ANGULAR_DISTANCE,
    BLOCK_INFLUENCE,
    PERPLEXITY,
    TASK_ACCURACY,
    Candidate,
    DropSet,
    Observation,
    angular_distance_key,
    block_influence_key,
)

# -- the contract, for every searcher and its main option combinations -------------------------


class TestGreedyWithNDrop(SearcherContract):
    def make_searcher(self, num_layers):
        return GreedyElimination(num_layers, n_drop=4)


class TestSlebContract(SearcherContract):
    def make_searcher(self, num_layers):
        return SLEB(num_layers, n_drop=3)


class TestSlebSparsityContract(SearcherContract):
    def make_searcher(self, num_layers):
        return SLEB(num_layers, sparsity=0.25, protected=())


class TestTalePerplexityContract(SearcherContract):
    def make_searcher(self, num_layers):
        return TalePerplexity(num_layers, epsilon=0.1)


class TestPerplexityRankingContract(SearcherContract):
    def make_searcher(self, num_layers):
        return PerplexityRanking(num_layers, n_drop=3, protected=(0,))


class TestBlockInfluenceContract(SearcherContract):
    def make_searcher(self, num_layers):
        return BlockInfluence(num_layers, n_drop=4)


class TestAngularDistanceContract(SearcherContract):
    def make_searcher(self, num_layers):
        return AngularDistance(num_layers, n_drop=3, protected=(num_layers - 1,))


class TestRandomContract(SearcherContract):
    def make_searcher(self, num_layers):
        return RandomDrop(num_layers, n_drop=5, seed=3, protected=(0,))


# -- helpers -----------------------------------------------------------------------------------


def acc(layers: tuple[int, ...], score: float) -> Observation:
    return Observation(Candidate(DropSet(layers)), score, {"accuracy": score})


def ppl(layers: tuple[int, ...], perplexity: float) -> Observation:
    return Observation(
        Candidate(DropSet(layers), PERPLEXITY), -perplexity, {"perplexity": perplexity}
    )


def drive(searcher, score) -> None:
    """Observe `score(candidate)` for every proposal until done."""
    while not searcher.done:
        batch = searcher.propose()
        assert batch
        searcher.observe(score(c) for c in batch)


def perplexity_table(table: dict[tuple[int, ...], float], default: float = 100.0):
    def score(c: Candidate) -> Observation:
        assert c.probe == PERPLEXITY
        return ppl(c.drop.layers, table.get(c.drop.layers, default))

    return score


def accuracy_then(probe_obs):
    """Accuracy 0.5 - 0.01 * len(drop) for task candidates; `probe_obs(c)` for the probe."""

    def score(c: Candidate) -> Observation:
        if c.probe == TASK_ACCURACY:
            return acc(c.drop.layers, 0.5 - 0.01 * len(c.drop))
        return probe_obs(c)

    return score


# -- greedy with n_drop, SLEB, TALE on perplexity ----------------------------------------------


def test_n_drop_runs_exactly_k_rounds_whatever_the_accuracy():
    searcher = GreedyElimination(5, epsilon=0.0, n_drop=3)
    drive(searcher, lambda c: acc(c.drop.layers, 0.5 - 0.1 * len(c.drop)))  # far below ε
    result = searcher.result()
    assert [len(o.drop) for o in result.trajectory] == [0, 1, 2, 3]
    assert result.stop_reason == MAX_DROP
    assert result.threshold is None


def test_n_drop_replaces_max_drop():
    assert GreedyElimination(8, max_drop=2, n_drop=5).max_drop == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_drop": 0}, "n_drop=0"),
        ({"n_drop": 8}, "n_drop=8"),
        ({"n_drop": 6, "protected": (0, 1, 2)}, "protected=[0, 1, 2]"),
        ({"n_drop": "2"}, "n_drop='2'"),
        ({"probe": "block_influence"}, "probe='block_influence'"),
    ],
)
def test_greedy_n_drop_and_probe_are_validated(kwargs, message):
    with pytest.raises(ValueError, match="must") as err:
        GreedyElimination(8, **kwargs)
    assert message in str(err.value)


def test_sleb_protects_the_first_and_last_layer_and_minimizes_perplexity():
    searcher = SLEB(6, n_drop=2)
    assert searcher.protected == (0, 5)
    assert searcher.propose() == [Candidate(DropSet(), PERPLEXITY)]
    table = {(): 10.0, (1,): 14.0, (2,): 12.0, (3,): 12.0, (4,): 20.0, (1, 2): 30.0,
             (2, 3): 13.0, (2, 4): 25.0}  # fmt: skip
    drive(searcher, perplexity_table(table))
    result = searcher.result()
    # Round 1: 2 and 3 tie at 12 -> the lower index; round 2: {2, 3} at 13.
    assert [o.drop.layers for o in result.trajectory] == [(), (2,), (2, 3)]
    assert all(o.candidate.probe == PERPLEXITY for o in result.observations)
    assert result.best.drop.layers == ()  # lowest perplexity
    assert result.threshold is None


def test_sleb_stops_at_ceil_of_sparsity_times_layers():
    assert SLEB(30, sparsity=0.2).max_drop == 6
    assert SLEB(30, sparsity=0.1).max_drop == 3
    assert SLEB(10, sparsity=0.15).max_drop == 2  # ceil(1.5)
    assert SLEB(50, sparsity=0.14).max_drop == 7  # 7.000000000000001 is 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "set exactly one of n_drop=K or searcher.sparsity=F"),
        ({"n_drop": 2, "sparsity": 0.1}, "set exactly one"),
        ({"sparsity": 1.0}, "`0 < sparsity < 1` must hold, but got sparsity=1.0"),
        ({"n_drop": 9}, "n_drop=9"),  # 10 layers, first and last protected
    ],
)
def test_sleb_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError) as err:
        SLEB(10, **kwargs)
    assert message in str(err.value)


def test_sleb_and_tale_ppl_default_texts():
    assert SLEB(8, n_drop=1).text["source"] == "lambada"
    assert SLEB(8, n_drop=1, text={"source": "task"}).text["source"] == "task"
    tale_ppl = TalePerplexity(8)
    assert (tale_ppl.name, tale_ppl.probe, tale_ppl.text["source"]) == (
        "tale_ppl",
        PERPLEXITY,
        "task",
    )
    assert not tale_ppl.early_termination


def test_tale_ppl_epsilon_is_in_perplexity_points():
    searcher = TalePerplexity(4, epsilon=5.0)
    table = {(): 10.0, (0,): 14.0, (1,): 30.0, (2,): 40.0, (3,): 50.0,
             (0, 1): 16.0, (0, 2): 15.5, (0, 3): 90.0}  # fmt: skip
    drive(searcher, perplexity_table(table))
    result = searcher.result()
    assert [o.drop.layers for o in result.trajectory] == [(), (0,)]  # 15.5 > 10 + 5
    assert result.threshold == pytest.approx(-15.0)


# -- one-shot rankers --------------------------------------------------------------------------


def bi_observation(values: list[float]) -> Observation:
    metrics = {block_influence_key(i): v for i, v in enumerate(values)}
    return Observation(Candidate(DropSet(), BLOCK_INFLUENCE), 0.0, metrics)


def test_cosine_proposes_the_probe_and_the_baseline_then_every_size_at_once():
    searcher = BlockInfluence(6, n_drop=3)
    assert searcher.propose() == [
        Candidate(DropSet(), BLOCK_INFLUENCE),
        Candidate(DropSet(), TASK_ACCURACY),
    ]
    searcher.observe([bi_observation([0.9, 0.2, 0.05, 0.2, 0.1, 0.7])])
    assert [c.drop.layers for c in searcher.propose()] == [(), (2,), (2, 4), (1, 2, 4)]
    assert {c.probe for c in searcher.propose()} == {TASK_ACCURACY}


def test_cosine_known_result():
    searcher = BlockInfluence(6, n_drop=3, protected=(2,))
    drive(searcher, accuracy_then(lambda c: bi_observation([0.9, 0.2, 0.05, 0.2, 0.1, 0.7])))
    result = searcher.result()
    # 2 is protected; 1 and 3 tie at 0.2 -> the lower index first.
    assert [o.drop.layers for o in result.trajectory] == [(), (4,), (1, 4), (1, 3, 4)]
    assert result.baseline.candidate == Candidate(DropSet(), TASK_ACCURACY)
    assert all(o.candidate.probe == TASK_ACCURACY for o in result.trajectory)
    assert result.stop_reason == N_DROP_REACHED
    assert result.threshold is None
    assert result.best == result.baseline and result.bsba == result.baseline
    assert len(result.observations) == 5  # the probe is kept too


def test_perplexity_ranking_removes_each_layer_alone_then_drops_the_best():
    searcher = PerplexityRanking(5, n_drop=2)
    first = searcher.propose()
    assert [(c.probe, c.drop.layers) for c in first] == [
        *[(PERPLEXITY, (i,)) for i in range(5)],
        (TASK_ACCURACY, ()),
    ]
    table = {(0,): 50.0, (1,): 12.0, (2,): 11.0, (3,): 12.0, (4,): 30.0}
    drive(searcher, accuracy_then(perplexity_table(table)))
    assert [o.drop.layers for o in searcher.result().trajectory] == [(), (2,), (1, 2)]


def angular_observation(num_layers: int, table: dict[tuple[int, int], float]) -> Observation:
    """d(start, n) from `table`, 1.0 elsewhere."""
    metrics = {
        angular_distance_key(start, n): table.get((start, n), 1.0)
        for n in range(1, num_layers + 1)
        for start in range(num_layers - n + 1)
    }
    return Observation(Candidate(DropSet(), ANGULAR_DISTANCE), 0.0, metrics)


def test_angular_drops_the_block_with_the_smallest_distance_of_each_size():
    table = {(4, 1): 0.10, (1, 1): 0.10, (2, 2): 0.15, (3, 2): 0.2, (1, 3): 0.3, (3, 3): 0.3}
    searcher = AngularDistance(7, n_drop=3)
    drive(searcher, accuracy_then(lambda c: angular_observation(7, table)))
    result = searcher.result()
    # Size 1: 1 and 4 tie -> the lower start; blocks of different sizes need not nest.
    assert [o.drop.layers for o in result.trajectory] == [(), (1,), (2, 3), (1, 2, 3)]


def test_angular_blocks_avoid_protected_layers():
    table = {(2, 2): 0.01, (4, 2): 0.3, (0, 2): 0.5}
    searcher = AngularDistance(6, n_drop=2, protected=(3,))
    assert searcher.blocks(2) == [0, 1, 4]
    drive(searcher, accuracy_then(lambda c: angular_observation(6, table)))
    assert searcher.result().trajectory[-1].drop.layers == (4, 5)


def test_angular_needs_a_long_enough_unprotected_run():
    with pytest.raises(ValueError, match="longest run=2"):
        AngularDistance(7, n_drop=3, protected=(2, 5))


def test_a_probe_without_its_per_layer_metrics_is_an_error():
    searcher = BlockInfluence(4, n_drop=1)
    searcher.observe([Observation(Candidate(DropSet(), BLOCK_INFLUENCE), 0.0, {})])
    with pytest.raises(ValueError, match="has no metric 'bi.0'"):
        searcher.propose()


def test_observations_of_a_foreign_probe_are_refused():
    with pytest.raises(ValueError, match="got an observation of probe 'perplexity'"):
        BlockInfluence(4, n_drop=1).observe([ppl((), 3.0)])


@pytest.mark.parametrize("cls", [PerplexityRanking, BlockInfluence, AngularDistance, RandomDrop])
def test_one_shot_searchers_need_n_drop(cls):
    with pytest.raises(ValueError, match=f"searcher '{cls.name}' needs .* n_drop=K"):
        cls(8)
    with pytest.raises(ValueError, match="n_drop=8"):
        cls(8, n_drop=8)


def test_one_shot_accepted_grows_with_each_observed_drop_set():
    """accepted_configs.json is written from `accepted` after every candidate: the curve
    so far, the baseline first, never skipping a size that is still being evaluated."""
    searcher = BlockInfluence(6, n_drop=3)
    assert searcher.accepted == ()
    searcher.observe([bi_observation([0.9, 0.2, 0.05, 0.2, 0.1, 0.7])])
    assert searcher.accepted == ()
    searcher.observe([acc((), 0.5)])
    assert [o.drop.layers for o in searcher.accepted] == [()]
    searcher.observe([acc((2, 4), 0.4)])  # a later size first (another worker was faster)
    assert [o.drop.layers for o in searcher.accepted] == [()]
    searcher.observe([acc((2,), 0.45)])
    assert [o.drop.layers for o in searcher.accepted] == [(), (2,), (2, 4)]
    searcher.observe([acc((1, 2, 4), 0.3)])
    assert searcher.accepted == searcher.result().trajectory


@pytest.mark.parametrize(
    "make",
    [
        lambda: GreedyElimination(8, epsilon=0.3),
        lambda: SLEB(8, n_drop=2),
        lambda: TalePerplexity(8, n_drop=2),
        lambda: PerplexityRanking(8, n_drop=3),
        lambda: BlockInfluence(8, n_drop=3),
        lambda: AngularDistance(8, n_drop=3),
        lambda: RandomDrop(8, n_drop=3, seed=1),
    ],
    ids=["tale", "sleb", "tale_ppl", "perplexity", "cosine", "angular", "random"],
)
def test_accepted_ends_as_the_result_trajectory(make):
    searcher = make()
    result, _ = run_to_completion(searcher)
    assert searcher.accepted == result.trajectory


# -- the random control ------------------------------------------------------------------------


def test_random_is_seeded_nested_and_proposed_at_once():
    searcher = RandomDrop(10, n_drop=4, seed=7, protected=(0, 9))
    proposed = searcher.propose()
    assert proposed[0] == Candidate(DropSet())
    sets = [set(c.drop) for c in proposed[1:]]
    assert [len(s) for s in sets] == [1, 2, 3, 4]
    assert all(a < b for a, b in zip(sets, sets[1:], strict=False))  # nested
    assert not (sets[-1] & {0, 9})
    assert RandomDrop(10, n_drop=4, seed=7, protected=(0, 9)).propose() == proposed
    orders = {RandomDrop(10, n_drop=4, seed=s).order for s in range(5)}
    assert len(orders) == 5
    result, _ = run_to_completion(searcher)
    assert len(result.trajectory[-1].drop) == 4


# -- options and shipped configs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ({"source": "wiki"}, "`text.source` must be one of lambada, task, file"),
        ({"source": "file"}, "`text.path` must be set exactly when"),
        ({"source": "lambada", "path": "x.txt"}, "`text.path` must be set exactly when"),
        ({"source": "task", "limit": 0}, "`text.limit >= 1` must hold, but got limit=0"),
        ({"source": "task", "max_length": 8, "stride": 9}, "`text.stride <= text.max_length`"),
        ({"sorce": "task"}, "`text` has no option(s) ['sorce']"),
    ],
)
def test_text_option_is_validated(text, message):
    with pytest.raises(ValueError) as err:
        check_text(text)
    assert message in str(err.value)


def test_text_defaults_to_the_task():
    assert check_text(None)["source"] == "task"
    assert check_text({"source": "lambada"})["max_length"] == 512


@pytest.mark.parametrize("choice", sorted(REGISTRY))
def test_every_shipped_searcher_config_binds_to_its_constructor(choice):
    """torchtune-style: compose the real config and bind the node's keys to the class."""
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose
    from tale_opt.pipeline.plan import build_searcher

    cfg = compose([f"searcher={choice}", "n_drop=3"])
    node = OmegaConf.to_container(cfg, resolve=True)["searcher"]
    searcher = build_searcher(node, num_layers=30)
    assert searcher.name == choice == node["name"]
    assert len(searcher.propose()) >= 1
    if choice in ("tale", "tale_ppl", "sleb"):
        assert searcher.max_drop == 3 and searcher.threshold is None
    else:
        assert searcher.n_drop == 3
