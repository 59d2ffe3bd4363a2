"""What optuna-dashboard shows of a search: trials with ``round``, ``layer`` and ``probe``
params (with distributions, so its slice and importance plots work) and a named objective.

A real coordinator search (fake evaluator) into a real SQLite storage, read back through
Optuna's API and, when optuna-dashboard is installed, through the dashboard's own HTTP API.
"""

from __future__ import annotations

import io
import json
import sys

import optuna
import pytest

import searchers
from tale_opt.coordination import study as st
from tale_opt.coordination.coordinator import run_coordinator
from tale_opt.pipeline.plan import score_probe
from tests.fake_search import NUM_LAYERS, FakeEvaluate, make_searcher, open_test_study


@pytest.fixture
def finished_study(tmp_path):
    """A greedy search of 8 layers (2 rounds after the baseline), objective named as a
    search names it."""
    cfg = {"kind": "sqlite", "path": str(tmp_path / "trials.db")}
    study = open_test_study(cfg, "dash")
    st.name_objective(study, score_probe(make_searcher()))
    result = run_coordinator(study, make_searcher(max_drop=2), evaluate=FakeEvaluate())
    return study, result, cfg


def test_every_trial_shows_its_round_added_layer_and_probe(finished_study):
    study, result, _ = finished_study
    trials = [t for t in study.get_trials() if st.candidate_of(t) is not None]
    assert len(trials) == 1 + 8 + 7
    accepted = [obs.drop for obs in result.trajectory]  # each round's base, in order
    for trial in trials:
        drop = st.candidate_of(trial).drop
        added = set(drop) - set(accepted[len(drop) - 1]) if drop else set()
        assert trial.params == {
            "round": len(drop),
            "layer": added.pop() if added else -1,
            "probe": "task_accuracy",
        }
        assert trial.distributions == {
            "round": optuna.distributions.IntDistribution(0, NUM_LAYERS),
            "layer": optuna.distributions.IntDistribution(-1, NUM_LAYERS - 1),
            "probe": optuna.distributions.CategoricalDistribution(
                ("task_accuracy", "perplexity", "block_influence", "angular_distance")
            ),
        }
    assert study.metric_names == ["accuracy (opt split)"]
    # The same distributions on every trial: importance has a search space to work on.
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    assert set(importances) == {"round", "layer", "probe"}


def test_the_objective_is_named_by_what_the_trials_score():
    assert score_probe(searchers.SLEB(8, n_drop=2)) == "perplexity"
    assert score_probe(searchers.BlockInfluence(8, n_drop=2)) == "task_accuracy"
    assert score_probe(searchers.PerplexityRanking(8, n_drop=2)) == "task_accuracy"
    assert score_probe(make_searcher()) == "task_accuracy"
    study = optuna.create_study()
    st.name_objective(study, "perplexity")
    assert study.metric_names == ["-perplexity (probe text)"]


def dashboard_get(storage, path: str) -> dict:
    """GET `path` from optuna-dashboard's WSGI app over `storage` (no server, no network)."""
    dashboard = pytest.importorskip("optuna_dashboard")
    app = dashboard.wsgi(storage)
    status = {}

    def start_response(line, headers, exc_info=None):
        status["line"] = line

    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "x",
        "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
    }  # fmt: skip
    body = b"".join(app(environ, start_response))
    assert status["line"].startswith("200"), body[:500]
    return json.loads(body)


def test_optuna_dashboard_reads_the_params_and_the_objective_name(finished_study):
    study, _, _ = finished_study
    detail = dashboard_get(study._storage, f"/api/studies/{study._study_id}")
    assert detail["objective_names"] == ["accuracy (opt split)"]
    assert {p["name"] for p in detail["intersection_search_space"]} == {"round", "layer", "probe"}
    importances = dashboard_get(
        study._storage, f"/api/studies/{study._study_id}/param_importances"
    )
    assert {p["name"] for p in importances["param_importances"][0]} == {"round", "layer", "probe"}
