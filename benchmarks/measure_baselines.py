"""Accuracy of the FULL (unpruned) model on each task's held-out split, over a settings grid.

    python benchmarks/measure_baselines.py --out baselines/               # the whole grid
    python benchmarks/measure_baselines.py --models smollm2 --tasks arc_easy,boolean_expressions \\
        --scorings letters,loglik,generate --shots 0,5 --limit 4 --out /tmp/smoke   # a smoke test

A search is only worth running where the full model is clearly above chance: otherwise its
candidates rank noise. This script measures that for every cell of models × tasks × scoring
modes × few-shot k, so a default setting can be chosen from data.

Each cell composes the real Hydra config a search would use (``model=M task=T eval.scoring=S
task.fewshot.k=K seed=SEED [n_eval=N] [--set overrides]``), so the held-out split, prompts and
evaluator options are exactly those of a search with these settings; then it goes through
`study_config` → `load_task_and_splits` → `build_evaluator` and scores the held-out split
(`--limit N`: only its first N examples) with no layer dropped. The model is loaded once per
model; every cell builds its own evaluator on it.

Per cell: accuracy with its 95% Wilson interval, `accuracy_norm` (loglik only; lm-eval's
acc_norm) with its interval, chance accuracy (mean of 1 / options over the examples scored;
True/False answers count 2 options; free-form answers have none), the margin above chance
(interval's lower bound − chance, in points: > 0 means clearly above chance), invalid rate,
the most frequent prediction and its share, and seconds (per example: the scoring pass only,
tokenization excluded). Cells the evaluator refuses (letters/loglik on a generative task) are
recorded as skipped, with its reason.

Resumable: each finished cell is one JSON line appended to ``<out>/baselines.jsonl`` (flushed
and fsynced); a restart with the same settings skips the cells already there. After each cell
``<out>/baselines.md`` is rewritten (atomically) and per-example predictions go to
``<out>/predictions/``. A cell that fails unexpectedly is reported and retried next time.
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tale_opt.errors import UsageError  # noqa: E402
from tale_opt.pipeline.candidates import (  # noqa: E402
    build_evaluator,
    check_eval_options,
    load_task_and_splits,
    model_spec,
    prediction_rows,
    study_config,
)
from tale_opt.pipeline.outputs import write_text_atomic  # noqa: E402
from tale_opt.pipeline.significance import answer_profile, chance_level  # noqa: E402
from tale_opt.stats import format_accuracy, wilson_interval  # noqa: E402

CONF_DIR = ROOT / "tale_opt" / "conf"
RESULTS, TABLE, PREDICTIONS = "baselines.jsonl", "baselines.md", "predictions"
WIDE_TABLE = "baselines_wide.md"  # one row per model × task × k (the README's view)
DEFAULT_TASKS = "arc_easy,arc_challenge,boolq,commonsense_qa,winogrande,mmlu,boolean_expressions"
# Generative answers drawn from a fixed set (answer parser -> number of possible answers);
# other generative answers (numbers, LaTeX) are free-form and have no chance level.

Loader = Callable[[Any], tuple[Any, Any]]  # ModelSpec -> (model, tokenizer)


@dataclass(frozen=True)
class Cell:
    model: str  # Hydra model config name
    task: str  # Hydra task config name
    scoring: str
    k: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.model, self.task, self.scoring, self.k)

    def overrides(self, seed: int, n_eval: str | None, extra: Sequence[str]) -> list[str]:
        out = [f"model={self.model}", f"task={self.task}", f"eval.scoring={self.scoring}",
               f"task.fewshot.k={self.k}", f"seed={seed}"]  # fmt: skip
        if n_eval is not None:
            out.append(f"n_eval={n_eval}")
        return [*out, *extra]

    def label(self) -> str:
        return f"{self.model} {self.task} k={self.k} {self.scoring}"

    def file_stem(self) -> str:
        return f"{self.model}__{self.task}__k{self.k}__{self.scoring}"


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=_names,
        default=["smollm2"],
        help="Hydra model config names (conf/model), comma-separated",
    )
    parser.add_argument(
        "--tasks",
        type=_names,
        default=_names(DEFAULT_TASKS),
        help=f"Hydra task config names (default: {DEFAULT_TASKS})",
    )
    parser.add_argument("--scorings", type=_names, default=["letters", "loglik", "generate"])
    parser.add_argument(
        "--shots",
        type=lambda s: [int(x) for x in _names(s)],
        default=[0, 5],
        help="few-shot k values (task.fewshot.k), e.g. 0,5",
    )
    parser.add_argument(
        "--n-eval",
        default=None,
        help="held-out size override (n_eval=N; 'null' or 'all': every remaining example); "
        "default: the task's own n_eval",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score only the first N held-out examples (smoke tests)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (seed=...)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for every cell, e.g. eval.batch_size=64 "
        "or model.device=cpu (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=Path("baselines"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)  # fmt: skip
    if args.n_eval is not None:
        if args.n_eval in ("null", "all"):
            args.n_eval = "null"
        elif not args.n_eval.isdigit() or int(args.n_eval) < 1:
            parser.error(f"--n-eval must be an integer >= 1 or 'null', got {args.n_eval!r}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    return args


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every cell of one output directory must share (checked on resume)."""
    return {"seed": args.seed, "n_eval": args.n_eval, "limit": args.limit,
            "overrides": list(args.overrides)}  # fmt: skip


# -- configs ------------------------------------------------------------------------------


def check_names(cells: Sequence[Cell]) -> None:
    """Refuse unknown model, task or scoring names (with a suggestion) before any work.

    Raises:
        UsageError: An unknown name.
    """
    from tale_opt.commands.config import check_group_choices
    from tale_opt.evaluation.evaluator import SCORING_MODES

    unknown = sorted({c.scoring for c in cells} - SCORING_MODES)
    if unknown:
        raise UsageError(f"unknown scoring mode(s) {unknown}; use {sorted(SCORING_MODES)}")
    models = sorted({c.model for c in cells})
    tasks = sorted({c.task for c in cells})
    check_group_choices([f"model={','.join(models)}", f"task={','.join(tasks)}"])


def compose_configs(cells: Sequence[Cell], args: argparse.Namespace) -> dict[tuple, dict]:
    """The resolved Hydra config of every cell (`hydra.compose`, as a user run composes it).

    Raises:
        UsageError: A bad override.
    """
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose

    configs = {}
    for cell in cells:
        overrides = cell.overrides(args.seed, args.n_eval, args.overrides)
        try:
            cfg = compose(overrides)
        except UsageError as err:
            raise UsageError(f"{cell.label()}: {err} (overrides: {overrides})") from err
        configs[cell.key] = OmegaConf.to_container(cfg, resolve=True)
    return configs


# -- one cell -----------------------------------------------------------------------------


def _points(low: float | None, chance: float | None) -> float | None:
    if low is None or chance is None:
        return None
    return round(100 * (low - chance), 2)


def measure_cell(
    cell: Cell, config: Mapping[str, Any], model: Any, tokenizer: Any, task: Any, splits: Any,
    limit: int | None, warmup: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Score the full model on the cell's held-out split: (record, prediction rows).

    `warmup`: first score one example untimed (a model's first forward pays one-time costs).

    Raises:
        UsageError: The evaluator refuses the cell (e.g. letters on a generative task).
    """
    examples = list(splits.evaluation)[:limit] if limit else list(splits.evaluation)
    evaluator = build_evaluator(config, model, tokenizer, task)
    started = time.perf_counter()
    prepared = evaluator.prepare(examples)  # refuses modes the task cannot be scored with
    prepare_s = time.perf_counter() - started
    if warmup:
        evaluator.evaluate(evaluator.prepare(examples[:1]))
    res = evaluator.evaluate(prepared, progress=cell.label())
    n = res.n_examples
    ci = wilson_interval(res.n_correct, n)
    chance = chance_level(task, examples)
    norm_ci = None
    if res.accuracy_norm is not None:
        norm_ci = wilson_interval(round(res.accuracy_norm * n), n)
    profile = answer_profile(task, res, examples)
    top, share = profile["top_answer"], profile["top_answer_share"]
    record = {
        "status": "ok",
        **_cell_fields(cell, config),
        "n": n,
        "n_heldout": len(splits.evaluation),
        "n_correct": res.n_correct,
        "accuracy": res.accuracy,
        "ci": list(ci),
        "accuracy_norm": res.accuracy_norm,
        "ci_norm": list(norm_ci) if norm_ci else None,
        "chance": chance,
        "margin_pts": _points(ci[0], chance),
        "margin_norm_pts": _points(norm_ci[0] if norm_ci else None, chance),
        "invalid_rate": res.invalid_rate,
        "top_prediction": top,
        "top_share": share,
        "seconds": round(res.seconds, 3),
        "prepare_seconds": round(prepare_s, 3),
        "s_per_example": round(res.seconds / n, 4),
        "batch_size": evaluator.batch_size,
        "max_new_tokens": evaluator.max_new_tokens,
        "shared_prefix_tokens": prepared.shared_len,
        "prompt_tokens_mean": round(prepared.n_prompt_tokens / n, 1),
        "device": str(evaluator.device),
        "prompt_version": task.prompt_version,
        "splits_fingerprint": splits.fingerprint,
    }
    return record, prediction_rows(res)


def _cell_fields(cell: Cell, config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "model": cell.model,
        "model_name": config["model_name"],
        "task": cell.task,
        "scoring": cell.scoring,
        "k": cell.k,
    }


# -- files --------------------------------------------------------------------------------


def read_results(path: Path, settings: Mapping[str, Any]) -> dict[tuple, dict]:
    """The cells already measured in `path` (a truncated last line is ignored).

    Raises:
        UsageError: The file holds cells measured with other settings.
    """
    done: dict[tuple, dict] = {}
    if not path.exists():
        return done
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(f"warning: {path}:{number} is not JSON (an interrupted write?); ignored")
            continue
        if record.get("settings") != settings:
            raise UsageError(
                f"{path} holds cells measured with {record.get('settings')}, not {settings}; "
                "use another --out for other settings"
            )
        done[(record["model"], record["task"], record["scoring"], record["k"])] = record
    return done


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line durably (after a crash mid-line, start on a fresh line)."""
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_table(
    records: Iterable[Mapping[str, Any]], settings: Mapping[str, Any], failed: Sequence[str] = ()
) -> str:
    """The markdown report: one row per measured cell, then the skipped and failed cells."""
    records = list(records)
    order = {"letters": 0, "loglik": 1, "generate": 2}

    def sort_key(r: Mapping[str, Any]) -> tuple:
        return (r["model"], r["task"], r["k"], order.get(r["scoring"], 9), r["scoring"])

    rows = sorted((r for r in records if r["status"] == "ok"), key=sort_key)
    skipped = sorted((r for r in records if r["status"] != "ok"), key=sort_key)
    lines = [
        "# Full-model accuracy on the held-out split",
        "",
        f"Settings: {json.dumps(dict(settings), sort_keys=True)}. Intervals: 95% Wilson. "
        "margin = lower bound − chance, in points (> 0: clearly above chance; loglik: "
        "acc / acc_norm). s/example: the scoring pass only.",
        "",
        "| model | task | k | scoring | n | acc % [95% CI] | acc_norm % [95% CI] | chance % "
        "| margin (pts) | invalid % | top label share | s/example |",
        "|---|---|---:|---|---:|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        margin = "-" if r["margin_pts"] is None else f"{r['margin_pts']:+.1f}"
        if r.get("margin_norm_pts") is not None:
            margin += f" / {r['margin_norm_pts']:+.1f}"
        top = f"{r['top_prediction']} {100 * r['top_share']:.0f}%"
        lines.append(
            f"| {r['model']} | {r['task']} | {r['k']} | {r['scoring']} | {r['n']} "
            f"| {format_accuracy(r['accuracy'], r['ci'])} "
            f"| {format_accuracy(r['accuracy_norm'], r['ci_norm'])} "
            f"| {_pct(r['chance'])} | {margin} | {_pct(r['invalid_rate'])} | {top} "
            f"| {r['s_per_example']:.3f} |"
        )
    if skipped:
        lines += ["", "Skipped (the evaluator refuses these):", ""]
        lines += [
            f"- {r['model']} {r['task']} k={r['k']} {r['scoring']}: {r['reason']}" for r in skipped
        ]
    if failed:
        lines += ["", "Failed in this run (retried on the next run):", ""]
        lines += [f"- {line}" for line in failed]
    return "\n".join(lines) + "\n"


ONE_ANSWER = 0.9  # a top-answer share from which a cell is flagged: the model answers one label


def wide_table(records: Iterable[Mapping[str, Any]]) -> str:
    """One row per model × task × k, one column per scoring: the compact view for a README.

    A cell is ``acc [95% CI]``; ``*`` marks cells whose most frequent answer covers at least
    90% of the questions (the accuracy is then mostly the base rate of that answer).
    """
    cells: dict[tuple[str, str, int], dict[str, Mapping[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok":
            cells.setdefault((r["model"], r["task"], r["k"]), {})[r["scoring"]] = r

    def cell(r: Mapping[str, Any] | None, norm: bool = False) -> str:
        if r is None:
            return "—"
        if norm:
            return format_accuracy(r["accuracy_norm"], r["ci_norm"])
        flag = "*" if r["top_share"] >= ONE_ANSWER else ""
        return format_accuracy(r["accuracy"], r["ci"]) + flag

    lines = [
        "| model | task | k | n | chance % | letters | loglik acc | loglik acc_norm | generate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, task, k), by in sorted(cells.items()):
        first = next(iter(by.values()))
        lines.append(
            f"| {model} | {task} | {k} | {first['n']} | {_pct(first['chance'])} "
            f"| {cell(by.get('letters'))} | {cell(by.get('loglik'))} "
            f"| {cell(by.get('loglik'), norm=True)} | {cell(by.get('generate'))} |"
        )
    return "\n".join(lines) + "\n"


# -- the grid -----------------------------------------------------------------------------


def _load_model(spec: Any) -> tuple[Any, Any]:
    from tale_opt.model.loading import load_model

    return load_model(spec)


def run(args: argparse.Namespace, load: Loader = _load_model) -> int:
    """Measure every cell of the grid not yet in `args.out`; 1 if any cell failed.

    `load` turns a `ModelSpec` into (model, tokenizer): the real loader by default, a tiny
    model in tests.
    """
    import torch
    from tqdm.auto import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = _settings(args)
    cells = [
        Cell(m, t, s, k)
        for m in args.models
        for t in args.tasks
        for k in args.shots
        for s in args.scorings
    ]
    check_names(cells)
    out = Path(args.out)
    results_path, table_path = out / RESULTS, out / TABLE
    done = read_results(results_path, settings)
    todo = [c for c in cells if c.key not in done]
    configs = compose_configs(todo, args)  # every config first: a bad override fails here
    (out / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already in {results_path}")
    failed: list[str] = []
    splits_cache: dict[str, tuple[Any, Any]] = {}
    loaded: dict[str, tuple[Any, Any]] = {}
    model = tokenizer = None
    warmed: set[str] = set()
    with tqdm(total=len(todo), desc="cells", unit="cell", position=0) as bar:
        for cell in todo:
            bar.set_postfix_str(cell.label())
            config = study_config(configs[cell.key])
            try:
                check_eval_options(config)
                # The splits depend on the task node, seed and sizes only, not on the scoring.
                split_key = json.dumps(
                    [config["task"], config["seed"], config["n_opt"], config["n_eval"]],
                    sort_keys=True,
                )
                if split_key not in splits_cache:
                    splits_cache[split_key] = load_task_and_splits(config)
                task, splits = splits_cache[split_key]
                if cell.model not in loaded:
                    model = tokenizer = None
                    loaded.clear()  # one model in memory at a time
                    warmed.clear()
                    tqdm.write(f"loading model {cell.model} ({config['model']['path']})")
                    loaded[cell.model] = load(model_spec(config))
                model, tokenizer = loaded[cell.model]
                try:
                    record, predictions = measure_cell(
                        cell, config, model, tokenizer, task, splits, args.limit,
                        warmup=cell.model not in warmed,
                    )  # fmt: skip
                    warmed.add(cell.model)
                except UsageError as err:
                    record, predictions = {"status": "skipped", "reason": str(err),
                                           **_cell_fields(cell, config)}, None  # fmt: skip
                    tqdm.write(f"skipped {cell.label()}: {err}")
            except Exception as err:  # report, go on with the other cells, retry next run
                tqdm.write(f"FAILED {cell.label()}:\n{traceback.format_exc()}")
                failed.append(f"{cell.label()}: {type(err).__name__}: {err}")
                bar.update(1)
                continue
            record["settings"] = settings
            record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            if predictions is not None:
                lines = "".join(json.dumps(row, default=str) + "\n" for row in predictions)
                write_text_atomic(out / PREDICTIONS / f"{cell.file_stem()}.jsonl", lines)
            append_record(results_path, record)
            done[cell.key] = record
            write_text_atomic(table_path, format_table(done.values(), settings, failed))
            write_text_atomic(out / WIDE_TABLE, wide_table(done.values()))
            if record["status"] == "ok":
                tqdm.write(
                    f"{cell.label()}: acc {format_accuracy(record['accuracy'], record['ci'])}, "
                    f"chance {_pct(record['chance'])}, {record['s_per_example']:.3f} s/example"
                )
            bar.update(1)
    table = format_table(done.values(), settings, failed)
    write_text_atomic(table_path, table)
    print(table)
    print(f"results: {results_path}; table: {table_path}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
