"""benchmarks/merge_stability.py: an earlier report's Seeds table read back as finished runs
and merged with live runs gives the report that all the runs together would give."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tale_opt.errors import UsageError
from tale_opt.reporting.stability import collect, stability_markdown
from tale_opt.tracking.query import RunRecord

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "merge_stability.py"


@pytest.fixture(scope="module")
def merge_script():
    spec = importlib.util.spec_from_file_location("merge_stability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _run(run_id: str, seed: int, n_opt: int, drop: str, final: float, baseline: float, **over):
    params = {
        "model.name": "tiny", "task.name": "arc_easy", "searcher.name": "tale",
        "searcher.epsilon": "0.08", "searcher.max_drop": "1", "eval.scoring": "loglik",
        "n_eval": "100", "seed": str(seed), "n_opt": str(n_opt), **over,
    }  # fmt: skip
    metrics = {
        "num_layers": 6.0, "n_opt": float(n_opt), "final.heldout.accuracy": final,
        "baseline.heldout.accuracy": baseline, "final.heldout.n_examples": 100.0,
        "final.heldout.n_correct": round(final * 100),
    }  # fmt: skip
    tags = {"seed": str(seed), "tale_opt.final.drop": drop}
    return RunRecord(run_id * 4, None, "FINISHED", 10 + seed, params, tags, metrics)


EARLIER = [
    _run("a", 0, 16, "2", 0.55, 0.60),
    _run("b", 1, 16, "", 0.61, 0.62),
    _run("c", 0, 32, "2,4", 0.47, 0.58),
]
LIVE = [_run("d", 1, 32, "4", 0.53, 0.52), _run("e", 2, 32, "1", 0.50, 0.55)]


def test_merged_report_equals_the_report_of_all_runs(merge_script, tmp_path) -> None:
    earlier = tmp_path / "stability.md"
    earlier.write_text(stability_markdown(collect(EARLIER)))
    rows = merge_script.read_previous(earlier)
    assert [(r.n_opt, r.seed, r.drop, r.final) for r in rows] == [
        (16, "0", "2", 0.55), (16, "1", "none", 0.61), (32, "0", "2,4", 0.47),
    ]  # fmt: skip
    merged = collect(merge_script.merge(rows, LIVE))
    together = collect([*EARLIER, *LIVE])
    assert len(merged.groups) == 1
    got, want = merged.groups[0], together.groups[0]
    assert [c.n_opt for c in got.cells] == [c.n_opt for c in want.cells] == [16, 32]
    for g, w in zip(got.cells, want.cells, strict=True):
        assert [(r.seed, r.final_drop, r.final_heldout, r.baseline_heldout) for r in g.runs] == [
            (r.seed, r.final_drop, r.final_heldout, r.baseline_heldout) for r in w.runs
        ]
        assert [r.final_interval for r in g.runs] == [r.final_interval for r in w.runs]
        assert g.jaccard == w.jaccard
    # The earlier runs keep their ids (8 characters, as the report shows them).
    assert {r.run_id for c in got.cells for r in c.runs} >= {"aaaa", "bbbb", "cccc"}


def test_a_seed_in_both_is_taken_from_the_live_store(merge_script, tmp_path) -> None:
    earlier = tmp_path / "stability.md"
    earlier.write_text(stability_markdown(collect(EARLIER)))
    rerun = _run("f", 0, 32, "5", 0.40, 0.58)
    merged = collect(merge_script.merge(merge_script.read_previous(earlier), [*LIVE, rerun]))
    seed0 = [r for c in merged.groups[0].cells if c.n_opt == 32 for r in c.runs if r.seed == "0"]
    assert [r.run_id for r in seed0] == ["ffff"] and merged.superseded == ["cccc"]


def test_refuses_runs_with_other_settings(merge_script, tmp_path) -> None:
    earlier = tmp_path / "stability.md"
    earlier.write_text(stability_markdown(collect(EARLIER)))
    other = [_run("d", 1, 32, "4", 0.53, 0.52, **{"searcher.epsilon": "0.02"})]
    with pytest.raises(UsageError, match="settings differ"):
        merge_script.merge(merge_script.read_previous(earlier), other)
    with pytest.raises(UsageError, match="no Seeds table"):
        merge_script.read_previous(SCRIPT)
