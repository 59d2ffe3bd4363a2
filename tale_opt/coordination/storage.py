"""Where a search's trials live: an Optuna storage built from the `storage` config node.

Three kinds (conf/storage/):

* ``sqlite`` (default): one file on one machine. SQLite ignores ``SELECT ... FOR UPDATE``, so
  Optuna's claim of a waiting trial (read WAITING, write RUNNING) is not atomic and two workers
  can evaluate the same trial. The engine hook below makes every transaction ``BEGIN
  IMMEDIATE``: the claim then holds the write lock from its read to its commit.
* ``postgres``: several machines. ``FOR UPDATE`` row locks make the claim atomic. The URL comes
  from ``storage.url`` or the environment variable ``TALE_OPT_STORAGE_URL``.
* ``journal``: Optuna's append-only log file, for a shared filesystem (NFS) where SQLite's
  locking is unreliable. Claims are atomic by log order. Optuna's `JournalStorage` has no
  heartbeats, so `HeartbeatJournalStorage` adds them (see optuna_adapter.py).

SQLite and PostgreSQL storages are `ReconnectingRDBStorage`s: an operation whose database
connection drops mid-transaction is retried on a new one (a few times, with backoff; see
reconnect.py), so a restarted or failed-over server does not end a long search.

Every kind gets heartbeats and `RetryHeartbeatStaleTrialCallback`: a trial whose worker stops
beating for `grace_period` seconds is failed and re-enqueued (same user attrs) by whoever calls
`optuna.storages.fail_stale_trials` next.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from sqlalchemy import event
from sqlalchemy.exc import DatabaseError, IntegrityError, ProgrammingError

from tale_opt import validate
from tale_opt.coordination.optuna_adapter import HeartbeatJournalStorage, ReconnectingRDBStorage
from tale_opt.coordination.reconnect import Reconnect
from tale_opt.credentials import mask
from tale_opt.errors import UsageError, did_you_mean

URL_ENV = "TALE_OPT_STORAGE_URL"
_SCHEMA_RACES = 5  # looks at a schema that another process is creating at the same moment
KINDS = ("sqlite", "postgres", "journal")
_KEYS = {
    "kind", "path", "url", "heartbeat_interval", "grace_period", "max_retry",
    "poll_interval", "connect_timeout",
}  # fmt: skip


class StorageNotReady(UsageError):
    """The storage exists nowhere yet (no file, no tables): its coordinator has not started."""


@dataclass(frozen=True)
class StorageConfig:
    """A validated `storage` config node. Plain data, so it can be sent to worker processes.

    Attributes:
        kind: ``sqlite``, ``postgres`` or ``journal``.
        path: The SQLite database or journal file (absolute once resolved).
        url: The PostgreSQL URL, ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB``.
        heartbeat_interval: Seconds between a running trial's heartbeats.
        grace_period: Seconds without a heartbeat after which a trial counts as lost.
        max_retry: How often a lost trial is re-enqueued (null = without limit).
        poll_interval: Seconds between storage polls of idle workers and the coordinator.
        connect_timeout: Seconds to wait for the PostgreSQL server before giving up.
    """

    kind: str = "sqlite"
    path: str | None = None
    url: str | None = None
    heartbeat_interval: int = 5
    grace_period: int = 20
    max_retry: int | None = 3
    poll_interval: float = 0.5
    connect_timeout: int = 3

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> StorageConfig:
        """Validate a config node and resolve paths and the URL.

        Raises:
            UsageError: An unknown kind or key, a missing path or URL, a non-positive interval.
        """
        cfg = dict(cfg)
        kind = cfg.get("kind")
        if kind not in KINDS:
            raise UsageError(f"unknown storage kind {kind!r}.{did_you_mean(str(kind), KINDS)}")
        unknown = sorted(set(cfg) - _KEYS)
        if unknown:
            raise UsageError(f"storage has no key(s) {unknown}; it accepts: {sorted(_KEYS)}")
        for key in ("heartbeat_interval", "grace_period", "connect_timeout"):
            validate.integer(cfg.get(key, getattr(cls, key)), f"storage.{key}", minimum=1)
        if cfg.get("grace_period", cls.grace_period) <= cfg.get(
            "heartbeat_interval", cls.heartbeat_interval
        ):
            raise UsageError(
                "`storage.grace_period > storage.heartbeat_interval` must hold, but got "
                f"(grace_period={cfg.get('grace_period')}, "
                f"heartbeat_interval={cfg.get('heartbeat_interval')})"
            )
        validate.integer(cfg.get("max_retry", cls.max_retry), "storage.max_retry",
                         minimum=0, allow_none=True)  # fmt: skip
        validate.number(cfg.get("poll_interval", cls.poll_interval), "storage.poll_interval",
                        above=0)  # fmt: skip
        if kind == "postgres":
            url = cfg.get("url") or os.environ.get(URL_ENV)
            if not url:
                raise UsageError(
                    "storage=postgres needs a database URL: set storage.url=postgresql://USER"
                    f"[:PASSWORD]@HOST:5432/DB or the environment variable {URL_ENV}"
                )
            if not re.match(r"^postgres(ql)?(\+\w+)?://", url):
                raise UsageError(
                    f"storage.url must start with postgresql://, but got {mask(url)!r}"
                )
            cfg["url"] = url
        else:
            path = cfg.get("path")
            if not path:
                raise UsageError(f"storage={kind} needs a file: set storage.path=/some/file")
            cfg["path"] = str(Path(path).expanduser().resolve())
        return cls(**cfg)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """Where the trials are, for messages (the password masked)."""
        return mask(self.url) if self.kind == "postgres" else f"{self.kind}:{self.path}"

    def join_args(self) -> list[str]:
        """The `python -m tale_opt worker` arguments that reach this storage (a password in
        storage.url masked; a URL from the environment is not an argument)."""
        args = [f"storage={self.kind}"]
        if self.kind == "postgres":
            if os.environ.get(URL_ENV) != self.url:
                args.append(f"storage.url={mask(self.url)}")
        else:
            args.append(f"storage.path={self.path}")
        return args

    def join_command(self, study: str) -> str:
        """How a worker on another machine joins `study`, for the coordinator to print: the
        command, and for PostgreSQL how the URL gets there (the environment variable or
        storage.url), its password shown as ``***``."""
        command = f"python -m tale_opt worker {' '.join(self.join_args())} study={study}"
        if self.kind != "postgres":
            return command
        hidden = mask(self.url) != self.url
        if os.environ.get(URL_ENV) == self.url:
            note = " (*** = its password)" if hidden else ""
            return f"export {URL_ENV}={mask(self.url)}{note}, then {command}"
        if hidden:
            return (
                f"{command} (*** = the password of storage.url; or leave storage.url out and "
                f"export {URL_ENV}=<the full URL> there, which keeps it off the command line)"
            )
        return command


def open_storage(config: StorageConfig, *, create: bool = True) -> optuna.storages.BaseStorage:
    """Build the Optuna storage that `config` describes.

    Args:
        config: A validated storage config.
        create: Create the file and tables when missing (a coordinator does). A worker passes
            False: it never creates a schema, so it cannot race the coordinator doing so.

    Raises:
        StorageNotReady: `create=False` and there is no file or no tables yet.
        UsageError: The database cannot be reached.
    """
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry)
    liveness = {
        "heartbeat_interval": config.heartbeat_interval,
        "grace_period": config.grace_period,
        "heartbeat_stale_trial_callback": retry,
    }
    if config.kind != "postgres":
        path = Path(config.path)
        if not create and not path.exists():
            raise StorageNotReady(
                f"no {config.kind} storage at {path}; pass the storage.path the coordinator "
                "printed (workers join a search, they do not start one)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    if config.kind == "journal":
        return HeartbeatJournalStorage(str(config.path), **liveness)
    if config.kind == "sqlite":
        url = f"sqlite:///{config.path}"
        # A long busy timeout: with BEGIN IMMEDIATE every transaction queues for the lock.
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the pinned driver is psycopg2.
        url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", config.url)
        engine_kwargs = {
            "connect_args": {"connect_timeout": config.connect_timeout},
            # Replace pooled connections that died while idle; ReconnectingRDBStorage retries
            # operations whose connection dies while in use.
            "pool_pre_ping": True,
            # One kept connection per process: each storage operation holds it for
            # milliseconds, so the heartbeat thread rarely needs a second one (opened then
            # and closed after). SQLAlchemy's default keeps up to 5 per process, and 64
            # workers then exceed PostgreSQL's default max_connections (100).
            "pool_size": 1,
            "max_overflow": 4,
        }
    reconnect = Reconnect()

    def build() -> ReconnectingRDBStorage:
        for attempt in range(1, _SCHEMA_RACES + 1):
            try:
                return ReconnectingRDBStorage(
                    url, engine_kwargs=engine_kwargs, skip_table_creation=not create,
                    reconnect=reconnect, **liveness,
                )  # fmt: skip
            except DatabaseError as err:
                # Another process (a worker that started first, or a second coordinator) was
                # creating the tables or writing the schema's version row at the same moment;
                # a second look finds them complete.
                raced = isinstance(err, IntegrityError) or "already exists" in str(err)
                if not raced or attempt == _SCHEMA_RACES:
                    raise
                time.sleep(random.uniform(0.05, 0.25) * attempt)  # apart from the others
        raise AssertionError("unreachable: the last attempt returns or raises")

    try:
        # Opening checks the schema in transactions of its own: a drop then is retried too.
        storage = reconnect.call(
            build,
            reset=lambda: None,  # each attempt builds its own engine
            what="opening the storage",
        )
    except (DatabaseError, StorageInternalError) as err:
        # Optuna wraps errors inside its sessions; the driver's message is on the cause.
        cause = err.__cause__ if isinstance(err, StorageInternalError) else err
        orig = getattr(cause, "orig", None)
        reason = " ".join(str(orig or cause or err).split())
        # Reached, but without Optuna's tables (SQLite: any error once the file exists).
        if not create and (isinstance(cause, ProgrammingError) or config.kind == "sqlite"):
            raise StorageNotReady(
                f"{config.describe()} has no tale_opt tables yet ({reason})"
            ) from err
        if config.kind == "sqlite":
            raise UsageError(
                f"cannot use the sqlite storage {config.path} ({reason}); storage.path must be "
                "a SQLite file tale_opt may read and write (or a new path): move a damaged or "
                "foreign file away, or choose another storage.path"
            ) from err
        raise UsageError(
            f"cannot reach the {config.kind} storage {config.describe()} ({reason}); start the "
            f"database server or fix storage.url / {URL_ENV}"
        ) from err
    if config.kind == "sqlite":
        _begin_immediate(storage.engine)
    return storage


def _begin_immediate(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins.

    pysqlite starts a transaction lazily at the first write, so a read-then-write (Optuna's
    WAITING -> RUNNING claim) runs its read outside any lock and two processes both "win" the
    same trial. Disabling pysqlite's own transaction handling and emitting BEGIN IMMEDIATE
    ourselves serializes claims (SQLAlchemy's documented recipe for SQLite transactions).
    """

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        # WAL + synchronous=NORMAL: a commit is an append without fsync (~10x faster here). A
        # killed process loses nothing; a power cut may lose the last commits, i.e. a few
        # finished trials are evaluated again, never a corrupt study.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    # Connections opened while Optuna created the tables predate the hook; drop them.
    engine.dispose()
