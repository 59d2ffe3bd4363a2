"""What a user sees when a search goes wrong, from the real command line.

Passwords never reach a file or the tracking store; a damaged storage file, an unwritable run
directory, a model that does not load or an evaluation that raises is one `error:` line (exit
2 for bad input, 1 for a failed search); Ctrl-C is one line and exit 130, and the same command
then resumes; a run that fails before doing any work leaves neither a run directory nor a
study behind; two commands never share a run directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
import pytest

from tests.conftest import scratch_database
from tests.test_cli import ROOT, assert_usage_error, cli_env, run_cli
from tests.test_distributed_cli import outcome

pytestmark = pytest.mark.slow


def with_password(url: str, password: str) -> tuple[str, str]:
    """`url` with a password, and the password to look for: the URL's own when it has one
    (a server that checks it), else `password` (the test server trusts local connections)."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}"
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=netloc)), password


@pytest.fixture
def mlflow_database(postgres_url):
    """A fresh database on the test server for MLflow's tables; its URL without password."""
    with scratch_database(postgres_url, "tale_opt_secret") as url:
        yield url


def files_containing(root: Path, *secrets: str) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return found


def database_rows_containing(url: str, *secrets: str) -> list[str]:
    """Every row of every table of the database at `url` that holds one of `secrets`."""
    import psycopg2

    found = []
    with psycopg2.connect(url, connect_timeout=3) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema='public'")
        for (table,) in cur.fetchall():
            cur.execute(f'SELECT * FROM "{table}"')
            found += [
                f"{table}: {row}" for row in cur.fetchall() if any(s in repr(row) for s in secrets)
            ]
    return found


def test_passwords_never_reach_the_run_directory_or_the_tracking_store(
    tiny_model_dir, tmp_path, postgres_url, mlflow_database
):
    """A password in storage.url (command line) and in $MLFLOW_TRACKING_URI (environment):
    not in any file of the run directory (summary.json, .hydra/*.yaml, the log), not in any
    uploaded artifact, not in any row of the MLflow database (params, tags), not on screen."""
    storage_url, storage_secret = with_password(postgres_url, "St0rage-Secret-7d")
    tracking_url, tracking_secret = with_password(mlflow_database, "Track1ng-Secret-3c")
    artifacts = tmp_path / "artifacts"
    run_dir = tmp_path / "run"
    common = (
        f"model.path={tiny_model_dir}", "n_opt=4", "n_eval=4", "searcher.max_drop=1",
        "latency=null", "storage=postgres", f"storage.url={storage_url}",
        f"tracking.artifact_location={artifacts}", f"study=secret_{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": tracking_url}
    proc = run_cli(*common, f"hydra.run.dir={run_dir}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tracking"]["uri"].endswith(mlflow_database.rsplit("/", 1)[1])
    assert ":***@" in summary["tracking"]["uri"] and ":***@" in summary["study"]["storage"]
    assert "storage.url=" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert any(artifacts.rglob("summary.json")), "the artifacts were uploaded"
    secrets = (storage_secret, tracking_secret)
    assert files_containing(run_dir, *secrets) == []
    assert files_containing(artifacts, *secrets) == []
    assert database_rows_containing(mlflow_database, *secrets) == []
    assert not any(s in proc.stdout + proc.stderr for s in secrets)

    # A failed run keeps its directory when it holds anything else (here a user's notes):
    # its saved config is masked too.
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "notes.txt").write_text("mine\n")
    proc = run_cli(*common, "searcher.epsilon=-1", f"hydra.run.dir={failed}", env=env)
    assert_usage_error(proc, "epsilon")
    assert (failed / ".hydra" / "config.yaml").is_file()
    assert files_containing(failed, *secrets) == []


def test_a_sweep_never_shows_the_password_it_was_given(tiny_model_dir, tmp_path):
    """Hydra prints a sweep's overrides and saves them in multirun.yaml: both masked."""
    secret = "Sweep-Secret-5e"
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m", f"model.path={tiny_model_dir}", "storage=postgres",
        f"storage.url=postgresql://u:{secret}@db.invalid:5432/x", "searcher.epsilon=-1",
        "seed=0,1", "tracking=none", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    # Each job is refused on its own line (the sweep goes on), then the sweep exits as bad input.
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all("epsilon" in e for e in errors[:2]), errors
    assert "storage.url=postgresql\\://u\\:***@db.invalid" in proc.stdout
    assert secret not in proc.stdout + proc.stderr
    assert "u:***@db.invalid" in (sweep / "multirun.yaml").read_text()
    assert files_containing(tmp_path, secret) == []


def test_a_damaged_sqlite_file_is_one_line_naming_the_file(tiny_model_dir, tmp_path):
    storage = tmp_path / "trials.db"
    storage.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    run_dir = tmp_path / "run"
    proc = run_cli(f"model.path={tiny_model_dir}", f"storage.path={storage}",
                   f"hydra.run.dir={run_dir}")  # fmt: skip
    line = assert_usage_error(proc, str(storage), "storage.path")
    assert "database server" not in line
    assert not run_dir.exists(), "a run that did no work leaves no directory"


def test_an_unwritable_run_directory_is_one_line(tiny_model_dir, tmp_path):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    proc = run_cli(f"model.path={tiny_model_dir}", f"hydra.run.dir={in_the_way / 'run'}",
                   f"storage.path={tmp_path / 't.db'}")  # fmt: skip
    assert_usage_error(proc, str(in_the_way / "run"), "hydra.run.dir")
    # The default directory, outputs/..., relative to where the command runs.
    (tmp_path / "outputs").write_text("")
    proc = run_cli(f"model.path={tiny_model_dir}", f"storage.path={tmp_path / 't.db'}",
                   "tracking=none", cwd=tmp_path)  # fmt: skip
    assert_usage_error(proc, "outputs", "hydra.run.dir")


def test_a_model_that_does_not_load_leaves_no_study_and_no_run_directory(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    storage, run_dir = tmp_path / "t.db", tmp_path / "run"
    proc = run_cli(f"model.path={broken}", f"storage.path={storage}", "tracking=none",
                   f"hydra.run.dir={run_dir}")  # fmt: skip
    assert_usage_error(proc, str(broken))
    assert optuna.get_all_study_names(storage=f"sqlite:///{storage}") == []
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def out_of_vocabulary_model(tmp_path_factory, tiny_model_dir) -> Path:
    """A model whose embedding is smaller than its tokenizer: it loads, but every forward pass
    raises (a token id beyond the embedding), as a CUDA out-of-memory error would."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=64, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("out_of_vocabulary")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_an_evaluation_that_raises_in_process_is_the_promised_one_line(
    out_of_vocabulary_model, tmp_path
):
    run_dir = tmp_path / "run"
    proc = run_cli(f"model.path={out_of_vocabulary_model}", "n_opt=4", "n_eval=4",
                   "workers=0", "tracking=none", f"storage.path={tmp_path / 't.db'}",
                   f"hydra.run.dir={run_dir}")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("error: evaluating drop set {} failed in worker ")
    assert "(trial 0): IndexError" in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def interruptible_args(model_dir: Path, storage: Path, run_dir: Path, *searcher: str) -> list:
    # 120 examples make a candidate slow enough to be interrupted between two.
    return [
        f"model.path={model_dir}", "model.name=tiny", "n_opt=120", "n_eval=5", *searcher,
        "eval.batch_size=4", "latency=null", "tracking=none", f"storage.path={storage}",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("searcher", "candidates"),
    [(("searcher.max_drop=2",), 8), (("searcher=random", "n_drop=3"), 4)],
    ids=["greedy", "one-shot"],
)
def test_ctrl_c_mid_search_is_one_line_exit_130_and_the_same_command_resumes(
    tiny_model_dir, tmp_path, searcher, candidates
):
    uninterrupted = tmp_path / "uninterrupted"
    args = interruptible_args(tiny_model_dir, tmp_path / "u.db", uninterrupted, *searcher)
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]

    storage, run_dir = tmp_path / "i.db", tmp_path / "interrupted"
    args = interruptible_args(tiny_model_dir, storage, run_dir, *searcher)
    # Its own process group, as a shell gives a command: Ctrl-C signals the whole group.
    # SIGINT handled as in a terminal even where pytest itself was started in the background
    # (`cmd &` in a script ignores SIGINT, and Python then keeps ignoring it in children).
    victim = subprocess.Popen(
        [sys.executable, "-m", "tale_opt", *args], env=cli_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    csv_path = run_dir / "candidate_results.csv"
    deadline = time.monotonic() + 3600  # only against a hang: a slow machine just waits
    while time.monotonic() < deadline and victim.poll() is None:
        if csv_path.exists() and len(csv_path.read_text().splitlines()) >= 1 + 3:
            break
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGINT)
    stdout, stderr = victim.communicate(timeout=3600)
    assert victim.returncode == 130, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: interrupted; the same command resumes the search (finished candidates are kept)"
    ], stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    done = len(csv_path.read_text().splitlines()) - 1
    assert 3 <= done < candidates, f"Ctrl-C should land mid-search: {done} of {candidates} done"
    # accepted_configs.json is written after every candidate, one-shot searchers included:
    # the curve so far (for them, one configuration per candidate done; Ctrl-C may have come
    # between a candidate's CSV row and its accepted_configs.json).
    accepted = json.loads((run_dir / "accepted_configs.json").read_text())["accepted"]
    assert accepted[0]["drop_layers"] == []
    if "searcher=random" in searcher:
        assert [len(a["drop_layers"]) for a in accepted] == list(range(len(accepted)))
        assert len(accepted) >= done - 1 >= 2

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{done} evaluated already" in again.stdout + again.stderr
    assert outcome(run_dir) == outcome(uninterrupted)


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    """The default run and sweep directories, resolved as two processes started in the same
    second would: the second gets `_2` instead of the first one's directory."""
    code = """
import copy
import sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tale_opt.commands import run_dirs
from tale_opt.commands.config import CONF_DIR
from tale_opt.commands.schema import register_schemas
from tale_opt.commands.search import register_resolvers

register_resolvers()
register_schemas()
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = compose("config", return_hydra_config=True)
for key in ("hydra.run.dir", "hydra.sweep.dir"):
    # Two unresolved copies: the resolver caches its value per config, as one process would.
    one, two = copy.deepcopy(cfg), copy.deepcopy(cfg)
    first = OmegaConf.select(one, key)
    run_dirs._made.clear()  # what a second process, with the same clock, starts with
    print(first, OmegaConf.select(two, key))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_first, run_second), (sweep_first, sweep_second) = (
        line.split() for line in proc.stdout.splitlines()
    )
    assert run_first.startswith("outputs/") and run_first.endswith("_arc_easy_cloze")
    assert sweep_first.startswith("multirun/")
    for first, second in ((run_first, run_second), (sweep_first, sweep_second)):
        assert second == f"{first}_2"
        assert (tmp_path / first).is_dir() and (tmp_path / second).is_dir()
