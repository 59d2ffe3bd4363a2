"""Wall time of one search with 1 worker process vs 2 (`workers=1` vs `workers=2`).

    python benchmarks/bench_workers.py                        # SmolLM2-135M, 1 round of 30
    python benchmarks/bench_workers.py --threads 1            # 1 torch thread per worker, both
    python benchmarks/bench_workers.py --max-drop 2 --n-opt 32

Each configuration runs the same command (`python -m tale_opt ... workers=K`) against a fresh
SQLite storage, so nothing is reused between them, and the searches must agree on every score.
Reported: the end-to-end wall time of the command, and the search phase alone (from the
coordinator's start of the search to its end: worker start-up and model loading included,
held-out evaluation excluded). Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_search(workers: int, args: argparse.Namespace, tmp: Path) -> dict:
    run_dir = tmp / f"run-{workers}"
    command = [
        sys.executable, "-m", "tale_opt", f"model={args.model}", f"task={args.task}",
        f"n_opt={args.n_opt}", f"n_eval={args.n_eval}", f"searcher.max_drop={args.max_drop}",
        f"eval.batch_size={args.batch_size}", f"workers={workers}",
        f"storage.path={tmp / f'trials-{workers}.db'}", f"hydra.run.dir={run_dir}",
        "latency=null", "tracking=none",  # the workers are measured, not the reporting
    ]  # fmt: skip
    if args.threads:
        command.append(f"worker_threads={args.threads}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"workers={workers} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = list(csv.DictReader((run_dir / "candidate_results.csv").open()))
    return {
        "workers": workers,
        "wall_s": wall,
        "search_s": summary["timings"]["search_s"],
        "candidates": len(rows),
        "scores": sorted((row["drop_key"], row["score"]) for row in rows),
        "best": summary["best"]["drop_layers"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--n-opt", type=int, default=16)
    parser.add_argument("--n-eval", type=int, default=8)
    parser.add_argument("--max-drop", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker in both runs (default: cores / workers)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="alternate runs, keep the fastest")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; load average before: {os.getloadavg()[0]:.2f}")
    best: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        for i in range(args.repeat):
            for workers in (1, 2):
                run = run_search(workers, args, Path(tmp) / f"r{i}")
                threads = args.threads or max(1, cores // workers)
                print(
                    f"workers={workers} ({threads} torch thread(s) each): "
                    f"{run['candidates']} candidates, wall {run['wall_s']:.1f} s, "
                    f"search {run['search_s']:.1f} s"
                )
                if workers not in best or run["wall_s"] < best[workers]["wall_s"]:
                    best[workers] = run
    one, two = best[1], best[2]
    assert one["scores"] == two["scores"] and one["best"] == two["best"], "results differ"
    print(f"identical results: {one['candidates']} candidates, best drop {one['best']}")
    print(
        f"ratio 2 workers / 1 worker: wall {two['wall_s'] / one['wall_s']:.2f}, "
        f"search phase {two['search_s'] / one['search_s']:.2f} (target <= 0.60)"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
