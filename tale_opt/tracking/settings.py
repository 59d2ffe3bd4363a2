"""The `tracking` config node, where its URI points, and the tracker it builds.

The default URI ``sqlite:///mlflow.db`` is MLflow 3's own default, so ``mlflow ui`` started in
the same directory shows the runs. A relative SQLite path (or a plain directory path) is made
absolute against a base directory -- the directory the command was launched from (Hydra's
original cwd) -- before anything else sees it: a worker process or a Hydra job directory then
writes to the same file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from tale_opt import validate
from tale_opt.credentials import mask
from tale_opt.errors import UsageError, did_you_mean

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "tale_opt"
KINDS = ("mlflow", "none")


@dataclass(frozen=True)
class TrackingSettings:
    """A validated `tracking` config node (conf/tracking/*.yaml).

    Attributes:
        kind: "mlflow", or "none" to record nothing.
        uri: sqlite:///file.db, postgresql://user@host/db, http(s)://server:port, or a directory
            (MLflow file store; needs MLFLOW_ALLOW_FILE_STORE=true). Never the Optuna
            storage's PostgreSQL database: both keep an `alembic_version` table there.
        experiment: MLflow experiment name (created when missing).
        artifact_location: Where a new experiment stores artifacts; None = `mlruns/` beside a
            SQLite file, the server's choice for http URIs, MLflow's default otherwise.
        http_timeout: Seconds per HTTP request to a tracking server.
        http_max_retries: Retries per HTTP request (MLflow's default, 7, waits minutes).
        connect_timeout: Seconds to connect to a PostgreSQL/MySQL backend.
        max_failures: Consecutive failed calls after which tracking turns itself off for the
            rest of the process (so a dead server costs seconds, not a timeout per trial).
        log_artifacts: Upload the run directory's plots and tables at the end.
    """

    kind: str = "mlflow"
    uri: str = DEFAULT_TRACKING_URI
    experiment: str = DEFAULT_EXPERIMENT
    artifact_location: str | None = None
    http_timeout: int = 10
    http_max_retries: int = 2
    connect_timeout: int = 5
    max_failures: int = 5
    log_artifacts: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            hint = did_you_mean(str(self.kind), KINDS)
            raise UsageError(f"unknown tracking kind {self.kind!r}.{hint}")
        if self.kind == "mlflow" and (not isinstance(self.uri, str) or not self.uri.strip()):
            raise UsageError(
                f"tracking.uri must be a non-empty string, but got {self.uri!r}; e.g. "
                f"tracking.uri={DEFAULT_TRACKING_URI}"
            )
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise UsageError(
                f"tracking.experiment must be a non-empty name, but got {self.experiment!r}"
            )
        for name in ("http_timeout", "http_max_retries", "connect_timeout", "max_failures"):
            minimum = 0 if name == "http_max_retries" else 1
            validate.integer(getattr(self, name), f"tracking.{name}", minimum=minimum)
        validate.boolean(self.log_artifacts, "tracking.log_artifacts")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> TrackingSettings:
        """Validate a config node; None or ``{kind: none}`` gives the do-nothing settings.

        Raises:
            UsageError: An unknown kind or key, or an invalid value.
        """
        if node is None:
            return cls(kind="none")
        options = dict(node)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            hint = did_you_mean(unknown[0], known)
            raise UsageError(f"unknown tracking option(s) {unknown}.{hint}")
        return cls(**options)

    def resolved(self, base_dir: str | os.PathLike[str] | None = None) -> TrackingSettings:
        """The same settings with a relative local URI made absolute against `base_dir`."""
        return replace(self, uri=resolve_tracking_uri(self.uri, base_dir))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_tracking_uri(uri: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """Make a relative SQLite file (or plain directory) URI absolute against `base_dir`.

    ``sqlite:///mlflow.db`` -> ``sqlite:////launch/dir/mlflow.db``; absolute paths, in-memory
    SQLite, servers and database URLs are returned unchanged. `base_dir` defaults to the
    current directory.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = uri[len(prefix) :]
        if path.startswith("/") or path in ("", ":memory:") or path.startswith("file:"):
            return uri
        return prefix + str((base / path).resolve())
    if "://" not in uri and not uri.startswith("file:"):
        return str((base / uri).resolve())
    return uri


def redact(uri: str) -> str:
    """`uri` without a password (``postgresql://user:***@host/db``), for messages."""
    return mask(uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute ``sqlite:////path`` URI, else None."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and uri[len(prefix) :].startswith("/"):
        return Path(uri[len(prefix) :])
    return None
