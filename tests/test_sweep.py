"""Sweeps (`python -m tale_opt -m ...`): every job runs even when one fails, and the sweep
ends with one table across its jobs, printed and written into the sweep directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tale_opt.commands.sweep import (
    FAILED,
    FINISHED,
    JOBS_DIR,
    NO_RESULT,
    SUMMARY_JSON,
    SUMMARY_MD,
    read_jobs,
    sweep_table,
    varying_overrides,
)
from tests.test_cli import run_cli


def _summary(drop: list[int], correct: int, n: int = 20) -> dict:
    pick = {"drop_layers": drop, "heldout": {"accuracy": correct / n, "n_correct": correct,
                                              "n_examples": n}}  # fmt: skip
    return {"baseline": {**pick, "drop_layers": []}, "best": pick, "bsba": pick, "final": pick}


def test_the_sweep_table_has_every_job_with_its_outcome(tmp_path):
    jobs_dir = tmp_path / JOBS_DIR
    jobs_dir.mkdir()
    common = ["n_opt=8", "storage.path=/x/t.db"]
    records = [
        {"job": 0, "overrides": ["searcher.epsilon=0.04", *common], "status": FINISHED},
        {
            "job": 1,
            "overrides": ["searcher.epsilon=0.08", *common],
            "status": FAILED,
            "error": "model path 'x' does not exist",
        },  # fmt: skip
        {"job": 2, "overrides": ["searcher.epsilon=0.16", *common], "status": FINISHED},
    ]
    for record in records:
        run = tmp_path / str(record["job"])
        run.mkdir()
        record["dir"] = str(run)
        (jobs_dir / f"{record['job']}.json").write_text(json.dumps(record))
    (tmp_path / "0" / "summary.json").write_text(json.dumps(_summary([3, 5], 11)))
    # Job 2 said it finished but wrote no summary.json: it has no result.
    jobs = read_jobs(tmp_path)
    assert [j["status"] for j in jobs] == [FINISHED, FAILED, NO_RESULT]
    assert varying_overrides(jobs) == [f"searcher.epsilon={e}" for e in ("0.04", "0.08", "0.16")]
    lines = sweep_table(jobs).splitlines()
    assert lines[0] == "sweep: 3 job(s), 1 finished"
    assert lines[4] == (
        "| 0 | searcher.epsilon=0.04 | finished | none · 55.0 [34.2, 74.2] "
        "| 3,5 · 55.0 [34.2, 74.2] | 3,5 · 55.0 [34.2, 74.2] | 3,5 · 55.0 [34.2, 74.2] |"
    )
    assert lines[5] == (
        "| 1 | searcher.epsilon=0.08 | failed: model path 'x' does not exist | - | - | - | - |"
    )
    assert lines[6].startswith("| 2 | searcher.epsilon=0.16 | no result | -")


@pytest.mark.slow
def test_a_multirun_goes_past_a_failed_job_and_ends_with_one_table(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "multirun"
    proc = run_cli(
        "-m", f"model.path={tmp_path / 'no-such-model'},{tiny_model_dir}", "n_opt=4",
        "n_eval=4", "searcher.max_drop=1", "latency=null", "tracking=none",
        f"storage.path={tmp_path / 't.db'}", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    # The first job fails, the second still runs to the end; the command then fails.
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in errors[0] and "(this job failed; the sweep goes on)" in errors[0]
    assert errors[1].startswith("error: 1 of 2 sweep jobs did not finish (#0); the table is in ")
    jobs = json.loads((sweep_dir / SUMMARY_JSON).read_text())
    assert [j["status"] for j in jobs] == [FAILED, FINISHED]
    finished = json.loads((Path(jobs[1]["dir"]) / "summary.json").read_text())
    assert finished == jobs[1]["summary"]
    table = (sweep_dir / SUMMARY_MD).read_text()
    assert table in proc.stdout + "\n"  # printed at the end, and written
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith(
        f"| 0 | model.path={tmp_path / 'no-such-model'} | failed: model path"
    )
    final = finished["final"]
    dropped = ",".join(str(i) for i in final["drop_layers"]) or "none"
    assert rows[1].startswith(f"| 1 | model.path={tiny_model_dir} | finished |")
    final_cell = rows[1].split(" | ")[-1]
    assert final_cell.startswith(f"{dropped} · {100 * final['heldout']['accuracy']:.1f} [")
