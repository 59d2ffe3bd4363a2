"""Result files of one search, written as the search goes.

* `candidate_results.csv` gets one line per finished candidate, flushed and fsynced, so a
  crash never loses a finished evaluation; a candidate already in the file is not repeated.
* `accepted_configs.json`, `summary.json` and `predictions/*.jsonl` are replaced atomically
  (write a temp file, fsync, then `os.replace`), so a reader never sees a half-written
  file. `summary.json` appears only when the whole search, held-out evaluation included, has
  finished: its presence is what marks a run directory as a complete result.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tale_opt.credentials import mask_values
from tale_opt.types import Observation

CANDIDATE_FIELDS = (
    "round", "drop_key", "n_dropped", "probe", "status", "score", "accuracy", "accuracy_ci_low",
    "accuracy_ci_high", "invalid_rate", "n_examples", "n_correct", "seconds",
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


def observation_record(obs: Observation) -> dict[str, Any]:
    """JSON-friendly view of an observation (same field names as the reference's files)."""
    return {
        "drop_layers": list(obs.drop.layers),
        "n_dropped": len(obs.drop),
        "status": obs.status.value,
        "score": obs.score,
        **dict(obs.metrics),
    }


class RunWriter:
    """Owns the result files of one search in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.predictions_dir = self.directory / "predictions"
        self._csv_path = self.directory / "candidate_results.csv"
        new = not self._csv_path.exists()
        # A resumed search replays every candidate it finds in the storage; rows already in
        # this directory's file (the same command run again) are not written twice.
        self._recorded: set[str] = set()
        fields = CANDIDATE_FIELDS
        if not new:
            with self._csv_path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                self._recorded = {_row_key(row) for row in reader}
                # A file begun by an older version keeps its own columns.
                fields = tuple(reader.fieldnames or CANDIDATE_FIELDS)
        self._csv = self._csv_path.open("a", newline="")
        self._rows = csv.DictWriter(self._csv, fieldnames=fields, extrasaction="ignore")
        if new:
            self._rows.writeheader()
            self._flush()

    def _flush(self) -> None:
        self._csv.flush()
        os.fsync(self._csv.fileno())

    def record_candidate(self, obs: Observation, round_no: int) -> None:
        """Append one row for `obs`, unless its candidate (drop set and probe) has one."""
        if obs.candidate.key in self._recorded:
            return
        self._recorded.add(obs.candidate.key)
        metrics = dict(obs.metrics)
        self._rows.writerow(
            {
                "round": round_no,
                "drop_key": obs.drop.key,
                "n_dropped": len(obs.drop),
                "probe": obs.candidate.probe,
                "status": obs.status.value,
                "score": obs.score,
                **metrics,
            }
        )
        self._flush()

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
        if not self._csv.closed:
            self._csv.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
