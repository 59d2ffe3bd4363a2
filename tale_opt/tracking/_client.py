"""An `MlflowClient` set up so that a dead or slow backend costs seconds, not minutes.

Shared by the tracker (logging) and the queries (reports). `import mlflow` takes seconds, so it
happens here, on first use, never at import time of tale_opt.
"""

from __future__ import annotations

import os
import re
from typing import Any

from tale_opt.tracking.settings import TrackingSettings

_DB_SCHEMES = ("postgresql", "mysql")


def client_uri(uri: str, connect_timeout: int) -> str:
    """The URI handed to MlflowClient: database URLs get their driver and a connect timeout."""
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the pinned driver is psycopg2
    # (the Optuna storage does the same).
    uri = re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", uri)
    # psycopg2 and the MySQL drivers take connect_timeout from the URL's query: without it an
    # unreachable database host blocks for the OS TCP timeout (minutes).
    scheme = uri.split("://", 1)[0].split("+", 1)[0]
    if scheme not in _DB_SCHEMES or "connect_timeout=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}connect_timeout={connect_timeout}"


def make_client(settings: TrackingSettings) -> Any:
    """An MlflowClient for `settings.uri` (already resolved to an absolute path if local).

    MLflow reads its HTTP settings from the environment at every request; we set short ones
    unless the user has set them (theirs win). MLflow's defaults, 120 s per request and 7
    retries with backoff, block a search for minutes on a dead server.
    """
    env = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": settings.http_timeout,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": settings.http_max_retries,
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
        # Else every closed run over http prints a "View run at" line (and costs an extra
        # request): one per candidate would bury the search's own output.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }
    for name, value in env.items():
        os.environ.setdefault(name, str(value))
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=client_uri(settings.uri, settings.connect_timeout))
