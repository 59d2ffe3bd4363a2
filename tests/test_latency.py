"""Latency measurement and `python -m tale_opt bench`: mechanics only (no speed assertions).

Timings on a shared CPU are noise-dominated for tiny models, so the tests pin what is
measured and reported -- positive times, one result per batch size, the layer count under a
drop set, analytic TFLOPs that fall with the layer count -- never which variant is faster.
"""

from __future__ import annotations

import json

import pytest

from tale_opt.commands.bench import main as bench_main
from tale_opt.cost.bench import speedup_fields
from tale_opt.cost.credibility import check_speedup
from tale_opt.cost.latency import (
    LatencyResult,
    LatencySettings,
    measure_interleaved,
    measure_latency,
    paired_speedup,
    speedups,
)
from tale_opt.model.export import export_pruned
from tale_opt.model.surgery import num_decoder_layers
from tale_opt.types import DropSet

QUICK = LatencySettings(batch_sizes=(1, 2), prompt_tokens=8, new_tokens=3, repeats=2, warmup=1)
QUICK_ARGS = [
    "--batch-sizes",
    "1,2",
    "--prompt-tokens",
    "8",
    "--new-tokens",
    "3",
    "--repeats",
    "2",
    "--device",
    "cpu",
]


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_measure_latency_reports_every_batch_size(tiny_model, family):
    model = tiny_model(family)
    results = measure_latency(model, DropSet((1, 4)), QUICK)
    assert [r.batch_size for r in results] == [1, 2]
    for r in results:
        assert r.num_layers == 4 and r.device == "cpu"
        assert r.ttft_ms > 0 and r.generate_ms > 0 and r.tokens_per_s > 0
        assert r.decode_ms_per_token is not None and r.decode_ms_per_token >= 0
        assert (r.prompt_tokens, r.new_tokens, r.repeats) == (8, 3, 2)
        assert set(r.metrics()) == {
            f"latency.b{r.batch_size}.ttft_ms",
            f"latency.b{r.batch_size}.tokens_per_s",
            f"latency.b{r.batch_size}.decode_ms_per_token",
        }
    assert num_decoder_layers(model) == 6  # the layers are back afterwards


def test_one_new_token_has_no_decode_time(tiny_model):
    settings = LatencySettings(batch_sizes=(1,), prompt_tokens=4, new_tokens=1, repeats=1)
    (result,) = measure_latency(tiny_model("qwen2"), settings=settings)
    assert result.decode_ms_per_token is None
    assert "latency.b1.decode_ms_per_token" not in result.metrics()


def test_speedups_are_ratios_against_the_baseline(tiny_model):
    model = tiny_model("llama")
    base = measure_latency(model, settings=QUICK)
    ratios = speedups(base, base)
    assert set(ratios) == {1, 2}
    assert ratios[1]["ttft"] == pytest.approx(1.0)
    assert ratios[2]["throughput"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(batch_sizes=()), "batch_sizes must list at least one"),
        (dict(batch_sizes=(0,)), r"batch_sizes\[\] must be an integer >= 1"),
        (dict(new_tokens=0), "new_tokens must be an integer >= 1"),
        (dict(repeats=0), "repeats must be an integer >= 1"),
        (dict(warmup=-1), "warmup must be an integer >= 0"),
        (dict(prompt_tokens="64"), "prompt_tokens must be an integer >= 1, but got '64'"),
    ],
)
def test_latency_settings_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        LatencySettings(**options)


def test_latency_settings_from_a_config_node():
    assert LatencySettings.from_mapping({"batch_sizes": [1, 4]}).batch_sizes == (1, 4)
    with pytest.raises(ValueError, match="latency has no option 'batch'"):
        LatencySettings.from_mapping({"batch": 4})


@pytest.fixture
def tiny_dirs(tmp_path, tiny_model, tiny_tokenizer):
    """A tiny Qwen2 checkpoint and its export without layers 1 and 4."""
    model = tiny_model("qwen2")
    base = tmp_path / "base"
    model.save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    pruned = export_pruned(
        model, tiny_tokenizer, DropSet((1, 4)), tmp_path / "pruned", source=str(base)
    )
    return base, pruned


@pytest.mark.slow
def test_bench_compares_baseline_drop_set_and_checkpoint(tiny_dirs, tmp_path, capsys):
    base, pruned = tiny_dirs
    out = tmp_path / "bench.json"
    bench_main(
        [
            "--model",
            str(base),
            "--drop",
            "1,4",
            "--checkpoint",
            str(pruned),
            "--json",
            str(out),
            *QUICK_ARGS,
        ]
    )
    table = capsys.readouterr().out
    assert "| baseline | — | 6 | 1 |" in table
    assert "| drop 1,4 | 1,4 | 4 | 2 |" in table
    assert "| checkpoint pruned | 1,4 | 4 | 1 |" in table
    rows = json.loads(out.read_text())
    assert [r["label"] for r in rows] == ["baseline", "drop 1,4", "checkpoint pruned"]
    for b in ("1", "2"):
        # Fewer layers, fewer FLOPs; the export and the in-memory drop set cost the same.
        assert rows[1]["tflops"][b] < rows[0]["tflops"][b]
        assert rows[2]["tflops"][b] == pytest.approx(rows[1]["tflops"][b])
        assert rows[0]["speedup"][b]["ttft"] == pytest.approx(1.0)
        assert rows[1]["speedup"][b]["throughput"] > 0


def test_bench_takes_the_baseline_from_the_checkpoint_metadata(tiny_dirs, capsys):
    _, pruned = tiny_dirs
    bench_main(
        [
            "--checkpoint",
            str(pruned),
            "--batch-sizes",
            "1",
            "--prompt-tokens",
            "4",
            "--new-tokens",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert "baseline: " in out and "| checkpoint pruned | 1,4 | 4 | 1 |" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give --model"),
        (["--model", "MODEL", "--batch-sizes", "1,x"], "--batch-sizes must be integers"),
        (["--model", "MODEL", "--new-tokens", "0"], "new_tokens must be an integer >= 1"),
        (["--model", "MODEL", "--drop", "1,99"], "out of range"),
        (["--model", "MODEL", "--drop", "a"], "--drop"),
        (["--checkpoint", "MODEL"], "pass the baseline with --model"),  # no export metadata
    ],
)
def test_bench_usage_errors_exit_2_with_one_line(tiny_dirs, capsys, argv, message):
    base, _ = tiny_dirs
    argv = [str(base) if a == "MODEL" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_pick_costs_measure_each_distinct_drop_set_once_interleaved(tiny_model, monkeypatch):
    from types import SimpleNamespace

    import tale_opt.cost.bench as bench

    model = tiny_model("llama")
    loops = []
    real = bench.measure_interleaved

    def recording(configurations, settings, **kwargs):
        loops.append([drop for _, drop in configurations])
        return real(configurations, settings, **kwargs)

    monkeypatch.setattr(bench, "measure_interleaved", recording)
    picks = {"best": DropSet((2,)), "bsba": DropSet((2,)), "final": DropSet((2, 3))}
    prepared = SimpleNamespace(scoring="letters", prompt_ids=((1,) * 12,) * 3)
    settings = LatencySettings(batch_sizes=(1,), prompt_tokens=4, new_tokens=2, repeats=3)
    lines = []
    costs = bench.pick_costs(model, picks, settings, prepared=prepared, progress=lines.append)
    # One loop; the full model in it although no pick is the baseline (the reference).
    assert loops == [[DropSet(), DropSet((2,)), DropSet((2, 3))]]
    assert lines[0] == "batch 1: warming up 3 configuration(s)" and len(lines) == 1 + 3
    assert "repeat 3/3 of 3 configuration(s) timed" in lines[-1]
    b1 = costs["best"]["latency"]["b1"]
    assert 0 < b1["generate_ms_min"] <= b1["generate_ms"] <= b1["generate_ms_max"]
    assert b1["ttft_ms_min"] <= b1["ttft_ms"] <= b1["ttft_ms_max"]
    check = costs["final"]["speedup_check"]
    assert check["ceiling"] == pytest.approx(6 / 4)
    assert check["low"] <= check["measured"] <= check["high"]
    # Credible or not (timing on a shared CPU), the measured figure is kept only when it is.
    assert ("speedup_measured" in costs["final"]) == check["credible"]
    assert costs["final"]["tflops"] < costs["best"]["tflops"]
    assert bench.pick_costs(model, picks, None, prepared=prepared)["bsba"].keys() == {"tflops"}


def test_interleaved_results_pair_up_repeat_by_repeat(tiny_model):
    model = tiny_model("qwen2")
    settings = LatencySettings(batch_sizes=(1, 2), prompt_tokens=4, new_tokens=2, repeats=3)
    base, pruned = measure_interleaved([(model, DropSet()), (model, DropSet((0, 5)))], settings)
    assert [r.num_layers for r in base] == [6, 6] and [r.num_layers for r in pruned] == [4, 4]
    for r in (*base, *pruned):
        assert len(r.generate_ms_runs) == 3
        assert r.generate_ms_min == min(r.generate_ms_runs) > 0
        assert r.generate_ms_max == max(r.generate_ms_runs)
        assert r.generate_ms_min <= r.generate_ms <= r.generate_ms_max
    assert paired_speedup(base[0], base[0]) == (1.0, 1.0, 1.0)
    median, low, high = paired_speedup(base[0], pruned[0])
    ratios = [
        b / p for b, p in zip(base[0].generate_ms_runs, pruned[0].generate_ms_runs, strict=True)
    ]
    assert (low, high) == (min(ratios), max(ratios)) and median == sorted(ratios)[1]
    assert num_decoder_layers(model) == 6 and not model.training


def _timed(num_layers: int, runs: tuple[float, ...]) -> LatencyResult:
    """A result with constructed timings (ms): what a loaded machine can produce."""
    return LatencyResult(
        batch_size=1, prompt_tokens=64, new_tokens=16, num_layers=num_layers, device="cpu",
        ttft_ms=10.0, decode_ms_per_token=1.0, generate_ms=sorted(runs)[len(runs) // 2],
        tokens_per_s=1.0, repeats=len(runs), generate_ms_runs=runs,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("measured", "num_layers", "dropped", "credible"),
    [
        (2.21, 30, 1, False),  # the ceiling is 30/29 = 1.034x
        (1.13, 30, 1, True),  # within 10 % of the ceiling
        (1.14, 30, 1, False),
        (1.02, 30, 1, True),
        (0.92, 30, 1, True),  # a little slower: timing noise
        (0.90, 30, 1, False),  # removing layers cannot make it this much slower
        (1.00, 30, 0, True),
        (1.45, 30, 10, True),  # ceiling 1.5x
        (1.70, 30, 10, False),
    ],
)
def test_speedup_credibility_against_the_layer_ceiling(measured, num_layers, dropped, credible):
    check = check_speedup(measured, num_layers, dropped, tolerance=0.1)
    assert check.credible is credible
    assert check.ceiling == pytest.approx(num_layers / (num_layers - dropped))
    assert (check.reason is None) is credible


def test_an_incredible_speedup_is_refused_and_ae_hm_uses_the_estimate():
    """1 of 30 layers dropped "measured" 2.21x (a load burst slowed the baseline's repeats):
    refused, and AE-HM ranks that configuration by the estimate 30/29, not by 2.21."""
    from tale_opt.pipeline.summary import pick_configurations
    from tale_opt.types import Candidate, Observation, SearchResult

    base = _timed(30, (221.0, 230.0, 180.0))
    one = _timed(29, (100.0, 100.0, 85.0))  # 2.21x, 2.30x, 2.12x repeat by repeat
    two = _timed(28, (210.0, 220.0, 170.0))  # 1.052x, 1.045x, 1.059x
    fields = {DropSet((5,)): speedup_fields(base, one, 0.1)}
    fields[DropSet((5, 9))] = speedup_fields(base, two, 0.1)
    refused = fields[DropSet((5,))]
    assert "speedup_measured" not in refused
    check = refused["speedup_check"]
    assert not check["credible"] and check["measured"] == pytest.approx(2.21)
    assert (check["low"], check["high"]) == pytest.approx((2.1176, 2.3), abs=1e-4)
    assert "above the 1.034× that removing 1 of 30 layers can give" in check["reason"]
    assert fields[DropSet((5, 9))]["speedup_measured"] == pytest.approx(221 / 210)

    def obs(drop, score):
        return Observation(Candidate(DropSet(drop)), score)

    trajectory = (obs((), 0.60), obs((5,), 0.55), obs((5, 9), 0.59))
    result = SearchResult(
        baseline=trajectory[0], threshold=0.5, trajectory=trajectory, best=trajectory[0],
        bsba=trajectory[0], stop_reason="max_drop_reached", observations=trajectory,
    )  # fmt: skip
    # Believed, 2.2x would make {5} the AE-HM pick; refused, {5,9} wins on the estimates
    # (30/29 for {5}; 221/210 measured for {5,9}).
    believed = {DropSet((5,)): {"speedup_measured": 2.21}}
    assert pick_configurations(result, 30, 1.0, believed)["ae_hm"].drop == DropSet((5,))
    assert pick_configurations(result, 30, 1.0, fields)["ae_hm"].drop == DropSet((5, 9))


def test_summary_table_marks_measured_and_estimated_speedups():
    from tale_opt.pipeline.summary_table import _speedup

    assert _speedup({"speedup_measured": 1.0412, "speedup_estimate": 1.0345}) == ("1.04× measured")
    refused = {"speedup_estimate": 1.0345, "speedup_check": {"measured": 2.21}}
    assert _speedup(refused) == "~1.03× estimated (measured 2.21× not credible)"
    assert _speedup({"speedup_estimate": 1.0345}) == "~1.03× estimated"
