"""MLflow tracking: parent/child runs on SQLite and PostgreSQL, several worker processes, an
`mlflow server` over HTTP, and failures that become warnings instead of failed searches.

Backends are created once per module (MLflow's schema migrations take seconds); every test
uses its own experiment. PostgreSQL gets a database of its own, created and dropped here: in
the shared `test` database Optuna's `alembic_version` table would clash with MLflow's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from pathlib import Path

import pytest

from tale_opt.errors import UsageError
from tale_opt.tracking import (
    NullTracker,
    TrackingSettings,
    TrackingWarning,
    build_tracker,
    flatten_params,
    resolve_tracking_uri,
    search_key,
    search_tags,
    summary_metrics,
)
from tale_opt.tracking.mlflow_tracker import MlflowTracker
from tale_opt.tracking.query import TrackingQueryError, child_runs, search_runs
from tale_opt.tracking.records import MAX_PARAM_LENGTH
from tests.conftest import scratch_database

CONFIG = {
    "model": {"name": "tiny", "path": "/models/tiny", "dtype": "float32"},
    "searcher": {"name": "tale", "epsilon": 0.08, "protected": [0, 5]},
    "seed": 0,
}
TAGS = {"model": "tiny", "task": "arc_easy", "searcher": "tale", "seed": "0", "epsilon": "0.08"}
SUMMARY = {
    "baseline_accuracy": 0.5,
    "threshold": 0.42,
    "num_layers": 6,
    "stop_reason": "below_threshold",
    "trajectory": [
        {"drop_layers": [], "n_dropped": 0, "score": 0.5},
        {"drop_layers": [3], "n_dropped": 1, "score": 0.6},
    ],
    "baseline": {"drop_layers": [], "n_dropped": 0, "score": 0.5, "heldout": {"accuracy": 0.45}},
    "best": {
        "drop_layers": [3],
        "n_dropped": 1,
        "score": 0.6,
        "speedup_estimate": 1.2,
        "opt": {"accuracy": 0.6, "tflops_per_example": 0.3},
        "heldout": {"accuracy": 0.55, "invalid_rate": 0.0, "tflops_per_example": 0.8},
    },
}


def _experiment() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def postgres_uri(postgres_url) -> str:
    """A fresh database on the test server for MLflow's tables, dropped afterwards."""
    with scratch_database(postgres_url, "tale_opt_mlflow") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path) -> dict[str, str]:
    """Tracking settings of one backend; artifacts go to a temporary directory (MLflow's
    default for a database URI is ./mlruns in the current directory)."""
    uri = request.getfixturevalue(f"{request.param}_uri")
    return {"uri": uri, "artifact_location": str(tmp_path / "artifacts")}


# -- records and settings (no backend) ----------------------------------------------------
def test_nested_config_becomes_dotted_string_params():
    flat = flatten_params({**CONFIG, "note": None, "empty": {}, "bad key!": 1, "long": "x" * 7000})
    assert flat["model.dtype"] == "float32"
    assert flat["searcher.epsilon"] == "0.08"
    assert flat["searcher.protected"] == "[0, 5]"
    assert flat["note"] == "null" and flat["empty"] == "{}" and flat["bad key_"] == "1"
    assert len(flat["long"]) == MAX_PARAM_LENGTH and "truncated, 7000 chars" in flat["long"]


def test_search_key_is_stable_and_ignores_where_keys():
    flat = flatten_params(CONFIG)
    assert search_key(flat) == search_key(dict(reversed(list(flat.items()))))
    assert search_key({**flat, "searcher.epsilon": "0.05"}) != search_key(flat)
    moved = {**flat, "storage.path": "/elsewhere.db"}
    assert search_key(moved, ignore=("storage.",)) == search_key(flat, ignore=("storage.",))


def test_search_tags_come_from_the_config():
    config = {**CONFIG, "task": {"name": "arc_easy"}, "eval": {"scoring": "letters"}}
    assert search_tags(config) == {
        "model": "tiny",
        "task": "arc_easy",
        "searcher": "tale",
        "seed": "0",
        "epsilon": "0.08",
        "scoring": "letters",
    }
    assert search_tags({"model": {"path": "org/m"}})["model"] == "org/m"
    flat = flatten_params({**CONFIG, "workers": 2, "storage": {"path": "x.db"}})
    assert search_key(flat) == search_key(flatten_params(CONFIG))  # WHERE_KEYS by default


def test_summary_becomes_parent_metrics():
    metrics = summary_metrics(SUMMARY)
    assert metrics["threshold"] == 0.42 and metrics["baseline.score"] == 0.5
    # Each split's numbers under its own name; a probe searcher's score is no accuracy.
    assert metrics["best.heldout.accuracy"] == 0.55 and metrics["best.opt.accuracy"] == 0.6
    assert metrics["best.heldout.tflops_per_example"] == 0.8
    assert metrics["best.opt.tflops_per_example"] == 0.3
    assert "baseline_accuracy" not in metrics
    assert metrics["best.n_dropped"] == 1.0 and "best.drop_layers" not in metrics


def test_relative_sqlite_uris_resolve_against_the_launch_directory(tmp_path):
    assert (
        resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    )
    for fixed in ("sqlite:////abs/m.db", "http://host:5000", "postgresql://u@h/db"):
        assert resolve_tracking_uri(fixed, tmp_path) == fixed


@pytest.mark.parametrize(
    "node, message",
    [
        ({"kind": "mlfow"}, "Did you mean 'mlflow'"),
        ({"uri": ""}, "tracking.uri must be a non-empty string"),
        ({"http_timeout": 0}, "tracking.http_timeout must be an integer >= 1, but got 0"),
        ({"experiment_name": "x"}, "unknown tracking option"),
    ],
)
def test_invalid_tracking_settings_are_usage_errors(node, message):
    with pytest.raises(UsageError, match=message):
        TrackingSettings.from_mapping(node)


def test_tracking_none_records_nothing():
    for tracker in (build_tracker(None), build_tracker({"kind": "none"})):
        assert isinstance(tracker, NullTracker) and not tracker.enabled
        assert tracker.start_search(CONFIG, TAGS) is None
        assert tracker.log_configuration("x", "3", 1, {"accuracy": 1.0}) is None
        tracker.finish()


def test_importing_tracking_and_the_report_cli_does_not_import_mlflow():
    code = (
        "import sys, tale_opt.tracking, tale_opt.commands.report, tale_opt.commands.bench;"
        "bad = [m for m in ('mlflow', 'torch') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=1800)


# -- against real backends ----------------------------------------------------------------
def test_parent_and_child_runs_are_linked(backend, tmp_path_factory):
    tracker = build_tracker({**backend, "experiment": _experiment()})
    parent = tracker.start_search(CONFIG, TAGS, run_name="tiny arc_easy")
    assert parent is not None
    base = tracker.log_configuration(
        parent, "", 0, {"accuracy": 0.5, "invalid_rate": 0.0, "tflops": 1.0, "note": "text"}
    )
    tracker.log_configuration(parent, "3", 1, {"accuracy": 0.6, "tflops": 0.8})
    tracker.log_configuration(parent, "3,5", 2, {"accuracy": 0.3}, status="pruned")
    assert tracker.log_configuration(parent, "", 0, {"accuracy": 0.5}) == base  # idempotent
    tracker.log_summary(SUMMARY)
    results = tmp_path_factory.mktemp("results")
    (results / "summary.md").write_text("| table |\n")
    tracker.log_artifacts(results)
    tracker.finish()

    uri, experiment = backend["uri"], tracker.settings.experiment
    (run,) = search_runs(uri, experiment)
    assert run.run_id == parent and run.status == "FINISHED"
    assert run.tags["task"] == "arc_easy" and run.tags["tale_opt.best.drop"] == "3"
    assert run.params["searcher.epsilon"] == "0.08" and run.params["model.dtype"] == "float32"
    assert run.metrics["best.heldout.accuracy"] == pytest.approx(0.55)
    assert run.history["trajectory.score"] == [(0, 0.5), (1, 0.6)]
    children = {c.tags["tale_opt.drop_key"]: c for c in child_runs(uri, parent)}
    assert set(children) == {"", "3", "3,5"}
    for child in children.values():
        assert child.tags["mlflow.parentRunId"] == parent and child.status == "FINISHED"
    assert children["3"].metrics == {
        "accuracy": 0.6,
        "tflops": 0.8,
        "n_dropped": 1.0,
        "round": 1.0,
    }
    assert children[""].metrics["invalid_rate"] == 0.0 and "note" not in children[""].metrics
    assert children["3,5"].tags["tale_opt.status"] == "pruned"
    assert children["3,5"].params["drop_layers"] == "3,5"
    artifacts = MlflowTracker(uri)._client().list_artifacts(parent)
    assert "summary.md" in [a.path for a in artifacts]


def test_a_resumed_search_reopens_its_parent_without_duplicating_children(backend):
    experiment = _experiment()
    key = search_key(flatten_params(CONFIG))
    first = build_tracker({**backend, "experiment": experiment})
    parent = first.start_search(CONFIG, TAGS, search_key=key)
    child = first.log_configuration(parent, "3", 1, {"accuracy": 0.6})
    first.finish("KILLED")

    again = build_tracker({**backend, "experiment": experiment})
    assert again.start_search(CONFIG, TAGS, search_key=key) == parent
    assert again.log_configuration(parent, "3", 1, {"accuracy": 0.6}) == child
    again.log_configuration(parent, "5", 1, {"accuracy": 0.4})
    other = again.start_search({**CONFIG, "seed": 1}, TAGS, search_key="another-search")
    assert other not in (None, parent)
    logged = sorted(c.tags["tale_opt.drop_key"] for c in child_runs(backend["uri"], parent))
    assert logged == ["3", "5"]
    assert len(search_runs(backend["uri"], experiment)) == 2


# -- failures are warnings ----------------------------------------------------------------
def test_an_unreachable_server_is_a_quick_warning_not_an_error():
    tracker = build_tracker({"uri": f"http://127.0.0.1:{_free_port()}", "experiment": "x"})
    started = time.monotonic()
    with pytest.warns(TrackingWarning, match="could not start the search's parent run"):
        assert tracker.start_search(CONFIG, TAGS) is None
    assert time.monotonic() - started < 90  # MLflow's own retries alone would take minutes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing more is attempted without a parent run
        assert tracker.log_configuration(None, "3", 1, {"accuracy": 1.0}) is None
        tracker.log_summary(SUMMARY)
        tracker.finish("FAILED")


def test_a_broken_backend_is_a_warning(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    tracker = build_tracker({"uri": f"sqlite:///{not_a_dir}/mlflow.db"})
    with pytest.warns(TrackingWarning, match="could not"):
        assert tracker.start_search(CONFIG, TAGS) is None


def test_failures_during_a_search_warn_and_then_switch_tracking_off(sqlite_uri, monkeypatch):
    tracker = MlflowTracker(sqlite_uri, _experiment(), max_failures=2)
    parent = tracker.start_search(CONFIG, TAGS)

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(tracker._client(), "create_run", broken)
    with pytest.warns(TrackingWarning, match="database went away"):
        assert tracker.log_configuration(parent, "1", 1, {"accuracy": 0.5}) is None
    assert tracker.enabled
    with pytest.warns(TrackingWarning, match="tracking is off for this process"):
        tracker.log_configuration(parent, "2", 1, {"accuracy": 0.5})
    assert not tracker.enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tracker.log_configuration(parent, "4", 1, {"accuracy": 0.5}) is None
        tracker.finish()


def test_queries_fail_with_a_usage_error(sqlite_uri):
    build_tracker({"uri": sqlite_uri, "experiment": "exists"}).start_search(CONFIG, TAGS)
    with pytest.raises(TrackingQueryError, match="no experiment 'nope'.*exists"):
        search_runs(sqlite_uri, "nope")
    with pytest.raises(TrackingQueryError, match="could not read runs"):
        search_runs(sqlite_uri, "exists", filter_string="tags.task ~~ 'x'")
    with pytest.raises(TrackingQueryError, match="could not read runs"):
        search_runs(f"http://127.0.0.1:{_free_port()}", "exists")


def test_querying_a_missing_sqlite_file_does_not_create_it(tmp_path):
    with pytest.raises(TrackingQueryError, match="no MLflow database at"):
        search_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


# -- an MLflow tracking server ------------------------------------------------------------
@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free loopback port; yields its URL; always stopped afterwards."""
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 1800  # only against a hang
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {Path(log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log_tail = Path(log.name).read_text()[-2000:]
                pytest.fail(f"mlflow server not up in 1800 s: {log_tail}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()


@pytest.mark.slow
def test_runs_logged_to_an_mlflow_server_are_listed_over_http(mlflow_server, tmp_path):
    # A loaded machine may answer slowly: the tracker must not give up on it here.
    tracker = build_tracker({"uri": mlflow_server, "experiment": "served", "http_timeout": 300})
    parent = tracker.start_search(CONFIG, TAGS)
    assert parent is not None
    tracker.log_configuration(parent, "", 0, {"accuracy": 0.5})
    tracker.log_configuration(parent, "2", 1, {"accuracy": 0.7})
    (tmp_path / "plot.png").write_bytes(b"\x89PNG")
    tracker.log_artifacts(tmp_path, "plots")
    tracker.finish()

    (run,) = search_runs(mlflow_server, "served")
    assert run.run_id == parent and run.tags["task"] == "arc_easy"
    assert len(child_runs(mlflow_server, parent)) == 2
    # And with a plain HTTP request to the REST API, as any other client would.
    request = urllib.request.Request(
        f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served"
    )
    with urllib.request.urlopen(request, timeout=300) as answer:
        experiment_id = json.load(answer)["experiment"]["experiment_id"]
    body = json.dumps({"experiment_ids": [experiment_id], "max_results": 10}).encode()
    request = urllib.request.Request(
        f"{mlflow_server}/api/2.0/mlflow/runs/search",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as answer:
        listed = json.load(answer)["runs"]
    assert {r["info"]["run_id"] for r in listed} >= {parent}
    assert len(listed) == 3
