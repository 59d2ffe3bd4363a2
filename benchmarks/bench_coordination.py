"""Coordination at scale, by simulation: the real coordinator, storages and worker protocol,
with a stand-in evaluator, in up to 64 worker processes.

    python benchmarks/bench_coordination.py                       # the README's table (~15 min)
    python benchmarks/bench_coordination.py --storages postgres --workers 8 32 --no-kill
    python benchmarks/bench_coordination.py --json results.json   # also keep every figure

Each run is one greedy search (`GreedyElimination` over a 48-layer model, epsilon 1 so it
never stops early: the baseline, then rounds of 48 and 47 candidates; 1 worker: a 32-layer
model, one round) in a fresh study, coordinated by `run_coordinator` in its own process, and
evaluated by N spawned processes running `run_worker`. The stand-in evaluator sleeps a fixed
delay per candidate (1 s: a real candidate costs seconds to minutes, so this is the hard case
for coordination) and scores it from a seeded table (`searchers.testing.fake_score`). The
workers import nothing of torch or transformers (checked in each one, and reported), so 64 of
them fit in a few GB: the worker protocol does not depend on the model.

Reported per storage and worker count:

* overhead: per candidate, what a busy worker spends between finishing one evaluation and
  starting the next of the same round (telling the result, the poll read, the claim);
  median and 95th percentile;
* claims/s: trials of the first full round claimed per second, from its first claim to its
  last, against the N / delay a free coordination would allow (with 64 workers the whole
  round is one burst of claims); --zero-delay adds runs with delay 0;
* wait: the share of the N workers' time not spent evaluating, against the share the round
  sizes impose anyway (a last partial wave, the one-candidate baseline round);
* duplicates: candidates evaluated to the end more than once (must be 0);
* recovery (--kill runs): 10% of the workers are killed (SIGKILL) mid-round; seconds from the
  kill until another worker starts each of their trials (storage.grace_period is 20 s, the
  shipped default; heartbeats every 5 s);
* connections: the most PostgreSQL connections open to the run's database at once;
* CPU per candidate: of all workers together (idle polling included), of the coordinator,
  and of the PostgreSQL server processes that served the run (the server's other clients
  count too, so read it as an upper bound);
* lost claims (printed below each row, with the SQL statements per candidate by kind):
  claims that found the queue emptied by other workers (they write nothing).

PostgreSQL runs use a fresh database per run on the server of $TALE_OPT_BENCH_POSTGRES_URL
(default: the test server, postgresql://postgres@127.0.0.1:5432/test), dropped afterwards.
A run that does not finish within --limit seconds is reported as such, and the storage is not
tried with more workers: where it stops. The kill run uses the most workers a storage held.
Not a test: timings depend on the machine and its load (printed with the results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from searchers.greedy import GreedyElimination  # noqa: E402
from searchers.testing import fake_score  # noqa: E402
from tale_opt.types import Candidate, Observation  # noqa: E402

ADMIN_URL = os.environ.get(
    "TALE_OPT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
LAYERS = 48
SEED = 0
SPAWN = multiprocessing.get_context("spawn")
# What a worker must never import: the protocol is separable from the model.
HEAVY = ("torch", "transformers", "accelerate")


# -- the stand-in worker (runs in each spawned process) -----------------------------------------


@dataclass
class StandIn:
    """Scores a candidate from a seeded table after `delay` seconds; logs its start and end."""

    delay: float
    log: str

    def __call__(self, candidate: Candidate) -> Observation:
        started = time.time()
        with open(self.log, "a") as handle:
            handle.write(f"start {candidate.drop.key} {started:.6f}\n")
        if self.delay:
            time.sleep(self.delay)
        score = fake_score(candidate, LAYERS, SEED)
        with open(self.log, "a") as handle:
            handle.write(f"done {candidate.drop.key} {started:.6f} {time.time():.6f}\n")
        return Observation(candidate, score, {"accuracy": score}, {})


def worker_main(storage_cfg: dict, study: str, delay: float, folder: str) -> None:
    from tale_opt.coordination.console import quiet_optuna
    from tale_opt.coordination.storage import StorageConfig, open_storage
    from tale_opt.coordination.study import load_study
    from tale_opt.coordination.worker import describe, run_worker

    quiet_optuna()
    config = StorageConfig.from_mapping(storage_cfg)
    storage = open_storage(config, create=False)
    found = load_study(storage, study)
    statements = count_statements(storage)
    heavy = sorted(name for name in HEAVY if name in sys.modules)
    here = Path(folder)
    (here / f"ready-{os.getpid()}").write_text(json.dumps({"heavy": heavy}))
    while not (here / "go").exists():
        time.sleep(0.01)
    cpu_at_start = time.process_time()  # imports and connecting are not coordination
    parent = os.getppid()
    stats = run_worker(
        found, StandIn(delay, str(here / f"{os.getpid()}.log")),
        poll_interval=config.poll_interval, keep_going=lambda: os.getppid() == parent,
    )  # fmt: skip
    record = {
        **describe(stats),
        "cpu_s": time.process_time() - cpu_at_start,
        "statements": dict(statements),
    }
    (here / f"stats-{os.getpid()}").write_text(json.dumps(record))


def count_statements(storage: Any) -> dict[str, int]:
    """SQL statements this process sends, by kind (first words; FOR UPDATE marked)."""
    engine = getattr(storage, "engine", None)
    counts: dict[str, int] = defaultdict(int)
    if engine is None:  # the journal storage
        return counts
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split() or ["?"]
        after = {"SELECT": "FROM", "INSERT": "INTO", "UPDATE": "UPDATE", "DELETE": "FROM"}
        marker = after.get(words[0])
        table = words[words.index(marker) + 1] if marker in words[:-1] else ""
        lock = ""
        if words[0] == "SELECT" and "UPDATE" in words[-4:]:
            lock = " FOR UPDATE" + (" SKIP LOCKED" if "SKIP" in words[-4:] else "")
        counts[f"{words[0]} {table}{lock}".strip()] += 1

    return counts


def coordinator_main(
    storage_cfg: dict, study: str, layers: int, max_drop: int, folder: str
) -> None:
    from tale_opt.coordination.console import quiet_optuna
    from tale_opt.coordination.coordinator import run_coordinator
    from tale_opt.coordination.storage import StorageConfig, open_storage
    from tale_opt.coordination.study import load_study

    quiet_optuna()
    config = StorageConfig.from_mapping(storage_cfg)
    found = load_study(open_storage(config, create=False), study)
    searcher = GreedyElimination(layers, epsilon=1.0, max_drop=max_drop)
    statements = count_statements(found._storage._backend)
    counted: list[float] = []
    started, cpu_at_start = time.time(), time.process_time()
    result = run_coordinator(
        found, searcher, on_observation=lambda obs, trial: counted.append(time.time()),
        poll_interval=config.poll_interval, lost_after=2 * config.grace_period,
        max_retry=config.max_retry,
    )  # fmt: skip
    out = {
        "started": started,
        "ended": time.time(),
        "candidates": len(result.observations),
        "best": result.best.drop.key,
        "cpu_s": time.process_time() - cpu_at_start,
        "statements": dict(statements),
    }
    Path(folder, "coordinator.json").write_text(json.dumps(out))


# -- one run -----------------------------------------------------------------------------------


@dataclass
class Run:
    storage: str
    workers: int
    delay: float
    kill: bool = False
    layers: int = LAYERS
    finished: bool = False
    reason: str = ""
    candidates: int = 0
    rounds: list[int] = field(default_factory=list)
    search_s: float = 0.0
    ideal_s: float = 0.0
    overhead_median_ms: float | None = None
    overhead_p95_ms: float | None = None
    claims_per_s: float | None = None
    free_claims_per_s: float | None = None
    wait_share: float | None = None
    unavoidable_wait_share: float | None = None
    duplicates: int = 0
    recovery_s: list[float] = field(default_factory=list)
    killed: int = 0
    heavy_imports: list[str] = field(default_factory=list)
    peak_connections: int | None = None
    same_result: bool | None = None
    # CPU per candidate: all workers together, the coordinator, the PostgreSQL server.
    lost_claims: int = 0  # claims that found the queue emptied by other workers
    worker_statements: dict[str, float] = field(default_factory=dict)  # per candidate
    coordinator_statements: dict[str, float] = field(default_factory=dict)
    worker_cpu_ms: float | None = None
    coordinator_cpu_ms: float | None = None
    server_cpu_ms: float | None = None


def storage_config(kind: str, where: Path) -> tuple[dict, Any]:
    """A fresh storage of `kind` (the shipped liveness defaults) and its clean-up."""
    liveness = {"heartbeat_interval": 5, "grace_period": 20, "max_retry": 3, "poll_interval": 0.5}
    if kind != "postgres":
        return {"kind": kind, "path": str(where / f"trials.{kind}"), **liveness}, lambda: None
    import psycopg2

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(ADMIN_URL, connect_timeout=3)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    return {"kind": "postgres", "url": url, **liveness}, drop


def count_connections(storage_cfg: dict, stop: threading.Event, peak: list[int]) -> None:
    """Sample the connections open to the run's database until `stop`."""
    import psycopg2

    database = storage_cfg["url"].rsplit("/", 1)[1]
    conn = psycopg2.connect(ADMIN_URL, connect_timeout=3)
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.is_set():
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,))
            peak[0] = max(peak[0], cur.fetchone()[0])
            stop.wait(0.25)
    conn.close()


def run_once(kind: str, n: int, delay: float, kill: bool, limit: float) -> Run:
    from tale_opt.coordination.storage import StorageConfig, open_storage
    from tale_opt.coordination.study import open_study

    run = Run(kind, n, delay, kill)
    # One worker: one round of 32 is enough to see its overhead, and keeps the run short.
    layers, max_drop = (32, 1) if n == 1 else (LAYERS, 2)
    run.layers = layers
    run.rounds = [1, layers, layers - 1][: max_drop + 1]
    run.candidates = sum(run.rounds)
    run.ideal_s = sum(math.ceil(size / n) for size in run.rounds) * delay
    with tempfile.TemporaryDirectory(prefix="bench_coordination_") as tmp:
        folder = Path(tmp)
        cfg, cleanup = storage_config(kind, folder)
        stop, peak = threading.Event(), [0]
        sampler = None
        processes: list[Any] = []
        try:
            name = f"bench-{kind}-{n}"
            open_study(open_storage(StorageConfig.from_mapping(cfg)), name, {"bench": 1}, {})
            processes = [
                SPAWN.Process(target=worker_main, args=(cfg, name, delay, tmp)) for _ in range(n)
            ]
            server_before = postgres_cpu_s() if kind == "postgres" else None
            for process in processes:
                process.start()
            progress(f"{kind}, {n} workers, delay {delay:g} s: starting the workers")
            deadline = time.monotonic() + 600
            while len(list(folder.glob("ready-*"))) < n:
                failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if time.monotonic() > deadline or failed:
                    run.reason = "workers did not start (see their errors above)"
                    return run
                time.sleep(0.1)
            progress("searching" + (" (10% of the workers killed mid-round)" if kill else ""))
            for ready in folder.glob("ready-*"):
                run.heavy_imports += json.loads(ready.read_text())["heavy"]
            if kind == "postgres":
                sampler = threading.Thread(target=count_connections, args=(cfg, stop, peak))
                sampler.start()
            coordinator = SPAWN.Process(
                target=coordinator_main, args=(cfg, name, layers, max_drop, tmp)
            )
            (folder / "go").touch()
            coordinator.start()
            killer, searched = None, threading.Event()
            if kill:
                killer = threading.Thread(
                    target=kill_mid_round, args=(folder, processes, run, searched)
                )
                killer.start()
            coordinator.join(limit)
            searched.set()
            if coordinator.is_alive():
                coordinator.kill()
                run.reason = f"did not finish within {limit:.0f} s"
            elif coordinator.exitcode != 0:
                run.reason = f"the coordinator failed (exit code {coordinator.exitcode})"
            else:
                run.finished = True
            if killer is not None:
                killer.join()
            deadline = time.monotonic() + (60 if run.finished else 0)
            for process in processes:  # they leave once the study is marked finished
                process.join(max(0.0, deadline - time.monotonic()))
            measure(run, folder)
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                    process.join()
            stop.set()
            if sampler is not None:
                sampler.join()
                run.peak_connections = peak[0]
            cleanup()
            if server_before is not None and run.finished:
                time.sleep(1)  # the run's server processes have ended; let them be reaped
                run.server_cpu_ms = 1000 * (postgres_cpu_s() - server_before) / run.candidates
    progress(f"done in {run.search_s:.1f} s" if run.finished else run.reason)
    return run


def explain(run: Run) -> None:
    """Where a run's database traffic came from: statements per candidate, by kind."""
    for who, counts in (
        ("workers", run.worker_statements),
        ("coordinator", run.coordinator_statements),
    ):
        top = sorted(counts.items(), key=lambda item: -item[1])
        listed = ", ".join(f"{count:g} {kind}" for kind, count in top)
        progress(f"{who}: {sum(counts.values()):.0f} statements per candidate ({listed})")
    progress(f"claims lost to other workers: {run.lost_claims}")


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def postgres_cpu_s() -> float:
    """CPU seconds of every server process that has ended so far (the postmaster's reaped
    children): a run's connections end with it. Other clients of the server count too."""
    import psycopg2

    conn = psycopg2.connect(ADMIN_URL, connect_timeout=3)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = cur.fetchone()[0]
    conn.close()
    parent = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1]
    fields = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()
    # After the name: state, ppid, ...; cutime and cstime are fields 16 and 17 of stat(5).
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def kill_mid_round(
    folder: Path, processes: list[Any], run: Run, coordinator: threading.Event
) -> None:
    """As soon as 10% of the workers are each in the middle of a trial of the first full
    round, SIGKILL them (if that happens before the search ends)."""
    victims = max(1, round(0.1 * run.workers))
    wanted = victims
    while not coordinator.is_set():
        busy = {}
        for log in folder.glob("*.log"):
            lines = log.read_text().splitlines()
            kind, key, *_ = lines[-1].split(" ") if lines else ("", "")
            if kind == "start" and key and "," not in key:  # a candidate of round 1
                busy[int(log.stem)] = key
        if len(busy) >= wanted:
            break
        time.sleep(0.02)
    else:
        return
    by_pid = {p.pid: p for p in processes}
    chosen = sorted(busy)[:victims]
    killed_at = time.time()
    for pid in chosen:
        os.kill(pid, signal.SIGKILL)
    run.killed = len(chosen)
    Path(folder, "killed.json").write_text(
        json.dumps({"at": killed_at, "keys": [busy[pid] for pid in chosen]})
    )
    for pid in chosen:
        by_pid[pid].join(10)


def measure(run: Run, folder: Path) -> None:
    """Every figure of `run` from the workers' logs and the coordinator's record."""
    record = folder / "coordinator.json"
    if not record.exists():
        return
    coordinator = json.loads(record.read_text())
    run.search_s = coordinator["ended"] - coordinator["started"]
    done: dict[str, list[tuple[float, float]]] = defaultdict(list)
    starts: dict[str, list[float]] = defaultdict(list)
    gaps: list[float] = []
    busy = 0.0
    claims: list[tuple[int, float]] = []  # (round, start time)
    for log in folder.glob("*.log"):
        evaluations = []
        for line in log.read_text().splitlines():
            kind, key, *times = line.split(" ")
            if kind == "start":
                starts[key].append(float(times[0]))
                claims.append((len(key.split(",")) if key else 0, float(times[0])))
            else:
                start, end = float(times[0]), float(times[1])
                done[key].append((start, end))
                evaluations.append((start, end, key))
                busy += end - start
        evaluations.sort()
        for (_, end, key), (start, _, following) in itertools.pairwise(evaluations):
            if following and key and len(following.split(",")) == len(key.split(",")):
                gaps.append(start - end)
    run.duplicates = sum(1 for runs in done.values() if len(runs) > 1)
    if gaps and not run.kill:
        run.overhead_median_ms = 1000 * statistics.median(gaps)
        if len(gaps) > 1:
            run.overhead_p95_ms = 1000 * statistics.quantiles(gaps, n=20)[-1]
    # Claims of the first full round, from its first to its last: a burst where the round has
    # no more candidates than workers, else the pace the evaluations allow.
    first = sorted(t for size, t in claims if size == 1)
    if len(first) > 1 and first[-1] > first[0]:
        run.claims_per_s = (len(first) - 1) / (first[-1] - first[0])
    if run.delay:
        run.free_claims_per_s = run.workers / run.delay
    if run.search_s and not run.kill:
        capacity = run.workers * run.search_s
        run.wait_share = 1 - busy / capacity
        run.unavoidable_wait_share = 1 - run.candidates * run.delay / (run.workers * run.ideal_s)
    stats = [json.loads(p.read_text()) for p in folder.glob("stats-*")]
    run.lost_claims = sum(record["stray"] for record in stats)
    total: dict[str, int] = defaultdict(int)
    for record in stats:
        for kind, count in record["statements"].items():
            total[kind] += count
    run.worker_statements = {k: round(v / run.candidates, 2) for k, v in sorted(total.items())}
    run.coordinator_statements = {
        k: round(v / run.candidates, 2) for k, v in sorted(coordinator["statements"].items())
    }
    if stats and len(stats) == run.workers:
        run.worker_cpu_ms = 1000 * sum(record["cpu_s"] for record in stats) / run.candidates
    run.coordinator_cpu_ms = 1000 * coordinator["cpu_s"] / run.candidates
    killed = folder / "killed.json"
    if killed.exists():
        info = json.loads(killed.read_text())
        for key in info["keys"]:
            later = [t for t in starts[key] if t > info["at"]]
            if later:
                run.recovery_s.append(min(later) - info["at"])
    reference = GreedyElimination(run.layers, epsilon=1.0, max_drop=len(run.rounds) - 1)
    while not reference.done:
        reference.observe(
            Observation(c, fake_score(c, LAYERS, SEED), {}, {}) for c in reference.propose()
        )
    run.same_result = coordinator["best"] == reference.result().best.drop.key


# -- the table ---------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "—" if value is None else format(value, spec)


def table(runs: list[Run]) -> str:
    lines = [
        "| storage | workers | delay | candidates (rounds) | search s (ideal) | overhead ms "
        "median / p95 | claims/s (free) | wait share (unavoidable) | duplicates | "
        "recovery s after 10% killed | peak connections | CPU ms per candidate: workers / "
        "coordinator / PostgreSQL |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for run in runs:
        if not run.finished:
            lines.append(
                f"| {run.storage} | {run.workers} | {run.delay:g} s | {run.candidates} | "
                f"**{run.reason}** | | | | {run.duplicates} | | "
                f"{fmt(run.peak_connections, 'd')} | |"
            )
            continue
        recovery = "—"
        got = sorted(run.recovery_s)
        if run.kill and not run.killed:
            recovery = "none killed (too few busy at once)"
        elif run.kill and len(got) == run.killed:
            recovery = f"{run.killed} killed: {got[0]:.1f}–{got[-1]:.1f}"
        elif run.kill:
            recovery = f"{run.killed} killed, {len(got)} re-run"
        wait, unavoidable = (
            None if share is None else 100 * share
            for share in (run.wait_share, run.unavoidable_wait_share)
        )
        lines.append(
            f"| {run.storage} | {run.workers} | {run.delay:g} s | {run.candidates} "
            f"({'+'.join(map(str, run.rounds))}) | {run.search_s:.1f} ({run.ideal_s:.0f}) | "
            f"{fmt(run.overhead_median_ms)} / {fmt(run.overhead_p95_ms)} | "
            f"{fmt(run.claims_per_s, '.1f')} ({fmt(run.free_claims_per_s, '.0f')}) | "
            f"{'—' if wait is None else f'{wait:.0f}% ({unavoidable:.0f}%)'} | "
            f"{run.duplicates} | {recovery} | "
            f"{fmt(run.peak_connections, 'd')} | {fmt(run.worker_cpu_ms)} / "
            f"{fmt(run.coordinator_cpu_ms)} / {fmt(run.server_cpu_ms)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storages", nargs="+", default=["postgres", "sqlite", "journal"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--zero-delay", action="store_true", help="also runs with delay 0")
    parser.add_argument("--no-kill", action="store_true", help="skip the 10%%-killed runs")
    parser.add_argument(
        "--only-kill", action="store_true", help="only the 10%%-killed run, at the most --workers"
    )
    parser.add_argument("--limit", type=float, default=240, help="seconds a search may take")
    parser.add_argument("--json", type=Path, help="write every figure here too")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores, load average {os.getloadavg()[0]:.2f} before", flush=True)
    runs: list[Run] = []
    for kind in args.storages:
        stopped, largest = False, (max(args.workers) if args.only_kill else None)
        for n in [] if args.only_kill else args.workers:
            if stopped:
                break
            plan = [(args.delay, False)] + ([(0.0, False)] if args.zero_delay else [])
            for delay, kill in plan:
                run = run_once(kind, n, delay, kill, args.limit)
                runs.append(run)
                print(table([run]).splitlines()[-1], flush=True)
                explain(run)
                stopped |= not run.finished
                largest = n if run.finished and delay else largest
        if not args.no_kill and largest is not None and largest > 1:
            # At the most workers the storage held.
            run = run_once(kind, largest, args.delay, True, args.limit)
            runs.append(run)
            print(table([run]).splitlines()[-1], flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}\n")
    print(table(runs))
    heavy = sorted({name for run in runs for name in run.heavy_imports})
    print(f"\nworkers that imported {', '.join(HEAVY)}: {heavy or 'none'}")
    wrong = [f"{r.storage}/{r.workers}" for r in runs if r.same_result is False]
    print(f"runs whose best drop set differs from the in-process greedy search: {wrong or 'none'}")
    if args.json:
        args.json.write_text(json.dumps([asdict(run) for run in runs], indent=1))


if __name__ == "__main__":
    main()
