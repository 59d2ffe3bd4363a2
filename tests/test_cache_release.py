"""The hidden states cached for the search's candidates are freed once the search is over,
before the same model (workers=0) measures latency and scores the held-out split."""

from __future__ import annotations

import gc
import logging
import weakref
from pathlib import Path
from typing import Any

import pytest
import yaml

from tale_opt.evaluation.prefix_reuse import PrefixReuse
from tale_opt.types import Candidate, DropSet
from tests.test_evaluator import FakeMCTask, make_examples, make_tokenizer
from tests.test_prefix_reuse import outcome, setup

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"


def test_release_frees_the_cached_states_and_reuse_still_scores_exactly() -> None:
    tokenizer, task = make_tokenizer(), FakeMCTask(make_examples())
    evaluator, prepared = setup("llama", "loglik", tokenizer, task)
    reuse = PrefixReuse(evaluator, prepared, budget_gb=1.0)
    reuse.evaluate(DropSet((1,)), base=DropSet())
    assert reuse.cache is not None
    held, states = reuse.cache.nbytes, weakref.ref(reuse.cache)
    assert held > 0
    assert reuse.release() == held
    gc.collect()
    assert reuse.cache is None and states() is None  # nothing else kept them alive
    assert reuse.release() == 0  # nothing left to free
    # A later candidate captures again and scores as the plain path does.
    drop = DropSet((1, 2))
    assert outcome(reuse.evaluate(drop, base=DropSet((1,)))) == outcome(
        evaluator.evaluate(prepared, drop)
    )
    assert reuse.captures == 2


def study_config(model_dir: Path) -> dict[str, Any]:
    task = yaml.safe_load((CONF / "task" / "arc_easy.yaml").read_text())
    return {
        "model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "model_name": "tiny",
        "task": task,
        "eval": {"scoring": "loglik", "batch_size": 4},
        "prefix_cache_gb": 1.0,
        "seed": 0,
        "n_opt": 6,
        "n_eval": 4,
        "searcher": "tale",
        "probe": "task_accuracy",
    }


def test_the_candidate_evaluator_releases_its_caches_and_says_how_much(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tale_opt.pipeline.candidates import CandidateEvaluator

    evaluate = CandidateEvaluator(study_config(tiny_model_dir))
    evaluate(Candidate(DropSet((0,))), base=DropSet())
    assert evaluate.reuse.cache is not None
    states = weakref.ref(evaluate.reuse.cache)
    with caplog.at_level(logging.INFO, logger="tale_opt"):
        evaluate.release_caches()
    gc.collect()
    assert states() is None
    assert any("released" in r.message and "GiB" in r.message for r in caplog.records)


@pytest.mark.slow
def test_a_search_in_this_process_frees_them_before_latency_and_held_out(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.test_cli import run_cli

    run_dir = tmp_path / "run"
    proc = run_cli(
        f"model.path={tiny_model_dir}", "n_opt=6", "n_eval=4", "searcher.max_drop=1",
        "eval.batch_size=4", "workers=0", "tracking=none", f"hydra.run.dir={run_dir}",
        f"storage.path={tmp_path / 'trials.db'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run_dir / "tale_opt.log").read_text()
    released = log.find("search done: released")
    assert released != -1, log[-3000:]
    assert released < log.find("measuring latency"), log[-3000:]
