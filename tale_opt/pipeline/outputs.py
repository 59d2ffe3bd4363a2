"""Result files of one search, written as the search goes.

* `candidate_results.csv` holds one row per candidate (drop set and probe), rewritten
  atomically (and fsynced) after every change, so a crash never loses a finished evaluation
  and a reader never sees half a row. A candidate's row is updated in place when a fuller
  result arrives: a candidate first stopped early (pruned, an upper bound) and later
  evaluated in full shows the full result; a resumed search's replay changes nothing.
* `accepted_configs.json`, `summary.json` and `predictions/*.jsonl` are replaced atomically
  (write a temp file, fsync, then `os.replace`), so a reader never sees a half-written
  file. `summary.json` appears only when the whole search, held-out evaluation included, has
  finished: its presence is what marks a run directory as a complete result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.credentials import mask_values
from tale_opt.types import BOUNDED_BY, RACED_OUT, TASK_ACCURACY, Observation, Status

CANDIDATE_FIELDS = (
    "round", "drop_key", "n_dropped", "probe", "status", "score", "accuracy", "accuracy_ci_low",
    "accuracy_ci_high", "invalid_rate", "n_examples", "n_correct", "seconds",
    # A candidate stopped early (status pruned; score = its upper bound): what it had seen,
    # its accuracy there with the 95% Wilson interval, and what stopped it (`exact`, or the
    # racing pruner) with the rule's numbers as JSON.
    "n_seen", "accuracy_so_far", "accuracy_so_far_ci_low", "accuracy_so_far_ci_high",
    "stopped_by", "stop_detail",
)  # fmt: skip


def _row_key(row: Mapping[str, str]) -> str:
    # `Candidate.key` of a CSV row (files written before the probe column: task accuracy).
    return f"{row.get('probe') or 'task_accuracy'}:{row['drop_key']}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` so that `path` holds either the old or the new content, never a mix
    (a temp file beside it, fsynced, then renamed over it; readable like any report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


# Where an evaluation's metrics sit in a record (and, flattened, in MLflow): named by what
# they were measured on, so no name ever holds two splits' values.
OPT = "opt"  # the optimization split (task accuracy, its interval, TFLOPs of scoring it, ...)
HELDOUT = "heldout"  # the held-out split, evaluated once after the search
PROBE = "probe"  # a text probe (perplexity, Block Influence, ...) on the probe text


def observation_record(obs: Observation) -> dict[str, Any]:
    """JSON-friendly view of an observation: its drop set, status and score, and its metrics
    under `OPT` (task accuracy on the optimization split) or `PROBE` (a text probe)."""
    metrics = dict(obs.metrics)
    if obs.candidate.probe != TASK_ACCURACY:
        section = PROBE
    else:
        section = OPT
        if metrics.get("tflops") is not None and metrics.get("n_examples"):
            metrics["tflops_per_example"] = metrics["tflops"] / metrics["n_examples"]
    return {
        "drop_layers": list(obs.drop.layers),
        "n_dropped": len(obs.drop),
        "status": obs.status.value,
        "score": obs.score,
        section: metrics,
    }


def opt_metrics(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The optimization-split metrics of a summary.json or accepted_configs.json record
    (files written before metrics were named by split hold them at the top level)."""
    section = record.get(OPT)
    return section if isinstance(section, Mapping) else record


def heldout_tflops(record: Mapping[str, Any]) -> float | None:
    """TFLOPs of evaluating the held-out split with a pick's drop set (files written before
    metrics were named by split have them as the pick's top-level ``tflops``)."""
    held = record.get(HELDOUT)
    if isinstance(held, Mapping) and held.get("tflops") is not None:
        return float(held["tflops"])
    return None if record.get("tflops") is None else float(record["tflops"])


def stopped_by(obs: Observation) -> tuple[str, dict[str, Any]] | None:
    """What stopped a pruned observation: ``("exact", bounded_by)`` or ``(pruner,
    raced_out)``; None for a complete one (or one recorded without a reason)."""
    if obs.complete:
        return None
    raced = obs.extras.get(RACED_OUT)
    if isinstance(raced, Mapping):
        return str(raced.get("pruner", "racing")), dict(raced)
    bounded = obs.extras.get(BOUNDED_BY)
    if isinstance(bounded, Mapping):
        return "exact", dict(bounded)
    return None


def _csv_row(obs: Observation, fields: Sequence[str]) -> dict[str, str]:
    """`obs` as a row of `fields`, spelled as the csv module writes and reads it back."""
    stop = stopped_by(obs)
    values = {
        "round": len(obs.drop),
        "drop_key": obs.drop.key,
        "n_dropped": len(obs.drop),
        "probe": obs.candidate.probe,
        "status": obs.status.value,
        "score": obs.score,
        **dict(obs.metrics),
    }
    if stop is not None:
        values["stopped_by"] = stop[0]
        values["stop_detail"] = json.dumps(stop[1], sort_keys=True, default=str)
    return {f: "" if values.get(f) is None else str(values[f]) for f in fields}


class RunWriter:
    """Owns the result files of one search in `directory`.

    `extra_fields`: more `candidate_results.csv` columns, metric keys (a multi-task search's
    per-task accuracies); a file begun earlier keeps its own columns.
    """

    def __init__(self, directory: Path, extra_fields: Sequence[str] = ()) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.predictions_dir = self.directory / "predictions"
        self._csv_path = self.directory / "candidate_results.csv"
        # Rows by candidate key, in the order candidates were first recorded. A resumed search
        # (the same command run again) starts from this directory's rows.
        self._rows: dict[str, dict[str, str]] = {}
        self._fields: tuple[str, ...] = (*CANDIDATE_FIELDS, *extra_fields)
        if self._csv_path.exists():
            with self._csv_path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                self._rows = {_row_key(row): row for row in reader}
                # A file begun by an older version keeps its own columns.
                self._fields = tuple(reader.fieldnames or CANDIDATE_FIELDS)
        else:
            self._write_rows()

    def _write_rows(self) -> None:
        text = io.StringIO()
        rows = csv.DictWriter(text, fieldnames=self._fields, extrasaction="ignore")
        rows.writeheader()
        rows.writerows(self._rows.values())
        write_text_atomic(self._csv_path, text.getvalue())

    def record_candidate(self, obs: Observation) -> None:
        """Record `obs` as its candidate's row: a new row, or an update of the candidate's
        row when `obs` says more (a full result replaces a pruned bound, never the reverse)."""
        key = obs.candidate.key
        row = _csv_row(obs, self._fields)
        old = self._rows.get(key)
        if old is not None:
            if {f: old.get(f, "") for f in self._fields} == row:
                return
            if old.get("status") == Status.COMPLETE.value and not obs.complete:
                return
        self._rows[key] = row  # an updated row keeps its place
        self._write_rows()

    def write_accepted(self, trajectory: Sequence[Observation], threshold: float | None) -> None:
        write_json_atomic(
            self.directory / "accepted_configs.json",
            {
                "threshold": threshold,
                "accepted": [
                    {"round": i, **observation_record(obs)} for i, obs in enumerate(trajectory)
                ],
            },
        )

    def write_predictions(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """One JSON line per example, written atomically (see `write_text_atomic`): rows that
        fail half-way leave the previous file, and no temporary file, behind."""
        path = self.predictions_dir / f"{name}.jsonl"
        write_text_atomic(path, "".join(json.dumps(dict(r), default=str) + "\n" for r in rows))
        return path

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        path = self.directory / "summary.json"
        # It names the storage and the tracking URI: never with their passwords.
        write_json_atomic(path, mask_values(dict(summary)))
        return path

    def close(self) -> None:
        """Nothing stays open between writes; kept so the writer is a context manager."""

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
