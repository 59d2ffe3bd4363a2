"""A sweep (``python -m tale_opt -m ...``) as one piece of work: every job runs even when an
earlier one failed, and the sweep ends with one table across all jobs.

Hydra's basic launcher runs the jobs one after another and records each job's outcome, but a
job that exits the process (``sys.exit``) ends the whole sweep, and a job that raises makes
Hydra stop at the end without a word about the jobs that worked. So in a multirun the search
command reports a failed job on one line and returns `failed_job(...)` instead; the
`SweepSummary` callback (registered in conf/config.yaml under ``hydra.callbacks``) writes
each job's outcome into the sweep directory as the job ends, and once all jobs are done
prints one table (each job's overrides, status, layers dropped and held-out accuracies with
their 95% intervals) and writes it to ``sweep_summary.md`` (and ``sweep_summary.json``).
Hydra turns an exception from a callback into a warning, so the failed jobs are kept here
(`sweep_failure`) for the command to exit with 1 once Hydra returns.

Outcomes are files, not memory, so launchers that run jobs in other processes work too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from tale_opt.errors import SearchFailed, UsageError

FINISHED, FAILED, NO_RESULT = "finished", "failed", "no result"
JOBS_DIR = ".jobs"  # in the sweep directory: one JSON file per job
SUMMARY_MD = "sweep_summary.md"
SUMMARY_JSON = "sweep_summary.json"
_PICKS = (("baseline", "Baseline"), ("best", "Best"), ("bsba", "BSBA"), ("final", "Final"))


class SweepFailed(SearchFailed):
    """Some jobs of a sweep failed (the others ran to the end)."""


class SweepInvalid(UsageError):
    """Every job of a sweep was refused as bad input: the command exits as bad input does."""


# The failure of the last sweep this process ran (None: none, or all of its jobs finished).
_failure: SweepFailed | SweepInvalid | None = None


def sweep_failure() -> SweepFailed | SweepInvalid | None:
    """Why the sweep that just ended failed, if some of its jobs did."""
    return _failure


def finished_job() -> dict[str, str]:
    """What the search command returns for a job that finished."""
    return {"status": FINISHED}


def failed_job(err: BaseException, debug: bool = False) -> dict[str, str]:
    """What the search command returns for a job that failed, after saying so on one line;
    an error that is not bad input or a failed search (or any, with `debug`) also gets its
    traceback."""
    if debug or not isinstance(err, UsageError | SearchFailed):
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message} (this job failed; the sweep goes on)", file=sys.stderr)
    return {"status": FAILED, "error": message, "bad_input": isinstance(err, UsageError)}


def _outcome(job_return: Any) -> dict[str, str]:
    from hydra.core.utils import JobStatus

    if job_return.status == JobStatus.FAILED:  # raised past the search command
        err = job_return._return_value  # `return_value` would raise it again
        return {"status": FAILED, "error": " ".join(str(err).split()) or type(err).__name__}
    value = job_return._return_value
    return dict(value) if isinstance(value, Mapping) else finished_job()


def _is_multirun(config: Any) -> bool:
    from hydra.types import RunMode

    return config.hydra.mode == RunMode.MULTIRUN


class SweepSummary(Callback):
    """Records each job of a multirun and ends the multirun with one table (see the module
    docstring). Does nothing in a single run."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        jobs = Path(config.hydra.sweep.dir) / JOBS_DIR
        if jobs.is_dir():  # a sweep directory used again: only this sweep's jobs count
            for old in jobs.glob("*.json"):
                old.unlink()

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        from tale_opt.credentials import mask_values

        # Masked: overrides and errors may carry a storage or tracking URL's password.
        record = mask_values(
            {
                "job": int(config.hydra.job.num),
                "overrides": list(job_return.overrides or []),
                "dir": str(config.hydra.runtime.output_dir),
                **_outcome(job_return),
            }
        )
        from tale_opt.pipeline.outputs import write_json_atomic

        jobs = Path(config.hydra.sweep.dir) / JOBS_DIR
        write_json_atomic(jobs / f"{record['job']}.json", record)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        global _failure
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = read_jobs(sweep_dir)
        table = sweep_table(jobs)
        from tale_opt.pipeline.outputs import write_json_atomic, write_text_atomic

        write_text_atomic(sweep_dir / SUMMARY_MD, table + "\n")
        write_json_atomic(sweep_dir / SUMMARY_JSON, jobs)
        print(table)
        failed = [j for j in jobs if j["status"] != FINISHED]
        _failure = None
        if failed:
            numbers = ", ".join(f"#{j['job']}" for j in failed)
            # Every job refused as bad input: exit as bad input (2), not as a failed search.
            invalid = len(failed) == len(jobs) and all(j.get("bad_input") for j in failed)
            _failure = (SweepInvalid if invalid else SweepFailed)(
                f"{len(failed)} of {len(jobs)} sweep jobs did not finish ({numbers}); the "
                f"table is in {sweep_dir / SUMMARY_MD}. The same command runs them again; "
                "its finished jobs resume from the storage without evaluating candidates again"
            )


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each job's recorded outcome, in job order, with its summary.json when it finished (a
    job that says it finished but wrote no summary counts as having no result)."""
    jobs = []
    for path in sorted((sweep_dir / JOBS_DIR).glob("*.json"), key=lambda p: int(p.stem)):
        job = json.loads(path.read_text())
        summary = Path(job["dir"]) / "summary.json"
        if job["status"] == FINISHED:
            if summary.is_file():
                job["summary"] = json.loads(summary.read_text())
            else:
                job["status"] = NO_RESULT
        jobs.append(job)
    return jobs


def _pick_cell(summary: Mapping[str, Any], pick: str) -> str:
    """``2,4 · 55.0 [45.2, 64.4]``: layers dropped, held-out accuracy with its interval."""
    from tale_opt.stats import accuracy_interval, format_accuracy

    entry = summary.get(pick)
    if not isinstance(entry, Mapping):
        return "-"
    held = entry.get("heldout") or {}
    dropped = ",".join(str(i) for i in entry.get("drop_layers", [])) or "none"
    accuracy = held.get("accuracy")
    interval = accuracy_interval(held) if accuracy is not None else None
    return f"{dropped} · {format_accuracy(accuracy, interval)}"


def varying_overrides(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per job, the overrides the sweep varies (a key whose value differs between jobs); all
    of a job's overrides when none differ."""
    parsed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in j["overrides"]) for j in jobs]
    keys = list(dict.fromkeys(k for overrides in parsed for k in overrides))
    varying = [k for k in keys if len({o.get(k) for o in parsed}) > 1] or keys
    return [" ".join(f"{k}={o[k]}" for k in varying if k in o) for o in parsed]


def sweep_table(jobs: Sequence[Mapping[str, Any]]) -> str:
    """One markdown row per job: the overrides the sweep varies, status, and per pick the
    layers dropped and the held-out accuracy % with its 95% Wilson interval."""
    picks = [f"{label}: dropped · held-out %" for _, label in _PICKS]
    head = ["job", "overrides", "status", *picks]
    lines = [
        f"sweep: {len(jobs)} job(s), {sum(j['status'] == FINISHED for j in jobs)} finished",
        "",
        "| " + " | ".join(head) + " |",
        "|---:|---|---|" + "---:|" * len(_PICKS),
    ]
    for job, overrides in zip(jobs, varying_overrides(jobs), strict=True):
        summary = job.get("summary") or {}
        status = job["status"] if job["status"] != FAILED else f"failed: {job.get('error', '')}"
        cells = [
            str(job["job"]),
            overrides or "-",
            status.replace("|", "/"),
            *(_pick_cell(summary, pick) if summary else "-" for pick, _ in _PICKS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
