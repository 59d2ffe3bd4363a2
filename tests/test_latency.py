"""Latency measurement and `python -m tale_opt bench`: mechanics only (no speed assertions).

Timings on a shared CPU are noise-dominated for tiny models, so the tests pin what is
measured and reported -- positive times, one result per batch size, the layer count under a
drop set, analytic TFLOPs that fall with the layer count -- never which variant is faster.
"""

from __future__ import annotations

import json

import pytest

from tale_opt.commands.bench import main as bench_main
from tale_opt.cost.latency import LatencySettings, measure_latency, speedups
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


def test_pick_costs_measure_each_distinct_drop_set_once(tiny_model, monkeypatch):
    from types import SimpleNamespace

    import tale_opt.cost.bench as bench

    model = tiny_model("llama")
    calls = []
    real = bench.measure_latency
    monkeypatch.setattr(
        bench, "measure_latency", lambda m, drop, s: calls.append(drop) or real(m, drop, s)
    )
    picks = {"baseline": DropSet(), "best": DropSet((2,)), "bsba": DropSet((2,))}
    prepared = SimpleNamespace(scoring="letters", prompt_ids=((1,) * 12,) * 3)
    settings = LatencySettings(batch_sizes=(1,), prompt_tokens=4, new_tokens=2, repeats=1)
    costs = bench.pick_costs(model, picks, settings, prepared=prepared)
    assert sorted(calls) == [DropSet(), DropSet((2,))]
    assert costs["baseline"]["speedup_measured"] == pytest.approx(1.0)
    assert costs["best"]["latency"]["b1"]["ttft_ms"] > 0
    assert costs["best"]["tflops"] < costs["baseline"]["tflops"]
    assert bench.pick_costs(model, picks, None, prepared=prepared)["bsba"].keys() == {"tflops"}
