"""Types of the config groups whose keys are fixed: storage, tracking, eval, pruner, latency.

Each shipped YAML file of these groups names its schema in its defaults list, e.g.
``- /schema/storage@_here_: sqlite``, so Hydra refuses a value of the wrong type
(``eval.batch_size=abc``) and an unknown key (``+storage.pth=x``) while composing, with the
full key in the message. A file of your own in these groups may do the same.

The values themselves live in the YAML files (every field here is mandatory, so a file that
uses a schema sets all of its keys); the checks that need more than a type -- ranges, a storage
URL, a scoring mode -- run in Python when the search starts, for configs from any source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

# OmegaConf reads these annotations at runtime: Optional[...], not `X | None` (it cannot
# evaluate the PEP 604 form under Python 3.11's postponed annotations).
# ruff: noqa: UP045


@dataclass
class StorageLiveness:
    """What every storage kind shares: heartbeats and re-queueing of lost trials."""

    kind: str = MISSING
    heartbeat_interval: int = MISSING
    grace_period: int = MISSING
    max_retry: Optional[int] = MISSING
    poll_interval: float = MISSING


@dataclass
class FileStorage(StorageLiveness):
    """SQLite and journal storages: one file."""

    path: str = MISSING


@dataclass
class PostgresStorage(StorageLiveness):
    url: Optional[str] = MISSING
    connect_timeout: int = MISSING


@dataclass
class MlflowTracking:
    kind: str = MISSING
    uri: str = MISSING
    experiment: str = MISSING
    artifact_location: Optional[str] = MISSING
    http_timeout: int = MISSING
    http_max_retries: int = MISSING
    connect_timeout: int = MISSING
    max_failures: int = MISSING
    log_artifacts: bool = MISSING


@dataclass
class NoTracking:
    kind: str = MISSING


@dataclass
class Eval:
    scoring: str = MISSING
    batch_size: int = MISSING
    max_new_tokens: int = MISSING
    shared_prefix: bool = MISSING
    chat_template: bool = MISSING
    prefix_cache_gb: float = MISSING


@dataclass
class NamedPruner:
    """``exact`` and ``none``: no options."""

    name: str = MISSING


@dataclass
class PairedPruner(NamedPruner):
    delta: float = MISSING
    min_examples: int = MISSING
    prior_correct: float = MISSING
    prior_wrong: float = MISSING


@dataclass
class SuccessiveHalvingPruner(NamedPruner):
    min_resource: int = MISSING
    reduction_factor: int = MISSING
    min_early_stopping_rate: int = MISSING
    bootstrap_count: int = MISSING


@dataclass
class HyperbandPruner(NamedPruner):
    min_resource: int = MISSING
    max_resource: Optional[int] = MISSING
    reduction_factor: int = MISSING
    bootstrap_count: int = MISSING


@dataclass
class Latency:
    batch_sizes: list[int] = field(default_factory=lambda: MISSING)  # type: ignore[arg-type]
    prompt_tokens: int = MISSING
    new_tokens: int = MISSING
    repeats: int = MISSING
    warmup: int = MISSING
    speedup_tolerance: float = MISSING


# (group in the config store, name) -> schema; the YAML files refer to them by these names.
SCHEMAS = {
    ("schema/storage", "sqlite"): FileStorage,
    ("schema/storage", "journal"): FileStorage,
    ("schema/storage", "postgres"): PostgresStorage,
    ("schema/tracking", "mlflow"): MlflowTracking,
    ("schema/tracking", "none"): NoTracking,
    ("schema", "eval"): Eval,
    ("schema/pruner", "exact"): NamedPruner,
    ("schema/pruner", "none"): NamedPruner,
    ("schema/pruner", "paired"): PairedPruner,
    ("schema/pruner", "successive_halving"): SuccessiveHalvingPruner,
    ("schema/pruner", "hyperband"): HyperbandPruner,
    ("schema", "latency"): Latency,
}


def register_schemas() -> None:
    """Put the schemas into Hydra's config store (idempotent); needed before composing."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)
