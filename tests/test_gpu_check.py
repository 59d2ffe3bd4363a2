"""benchmarks/gpu_check.py: the one-line skip without CUDA, the CPU smoke run's JSON, and the
checks it is made of failing when they should (score and prediction comparisons, one GPU per
worker)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tale_opt.evaluation.results import EvalResult, Prediction, compare_results

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SKIP_LINE = "gpu-check: skipped: no CUDA device visible (torch.cuda.is_available() is False)"


def run_check(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env},
        capture_output=True, text=True, timeout=1800,  # only against a hang
    )  # fmt: skip


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory) -> Any:
    """The script as a module (its directory on sys.path, as when it runs)."""
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    sys.path.remove(str(SCRIPT.parent))


def test_without_cuda_it_prints_one_line_writes_nothing_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = run_check("--out", str(out), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == SKIP_LINE + "\n"
    assert not out.exists()


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_part_and_exactness_holds(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = run_check("--device", "cpu", "--smoke", "--out", str(out), OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert list(parts) == ["environment", "exactness", "workers", "auto_map", "benchmarks"]
    assert all(p["seconds"] >= 0 for p in parts.values())
    statuses = {name: part["status"] for name, part in parts.items()}
    assert statuses == {"environment": "ok", "exactness": "ok", "workers": "skipped",
                        "auto_map": "skipped", "benchmarks": "ok"}  # fmt: skip
    assert "CUDA" in parts["workers"]["reason"] and "CUDA" in parts["auto_map"]["reason"]
    assert parts["environment"]["torch"] and parts["environment"]["gpus"] == []
    exactness = parts["exactness"]
    assert {"float32", "bfloat16"} <= set(exactness["tolerances"])
    assert all(exactness["tolerances"][d]["why"] for d in ("float32", "bfloat16"))
    cases = {(c["dtype"], c["scoring"]): c["comparisons"] for c in exactness["cases"]}
    assert set(cases) == {(d, s) for d in ("float32", "bfloat16") for s in ("letters", "loglik")}
    for comparisons in cases.values():
        kinds = {c["comparison"] for c in comparisons}
        assert kinds == {"batched_vs_batch1", "shared_prefix_vs_plain", "prefix_reuse_vs_plain"}
        for c in comparisons:
            assert c["ok"] and c["within_tolerance"] and c["predictions_agree"], c
            assert c["n_examples"] > 0
            if c["comparison"] == "prefix_reuse_vs_plain":
                assert c["bit_identical"] and c["start_layer"] is not None
    runs = parts["benchmarks"]["runs"]
    evaluator, generation = runs["evaluator_tiny"], runs["generation_tiny"]
    assert evaluator["status"] == generation["status"] == "ok"
    modes = evaluator["figures"]["modes"]
    assert modes[0]["mode"].startswith("(a)") and any(m["mode"].startswith("(c)") for m in modes)
    assert all(m["vs_floor"] > 0 and m["seconds_per_candidate_example"] > 0 for m in modes)
    assert evaluator["figures"]["prefix_reuse_bit_identical"] is True
    assert generation["figures"]["speedup_vs_reference"] > 0
    assert "gpu-check: ok" in proc.stdout


def result(scores: list[tuple[float, ...]], picks: list[int] | None = None) -> EvalResult:
    picks = picks if picks is not None else [max(range(len(s)), key=s.__getitem__) for s in scores]
    predictions = [
        Prediction(f"e{i}", pick, 0, pick == 0, "", s)
        for i, (s, pick) in enumerate(zip(scores, picks, strict=True))
    ]
    n_correct = sum(p.correct for p in predictions)
    return EvalResult("letters", n_correct / len(scores), 0.0, len(scores), n_correct, 0,
                      predictions, 0.0)  # fmt: skip


def test_compare_results_flags_scores_beyond_tolerance_and_unexplained_flips() -> None:
    reference = result([(-1.0, -2.0), (-3.0, -1.0)])
    assert compare_results(reference, reference).bit_identical
    close = result([(-1.00005, -2.0), (-3.0, -1.0)])
    diff = compare_results(close, reference, abs_tol=1e-4)
    assert diff.within_tolerance and not diff.bit_identical
    assert diff.max_abs_diff == pytest.approx(5e-5)
    assert not compare_results(close, reference).within_tolerance  # default: bit-identical
    far = compare_results(result([(-1.5, -2.0), (-3.0, -1.0)]), reference, abs_tol=1e-4)
    assert far.outside == ("e0",) and not far.within_tolerance
    # A flipped pick between two scores 1 nat apart is a bug; within twice the tolerance a tie.
    flipped = result([(-1.0, -2.0), (-3.0, -1.0)], picks=[1, 1])
    assert compare_results(flipped, reference, abs_tol=1e-4).unexplained == ("e0",)
    near = result([(-1.0, -1.0001), (-3.0, -1.0)])
    tie = compare_results(result([(-1.0, -1.0001)] + [(-3.0, -1.0)], picks=[1, 1]), near,
                          abs_tol=1e-4)  # fmt: skip
    assert tie.different_predictions == ("e0",) and not tie.unexplained and tie.within_tolerance
    with pytest.raises(ValueError, match="same examples"):
        compare_results(result([(-1.0, -2.0)]), reference)


def joined(worker: str, gpu: str) -> str:
    return (f"[2026-01-01][tale_opt.worker] worker {worker} joined study s1 (sqlite x.db); "
            f"model on cuda:0 (NVIDIA H100, GPU-{gpu}); CUDA_VISIBLE_DEVICES=0\n")  # fmt: skip


def test_worker_gpu_check_passes_only_with_one_gpu_per_worker(gpu_check: Any) -> None:
    log = joined("h:1", "aaaa-1") + "noise\n" + joined("h:2", "bbbb-2")
    good = gpu_check.verify_worker_gpus(log, ["h:1", "h:2", "h:1", None], 2)
    assert good["ok"] and good["distinct_gpus"] == 2, good
    assert good["workers"]["h:1"]["trials"] == 2
    shared = gpu_check.verify_worker_gpus(joined("h:1", "aaaa-1") + joined("h:2", "aaaa-1"),
                                          ["h:1"], 2)  # fmt: skip
    assert not shared["ok"] and "share 1 GPU" in " ".join(shared["problems"])
    stranger = gpu_check.verify_worker_gpus(log, ["h:1", "h:9"], 2)
    assert not stranger["ok"] and "h:9" in " ".join(stranger["problems"])
    missing = gpu_check.verify_worker_gpus(joined("h:1", "aaaa-1"), ["h:1"], 2)
    assert not missing["ok"] and "1 workers joined, expected 2" in missing["problems"]
    cpu = gpu_check.verify_worker_gpus(log.replace("GPU-", "cpu-"), ["h:1"], 2)
    assert not cpu["ok"]
