"""Racing candidates: the learning curve in the study, the pruners' decisions on constructed
score streams, and raced-out candidates through a real study, the CSV and MLflow.

* the outcome records and the paired beta-binomial win probability (checked against an
  independent exact enumeration of the Pólya urn);
* `paired`: a clear loser is raced out, a close rival and a candidate level with the leader are
  not, nothing is decided before `min_examples` or without a finished leader, the tie rule;
* `successive_halving` / `hyperband`: Optuna's pruners see only the candidate's own round;
* a real `CandidateEvaluator` on a tiny random model: intermediate values at step = examples
  seen, a raced-out trial PRUNED with its reason and accuracy so far with interval, settled by
  the searcher (never evaluated again), in candidate_results.csv and its MLflow child run;
* the pruner settings: validation, the searchers they refuse, the study fingerprint.
"""

from __future__ import annotations

import csv
import itertools
import json

import optuna
import pytest
from optuna.trial import TrialState

from searchers.greedy import GreedyElimination
from tale_opt.coordination import racing
from tale_opt.coordination import study as st
from tale_opt.coordination.coordinator import run_coordinator
from tale_opt.coordination.worker import run_one, waiting_candidates
from tale_opt.errors import UsageError
from tale_opt.outcomes import RaceState, decode_outcomes, outcome_record
from tale_opt.stats import beta_binomial_pmf, paired_win_probability, wilson_interval
from tale_opt.types import Candidate, DropSet
from tests.fake_search import CountingEvaluate

D = DropSet.of


# -- per-example outcome records ---------------------------------------------------------------
def test_outcome_records_round_trip_compactly():
    full = {i: i % 3 == 0 for i in range(500)}
    record = outcome_record(500, full)
    assert "seen" not in record and len(record["correct"]) <= 125
    assert decode_outcomes(record) == full
    part = {7: True, 2: False, 499: True}  # scored in batch order, not index order
    record = outcome_record(500, part)
    assert decode_outcomes(record) == {2: False, 7: True, 499: True}
    assert decode_outcomes("0110") == {0: False, 1: True, 2: True, 3: False}  # older trials
    assert decode_outcomes({"n": 3, "correct": "zz"}) is None
    assert decode_outcomes(None) is None


# -- the paired win probability ----------------------------------------------------------------
def polya_count_pmf(n: int, a: float, b: float) -> list[float]:
    """P[k successes in n draws of a Pólya urn with a, b balls]: every sequence enumerated."""
    pmf = [0.0] * (n + 1)
    for draws in itertools.product((True, False), repeat=n):
        p, right = 1.0, 0
        for t, hit in enumerate(draws):
            p *= (a + right if hit else b + t - right) / (a + b + t)
            right += hit
        pmf[right] += p
    return pmf


@pytest.mark.parametrize(("n", "a", "b"), [(0, 1, 1), (5, 1, 1), (6, 2.5, 0.5), (4, 7, 3)])
def test_the_beta_binomial_is_the_polya_urn(n, a, b):
    assert beta_binomial_pmf(n, a, b) == pytest.approx(polya_count_pmf(n, a, b))


def test_the_win_probability_pairs_outcomes_by_the_leaders():
    leader = dict(enumerate([True, True, True, False, True, True, False, True, False, True]))
    mine = {0: True, 1: False, 3: True, 4: True}  # two per stratum seen
    # Left: leader right on 2, 5, 7, 9 (4), wrong on 6, 8 (2). Seen where the leader is right:
    # 2 of 3; where it is wrong: 1 of 1. So X1 ~ BB(4, 3, 2), X0 ~ BB(2, 2, 1).
    x1, x0 = polya_count_pmf(4, 3, 2), polya_count_pmf(2, 2, 1)
    for need in range(0, 12):
        short = need - 3
        expected = sum(
            p1 * p0 for k1, p1 in enumerate(x1) for k0, p0 in enumerate(x0) if k1 + k0 >= short
        )
        assert paired_win_probability(mine, leader, need) == pytest.approx(expected), need
    assert paired_win_probability(mine, leader, 3) == 1.0  # already there
    assert paired_win_probability(mine, leader, 10) == 0.0  # 3 + 6 left < 10
    with pytest.raises(ValueError, match="examples the leader's do not"):
        paired_win_probability({99: True}, leader, 3)


def test_where_a_candidate_agrees_with_the_leader_matters_not_only_its_count():
    # Both are right on 4 of the first 8; one where the leader is right, one where it is
    # wrong. The leader is right on 24 of the 32 examples left: the first will likely be too.
    leader = {i: i % 2 == 0 if i < 8 else i < 32 for i in range(40)}  # 4 + 24 = 28 right
    aligned = {i: i % 2 == 0 for i in range(8)}
    opposed = {i: i % 2 == 1 for i in range(8)}
    assert paired_win_probability(aligned, leader, 28) > 0.3
    assert paired_win_probability(opposed, leader, 28) < 0.01


# -- paired, through a real study --------------------------------------------------------------
N = 40
LEADER = [i % 4 != 3 for i in range(N)]  # 30 of 40


def study_with(pruner: dict | None, name: str = "race") -> optuna.Study:
    config = {"fake": True, **({"pruner": pruner} if pruner else {})}
    return st.open_study(optuna.storages.InMemoryStorage(), name, {"fake": True}, config)


def paired(**options) -> dict:
    return racing.PrunerSettings.from_mapping({"name": "paired", **options}).study_entry()


def evaluate_all(study: optuna.Study, evaluate, keys) -> dict[str, optuna.trial.FrozenTrial]:
    for key in keys:
        st.enqueue(study, Candidate(DropSet.parse(key)), prunable=True)
    while waiting_candidates(study):
        run_one(study, evaluate)
    return {st.candidate_of(t).drop.key: t for t in study.get_trials()}


def test_paired_races_out_a_clear_loser_and_lets_close_rivals_finish():
    close = list(LEADER)
    close[0], close[3] = False, True  # the same count, two examples swapped
    outcomes = {
        "": LEADER,
        "1": LEADER,  # the leader (finished first)
        "2": [False] * N,  # a clear loser
        "3": close,  # a close rival: level with the leader
        "0": LEADER,  # the leader's equal, and it wins ties (0 < 1)
    }
    study = study_with(paired(delta=0.05, min_examples=8))
    trials = evaluate_all(study, CountingEvaluate(n=N, batch=4, outcomes=outcomes), outcomes)
    loser = st.observation_of(trials["2"])
    assert trials["2"].state == TrialState.PRUNED and loser.raced_out
    reason = loser.extras["raced_out"]
    assert reason["pruner"] == "paired" and reason["leader"] == "1"
    assert reason["n_seen"] == 8  # at min_examples, before exact could (it needs 12)
    assert reason["win_probability"] < 0.05 and reason["leader_correct"] == 30
    assert loser.score == 32 / 40  # its upper bound: 0 right + 32 left
    for key in ("1", "3", "0"):  # never the leader, never a close rival
        assert trials[key].state == TrialState.COMPLETE, key
    assert sorted(trials["2"].intermediate_values) == [4, 8]  # the curve up to the stop


def test_min_examples_holds_back_racing_but_not_the_exact_bound():
    outcomes = {"": LEADER, "1": LEADER, "2": [False] * N}
    study = study_with(paired(delta=0.05, min_examples=20))
    trials = evaluate_all(study, CountingEvaluate(n=N, batch=4, outcomes=outcomes), outcomes)
    stopped = st.observation_of(trials["2"])
    assert stopped.metrics["n_seen"] == 12  # 0 + 28 left < 30: the exact bound, before 20
    assert not stopped.raced_out and stopped.extras["bounded_by"] == {"drop": "1", "n_correct": 30}


def test_nothing_is_raced_without_a_finished_leader():
    outcomes = {"": LEADER, "2": [False] * N}  # no rival of "2" finished before it
    study = study_with(paired(delta=0.5, min_examples=1))
    trials = evaluate_all(study, CountingEvaluate(n=N, batch=4, outcomes=outcomes), outcomes)
    assert trials["2"].state == TrialState.COMPLETE


def policy_of(study: optuna.Study, key: str, **options):
    """The paired policy of candidate `key`, as a worker builds it for a prunable trial."""
    settings = racing.PrunerSettings.from_mapping({"name": "paired", **options})
    return racing.PairedRace(racing.Incumbent(study, Candidate(D((int(key),)))), settings.options)


def test_the_prior_alone_never_races_and_the_tie_rule_sets_what_is_needed():
    outcomes = {"": LEADER, "2": LEADER}
    study = study_with(None)
    evaluate_all(study, CountingEvaluate(n=N, batch=4, outcomes=outcomes), outcomes)
    # delta just below 1 stops at once whatever the probability, so the rule's number shows.
    lower, higher = (policy_of(study, k, delta=0.999999, min_examples=1) for k in ("1", "3"))
    assert lower(RaceState(N, {}, 0)) is None  # n_seen = 0: no data, no decision
    seen = {i: LEADER[i] for i in range(8)}
    state = RaceState(N, seen, sum(seen.values()))
    # Layer 1 wins a tie with layer 2: it needs 30; layer 3 loses one: it needs 31.
    assert lower(state).detail["win_probability"] == pytest.approx(
        paired_win_probability(seen, dict(enumerate(LEADER)), 30)
    )
    assert higher(state).detail["win_probability"] == pytest.approx(
        paired_win_probability(seen, dict(enumerate(LEADER)), 31)
    )
    assert higher(state).detail["win_probability"] < lower(state).detail["win_probability"]


def test_a_leader_recorded_without_outcomes_leaves_only_the_exact_bound():
    study = study_with(paired(delta=0.999999, min_examples=1))
    evaluate_all(study, CountingEvaluate(n=N, batch=4, outcomes={"": LEADER}), [""])
    metrics = {"n_correct": 30, "n_examples": N}  # an older trial: no per-example outcomes
    trial = study.ask()
    trial.set_user_attr(st.MARKER, "task_accuracy:2")
    trial.set_user_attr(st.RESULT, {"metrics": metrics, "extras": {}})
    study.tell(trial, 0.75)
    policy = policy_of(study, "1", delta=0.999999, min_examples=1)
    seen = {i: False for i in range(8)}
    assert policy(RaceState(N, seen, 0)) is None  # 0 + 32 can still beat 30
    assert policy(RaceState(N, {i: False for i in range(12)}, 0)).key == "bounded_by"


# -- Optuna's pruners on one round ------------------------------------------------------------
def strong(n_right: int) -> list[bool]:
    return [i < n_right for i in range(N)]


@pytest.mark.parametrize("name", ["successive_halving", "hyperband"])
def test_optunas_pruners_see_only_the_candidates_round(name):
    entry = racing.PrunerSettings.from_mapping(
        {"name": name, "min_resource": 4, "reduction_factor": 2}
    ).study_entry()
    study = study_with(entry, name)
    # Round 1 (base {}): strong candidates. Round 2 (base {1}): weaker ones. Another round 2
    # ({5, 6}, a rival of none of them) is strong too.
    outcomes = {
        "": strong(36), "1": strong(38), "0": strong(37), "2": strong(36), "5,6": strong(39),
        "0,1": strong(20), "1,2": strong(18), "1,3": [i % 2 == 0 for i in range(N)],
        "1,4": [False] * N,
    }  # fmt: skip
    evaluate = CountingEvaluate(n=N, batch=4, outcomes=outcomes)
    trials = evaluate_all(study, evaluate, ["", "1", "0", "2", "5,6", "0,1", "1,2", "1,3"])
    # Round 2's first candidate finished: every rung value of its round was its own, however
    # much better round 1 and the other base were at the same steps.
    assert trials["0,1"].state == TrialState.COMPLETE
    assert sorted(trials["0,1"].intermediate_values) == list(range(4, N + 1, 4))
    view = racing.OptunaRace(
        racing.Incumbent(study, Candidate(D((1, 4)))), name, entry, study, number=-1
    ).view
    assert {st.candidate_of(t).drop.key for t in view.get_trials()} == {"0,1", "1,2", "1,3"}
    # A clear loser of round 2 is stopped: by the pruner at a rung, with its reason (or, in a
    # Hyperband bracket of its own, by the exact bound: 0 + 16 left < 20).
    trials = evaluate_all(study, evaluate, ["1,4"])
    loser = st.observation_of(trials["1,4"])
    assert trials["1,4"].state == TrialState.PRUNED
    if name == "successive_halving" or loser.raced_out:
        reason = loser.extras["raced_out"]
        assert reason["pruner"] == name and reason["leader"] == "0,1"
        assert reason["step"] < N and reason["rung"] >= 0
        assert reason["accuracy_so_far"] == 0.0
    else:
        assert loser.extras["bounded_by"] == {"drop": "0,1", "n_correct": 20}
        assert loser.metrics["n_seen"] == 24


# -- a real evaluator on a tiny model: the study, the CSV and MLflow ---------------------------
def test_a_raced_search_records_curves_and_reasons_everywhere(monkeypatch, one_thread, tmp_path):
    from mlflow.tracking import MlflowClient

    from tale_opt.pipeline.outputs import RunWriter
    from tale_opt.pipeline.tracking import SearchTracking
    from tale_opt.tracking.mlflow_tracker import MlflowTracker
    from tests.test_early_termination import candidate_evaluator

    evaluate = candidate_evaluator(monkeypatch, 5, "letters", prefix_gb=1)  # 24 examples, batch 3
    study = study_with(paired(delta=0.3, min_examples=3))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "racing")
    tracking = SearchTracking(tracker, tracker.start_search({"seed": 0}, {"task": "tiny"}))
    with RunWriter(tmp_path / "run") as writer:

        def record(obs, trial):
            writer.record_candidate(obs)
            tracking.log_configuration(obs, curve=trial.intermediate_values)

        result = run_coordinator(
            study, GreedyElimination(6, epsilon=1.0, max_drop=2), evaluate=evaluate,
            early_stop=True, poll_interval=0.01, on_observation=record,
        )  # fmt: skip
    trials = [t for t in study.get_trials() if st.observation_of(t) is not None]
    keys = [st.candidate_of(t).key for t in trials]
    assert len(keys) == len(set(keys)), "a raced-out candidate was evaluated again"
    assert all(o.complete for o in result.trajectory)
    raced = [t for t in trials if st.observation_of(t).raced_out]
    assert raced, "no candidate was raced out: the test would hold vacuously"
    for trial in trials:
        # The learning curve: step = examples seen, one point per batch of 3, running accuracy.
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(3, steps[-1] + 1, 3)) and steps[-1] <= 24
        obs = st.observation_of(trial)
        if obs.complete:
            assert steps[-1] == 24 and trial.intermediate_values[24] == obs.score
    for trial in raced:
        obs = st.observation_of(trial)
        m, reason = obs.metrics, obs.extras["raced_out"]
        assert trial.state == TrialState.PRUNED and reason["pruner"] == "paired"
        assert reason["win_probability"] < 0.3 and reason["n_seen"] == m["n_seen"] >= 3
        assert m["accuracy_so_far"] == m["n_correct_so_far"] / m["n_seen"]
        low, high = wilson_interval(int(m["n_correct_so_far"]), int(m["n_seen"]))
        assert (m["accuracy_so_far_ci_low"], m["accuracy_so_far_ci_high"]) == (low, high)
        assert trial.value == trial.intermediate_values[int(m["n_seen"])]  # Optuna's value
        assert decode_outcomes(obs.extras["correct"]).keys() <= set(range(24))
        assert len(decode_outcomes(obs.extras["correct"])) == m["n_seen"]

    rows = {
        r["drop_key"]: r for r in csv.DictReader((tmp_path / "run/candidate_results.csv").open())
    }
    client = MlflowClient(uri)
    children = {
        run.data.tags["tale_opt.drop_key"]: run
        for run in client.search_runs(
            [client.get_experiment_by_name("racing").experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{tracking.parent_run_id}'",
        )
    }
    for trial in raced:
        key = st.candidate_of(trial).drop.key
        row, obs = rows[key], st.observation_of(trial)
        assert row["status"] == "pruned" and row["stopped_by"] == "paired"
        assert float(row["accuracy_so_far"]) == obs.metrics["accuracy_so_far"]
        assert float(row["accuracy_so_far_ci_low"]) <= float(row["accuracy_so_far"])
        assert json.loads(row["stop_detail"])["leader"] == obs.extras["raced_out"]["leader"]
        child = children[key]
        assert child.data.params["stopped_by"] == "paired"
        assert child.data.metrics["raced_out.win_probability"] == pytest.approx(
            obs.extras["raced_out"]["win_probability"]
        )
        history = client.get_metric_history(child.info.run_id, "running_accuracy")
        assert {h.step: h.value for h in history} == trial.intermediate_values
    full = next(t for t in trials if st.observation_of(t).complete and st.candidate_of(t).drop)
    history = client.get_metric_history(
        children[st.candidate_of(full).drop.key].info.run_id, "running_accuracy"
    )
    assert [h.step for h in sorted(history, key=lambda h: h.step)] == list(range(3, 25, 3))


# -- settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "paired", "delta": 1.0}, "pruner.delta must be a number > 0 and < 1"),
        ({"name": "paired", "delta": 0}, "pruner.delta must be a number > 0"),
        ({"name": "paired", "min_examples": 0}, "pruner.min_examples must be an integer >= 1"),
        ({"name": "paired", "prior_wrong": -1}, "pruner.prior_wrong must be a number > 0"),
        ({"name": "paired", "detla": 0.1}, "pruner 'paired' has no option 'detla'"),
        ({"name": "hyperband", "reduction_factor": 1}, "pruner.reduction_factor must be an"),
        ({"name": "exact", "delta": 0.1}, "pruner 'exact' has no option 'delta'"),
        ({"name": "pared"}, "unknown pruner 'pared'. Did you mean 'paired'?"),
    ],
)
def test_bad_pruner_settings_are_one_line(node, message):
    with pytest.raises(UsageError) as caught:
        racing.PrunerSettings.from_mapping(node)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_racing_is_refused_for_searchers_without_rounds_of_task_accuracy():
    from searchers.greedy_variants import SLEB
    from searchers.random_drop import RandomDrop

    settings = racing.PrunerSettings.from_mapping({"name": "paired"})
    racing.check_searcher(settings, GreedyElimination(6))  # tale: fine
    for searcher in (SLEB(6, n_drop=2), RandomDrop(6, n_drop=2)):
        with pytest.raises(UsageError, match=rf"searcher '{searcher.name}'.*pruner=exact"):
            racing.check_searcher(settings, searcher)
        for name in ("exact", "none"):  # result-neutral: fine with any searcher
            racing.check_searcher(racing.PrunerSettings.from_mapping({"name": name}), searcher)


def fingerprint_of(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose
    from tale_opt.pipeline.plan import check_config

    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    return check_config(cfg).config


def test_only_racing_pruners_enter_the_study_config_and_fingerprint():
    from tale_opt.pipeline.candidates import search_fingerprint

    exact, none = fingerprint_of(["pruner=exact"]), fingerprint_of(["pruner=none"])
    assert "pruner" not in exact and exact == none  # today's study config and fingerprint
    raced = fingerprint_of(["pruner=paired", "pruner.delta=0.1"])
    assert raced["pruner"] == {
        "name": "paired", "delta": 0.1, "min_examples": 16, "prior_correct": 1.0,
        "prior_wrong": 1.0,
    }  # fmt: skip
    other = fingerprint_of(["pruner=paired", "pruner.delta=0.2"])

    class Splits:
        fingerprint = "x"

    class Task:
        name, prompt_version = "t", "1"

    def fp(config):
        return search_fingerprint(config, {"path": "m"}, Task(), Splits())

    assert "pruner" not in fp(exact)
    assert fp(raced) != fp(exact) and fp(raced) != fp(other)
    assert st.fingerprint_hash(fp(exact)) == st.fingerprint_hash(fp(none))


def test_a_raced_study_is_not_resumed_by_an_exact_search(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    st.open_study(storage, "s", {"model": "m", "pruner": paired()}, {})
    with pytest.raises(UsageError, match="pruner: study has"):
        st.open_study(storage, "s", {"model": "m"}, {})


# -- the command line: in-process, spawned workers, resume -------------------------------------
RACE_ARGS = ("pruner=paired", "pruner.min_examples=2", "pruner.delta=0.3", "n_opt=12",
             "eval.batch_size=2", "tracking=none")  # fmt: skip


def raced_search(tiny_model_dir, storage, run_dir, *extra):
    from tests.test_cli import run_cli
    from tests.test_distributed_cli import search_args

    proc = run_cli(*search_args(tiny_model_dir, storage, run_dir, *RACE_ARGS, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((run_dir / "summary.json").read_text())


def finished_trials(storage, name) -> list:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{storage}")
    return [t for t in study.get_trials() if st.observation_of(t) is not None]


def check_raced_trials(trials, run_dir) -> int:
    """Each candidate once; every pruned one with its reason, in the study and the CSV."""
    keys = [st.candidate_of(t).key for t in trials]
    assert len(keys) == len(set(keys)), "a candidate was evaluated twice"
    rows = {r["drop_key"]: r for r in csv.DictReader((run_dir / "candidate_results.csv").open())}
    raced = 0
    for trial in trials:
        obs = st.observation_of(trial)
        assert trial.intermediate_values, "no learning curve"
        if obs.complete:
            continue
        reason = obs.extras.get("raced_out") or obs.extras.get("bounded_by")
        assert reason, f"trial {trial.number} stopped without a reason"
        raced += obs.raced_out
        assert rows[obs.drop.key]["stopped_by"] == ("paired" if obs.raced_out else "exact")
    return raced


@pytest.mark.slow
def test_a_raced_search_runs_in_process_and_resumes(tiny_model_dir, tmp_path):
    storage = tmp_path / "trials.db"
    # hydra.verbose: the per-candidate lines (with the stop reason) are DEBUG.
    proc, summary = raced_search(
        tiny_model_dir, storage, tmp_path / "run", "hydra.verbose=tale_opt"
    )
    assert summary["timings"]["pruner"] == "paired"
    trials = finished_trials(storage, summary["study"]["name"])
    raced = check_raced_trials(trials, tmp_path / "run")
    assert raced == summary["timings"]["raced_out_candidates"] >= 1
    assert "paired: win probability" in proc.stdout + proc.stderr
    # The same command again: the raced study resumes, nothing is evaluated again.
    again, resumed = raced_search(tiny_model_dir, storage, tmp_path / "again")
    assert f"{len(trials)} evaluated already" in again.stdout
    assert resumed["trajectory"] == summary["trajectory"]
    assert len(finished_trials(storage, summary["study"]["name"])) == len(trials)
    # The exact pruner is another search: under the raced study's name it is refused.
    from tests.test_cli import run_cli
    from tests.test_distributed_cli import search_args

    name = summary["study"]["name"]
    exact = run_cli(*search_args(tiny_model_dir, storage, tmp_path / "exact", f"study={name}"))
    assert exact.returncode == 2 and "pruner" in exact.stderr


@pytest.mark.slow
def test_a_raced_search_runs_with_two_spawned_workers(tiny_model_dir, tmp_path):
    storage = tmp_path / "trials.db"
    _, summary = raced_search(tiny_model_dir, storage, tmp_path / "run", "workers=2")
    assert summary["study"]["workers"] == 2 and summary["timings"]["pruner"] == "paired"
    trials = finished_trials(storage, summary["study"]["name"])
    workers = {t.user_attrs.get(st.WORKER) for t in trials}
    assert len(workers) >= 1 and all(workers)
    check_raced_trials(trials, tmp_path / "run")


@pytest.mark.parametrize("scoring", ["letters", "loglik", "generate"])
def test_batch_order_is_what_the_race_hook_sees_arrive(scoring):
    from tests.test_early_termination import tiny_setup

    _, _, _, examples, evaluator = tiny_setup(2, scoring, n=11, batch_size=3)
    prepared = evaluator.prepare(examples)
    arrived: list[tuple[int, ...]] = []
    before: set[int] = set()

    def race(state: RaceState) -> bool:
        arrived.append(tuple(i for i in state.correct if i not in before))
        before.update(state.correct)
        return True

    evaluator.evaluate(prepared, D((1,)), race=race)
    assert arrived[0] == ()  # the call before the first batch
    assert arrived[1:] == evaluator.batch_order(prepared)
    assert sorted(i for batch in arrived for i in batch) == list(range(11))
