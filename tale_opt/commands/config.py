"""Hydra's config repository as the commands see it: the shipped `tale_opt/conf/` plus the
user's own config directories, and one-line errors for what composing it refuses.

A user adds configs the Hydra way -- ``--config-dir=DIR`` or ``hydra.searchpath=[file://DIR]``
-- and `task=my_task` then names ``DIR/task/my_task.yaml``. The checks here ask Hydra's own
repository, with that search path, which options a group has and whether the config composes,
so they accept exactly what the search itself will load.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tale_opt.commands.schema import register_schemas
from tale_opt.errors import UsageError, did_you_mean

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = (
    "model", "task", "searcher", "eval", "pruner", "storage", "tracking", "experiment", "finetune",
)  # fmt: skip
# Keys that once existed, with what replaced them: refused with that, not as unknown keys.
RETIRED_KEYS = {
    "eval.early_stop": "the pruner group: eval.early_stop=false is pruner=none, "
    "eval.early_stop=true is pruner=exact (the default)",
}
SEARCHPATH_KEY = "hydra.searchpath"
HINT = "run `python -m tale_opt --cfg job` to see the keys you can set"


@dataclass
class ConfigSource:
    """Which primary config to compose and where else Hydra looks for configs.

    Attributes:
        config_name: The primary config (``config``; ``--config-name`` changes it).
        search_path: Extra config directories after the shipped one: ``--config-dir`` first,
            then the entries of ``hydra.searchpath`` (``file://DIR`` or ``pkg://module``).
        hint: Where to look up the keys; ends error lines.
    """

    config_name: str = "config"
    search_path: list[str] = field(default_factory=list)
    hint: str = HINT  # where to look up the keys, at the end of an error line

    def overrides(self) -> list[str]:
        """The ``hydra.searchpath=[...]`` override that gives Hydra this search path."""
        if not self.search_path:
            return []
        quoted = ",".join("'" + entry.replace("'", "\\'") + "'" for entry in self.search_path)
        return [f"{SEARCHPATH_KEY}=[{quoted}]"]


def source_from(overrides: Sequence[str], config_dir: str | None = None,
                config_name: str | None = None) -> ConfigSource:  # fmt: skip
    """The `ConfigSource` of a command line (its overrides and Hydra's two config flags).

    Raises:
        UsageError: A ``--config-dir`` that is not a directory, or a malformed searchpath.
    """
    entries: list[str] = []
    if config_dir is not None:
        path = Path(config_dir).expanduser().resolve()
        if not path.is_dir():
            raise UsageError(
                f"--config-dir {config_dir!r} is not a directory; give the folder that holds "
                "your config groups (e.g. DIR with DIR/task/my_task.yaml)"
            )
        entries.append(f"file://{path}")
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == SEARCHPATH_KEY:
            entries.extend(_searchpath_entries(value))
    return ConfigSource(config_name or "config", entries)


def _searchpath_entries(value: str) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([f"{SEARCHPATH_KEY}={value}"])[0]
        entries = parsed.value()
    except Exception as err:  # Hydra's parser raises its own types for bad syntax
        raise UsageError(
            f"{SEARCHPATH_KEY}={value} is not a list; e.g. {SEARCHPATH_KEY}=[file:///my/conf]"
        ) from err
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise UsageError(
            f"{SEARCHPATH_KEY} must be a list of paths, but got {value!r}; "
            f"e.g. {SEARCHPATH_KEY}=[file:///my/conf]"
        )
    return entries


def command_flags(
    argv: Sequence[str], command: str, hint: str
) -> tuple[list[str], str | None, bool]:
    """(overrides, ``--config-dir``, ``--cfg``) of a command that composes a config of its own
    (evaluate, analyze): key=value overrides and those two flags, nothing else.

    Raises:
        UsageError: Another flag, or ``--config-dir`` without a directory.
    """
    overrides: list[str] = []
    config_dir, show = None, False
    args = iter(argv)
    for arg in args:
        if arg == "--cfg":
            show = True
        elif arg in ("--config-dir", "-cd"):
            config_dir = next(args, None)
            if config_dir is None:
                raise UsageError(f"{arg} needs a directory, e.g. {arg} my_conf")
        elif arg.startswith("--config-dir="):
            config_dir = arg.partition("=")[2]
        elif arg.startswith("-"):
            raise UsageError(
                f"{command} has no option {arg!r}; it takes key=value overrides, "
                f"--config-dir=DIR and --cfg ({hint})"
            )
        else:
            overrides.append(arg)
    return overrides, config_dir, show


@contextmanager
def repository(source: ConfigSource) -> Iterator[Any]:
    """Hydra's config loader over the shipped configs and `source`'s search path."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="tale_opt"):
        yield GlobalHydra.instance().config_loader()


def group_options(loader: Any, source: ConfigSource, group: str) -> list[str]:
    """The options of `group` in every directory of the search path."""
    options = loader.get_group_options(
        group, config_name=source.config_name, overrides=source.overrides()
    )
    return sorted(o for o in options if not o.startswith("_"))


def check_group_choices(overrides: Sequence[str], source: ConfigSource | None = None) -> None:
    """Reject unknown group options (also inside multirun comma lists) with a suggestion."""
    source = source or ConfigSource()
    chosen = [_group_choice(arg) for arg in overrides]
    chosen = [c for c in chosen if c is not None]
    if not chosen:
        return
    with repository(source) as loader:
        for group, choices in chosen:
            available = group_options(loader, source, group)
            for choice in choices:
                if choice not in available:
                    raise UsageError(
                        f"unknown {group} '{choice}'.{did_you_mean(choice, available)}"
                    )


def _group_choice(arg: str) -> tuple[str, list[str]] | None:
    if arg.startswith("-") or "=" not in arg:
        return None
    key, _, value = arg.lstrip("+").partition("=")
    if key not in GROUPS or value in ("", "null"):
        return None
    return key, [c.strip() for c in value.split(",") if c.strip()]


def check_retired_keys(overrides: Sequence[str]) -> None:
    """Refuse a key that was replaced (`RETIRED_KEYS`), naming what replaced it.

    Raises:
        UsageError: One of `overrides` sets a retired key.
    """
    for arg in overrides:
        key = arg.lstrip("+~").partition("=")[0]
        if key in RETIRED_KEYS:
            raise UsageError(f"{key} was replaced by {RETIRED_KEYS[key]}")


def compose(overrides: Sequence[str], source: ConfigSource | None = None) -> Any:
    """The composed config (a DictConfig), as the search will see it.

    ``hydra.*`` overrides other than the search path are left out: they set where and how a
    job runs (output directories, launchers), which composing the config does not need.

    Raises:
        UsageError: One line naming what Hydra refused (unknown option or key, wrong type).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    source = source or ConfigSource()
    check_retired_keys(overrides)
    plain = [a for a in overrides if not a.lstrip("+~").startswith("hydra.")]
    try:
        return _compose(plain, source)
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(explain(err, plain, source)) from err


def compose_plain(overrides: Sequence[str], source: ConfigSource, missing: str) -> dict[str, Any]:
    """The composed config as plain containers, every interpolation resolved, for the commands
    whose config has a mandatory key (``???``) and no Hydra job (worker, workers).

    Raises:
        UsageError: As `compose`, or a mandatory key is missing; `missing` says which and how
            to give it.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    check_group_choices(overrides, source)
    cfg = compose(list(overrides), source)
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise UsageError(missing) from err


# Compositions a sweep's check may cost (about 0.25 s each); the rest Hydra checks per job.
SWEEP_CHECKS = 48


def check_sweep(overrides: Sequence[str], source: ConfigSource | None = None) -> None:
    """Compose the jobs of a ``-m`` sweep before it starts: every combination of its group
    choices (each choice on its own when there are too many combinations), and each value
    of its other swept keys, so that a key or value one job refuses is one line now rather
    than Hydra's error at job N.

    Sweeps Hydra cannot enumerate without its sweeper (glob, interval) are left to Hydra.

    Raises:
        UsageError: A job's config does not compose, named with its group choices.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    source = source or ConfigSource()
    plain = [a for a in overrides if not a.lstrip("+~").startswith("hydra.")]
    fixed: list[str] = []
    groups: list[list[str]] = []  # per swept group: its "group=choice" overrides
    keys: list[list[str]] = []  # per other swept key: its "key=value" overrides
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
        for arg, override in zip(plain, parsed, strict=True):
            if not override.is_sweep_override():
                fixed.append(arg)
                continue
            name = arg.partition("=")[0]
            values = [f"{name}={v}" for v in override.sweep_string_iterator()]
            (groups if _group_choice(arg) is not None else keys).append(values)
    except (HydraException, OmegaConfBaseException):
        return  # a syntax Hydra reports itself, or a sweep only its sweeper enumerates
    jobs = _sweep_jobs(groups, keys)
    with repository(source):
        outcomes: list[tuple[list[str], BaseException | None]] = []
        for job in jobs[:SWEEP_CHECKS]:
            try:
                _compose_loaded([*fixed, *job], source)
                outcomes.append((job, None))
            except (HydraException, OmegaConfBaseException) as err:
                outcomes.append((job, err))
    failed = [(job, err) for job, err in outcomes if err is not None]
    if not failed:
        return
    job, err = failed[0]
    message = explain(err, [*fixed, *job], source)
    fine = [j for j, e in outcomes if e is None]
    chosen = [a for a in job if _group_choice(a) is not None]
    unknown = _unknown_key(err)
    if unknown and fine:
        works = [a for a in fine[0] if _group_choice(a) is not None and a not in chosen]
        differs = [a for a in chosen if a not in fine[0]]
        if works and differs:
            raise UsageError(
                f"unknown config key '{unknown}' with {' '.join(differs)} in this sweep "
                f"(only with {' '.join(works)}); sweep those choices in separate commands, "
                f"each with the keys it has"
            ) from err
    # Said only when other jobs compose: when none does, the choices are not the cause.
    where = f" (the sweep's job with {' '.join(chosen)})" if chosen and fine else ""
    raise UsageError(f"{message}{where}") from err


def _sweep_jobs(groups: list[list[str]], keys: list[list[str]]) -> list[list[str]]:
    """Override lists to compose: every combination of the group choices (or each choice
    once, with the other groups at their first, when that is too many), then each value of
    the other swept keys with the first choices."""
    import itertools
    import math

    first = [values[0] for values in groups]
    if math.prod(len(values) for values in groups) <= SWEEP_CHECKS // 2:
        jobs = [list(combo) for combo in itertools.product(*groups)]
    else:
        jobs = [first]
        for i, values in enumerate(groups):
            jobs += [[*first[:i], value, *first[i + 1 :]] for value in values[1:]]
    key_firsts = [values[0] for values in keys]
    jobs = [[*job, *key_firsts] for job in jobs]
    for i, values in enumerate(keys):
        jobs += [[*first, *key_firsts[:i], value, *key_firsts[i + 1 :]] for value in values[1:]]
    return jobs


def _compose(overrides: Sequence[str], source: ConfigSource) -> Any:
    with repository(source):
        return _compose_loaded(overrides, source)


def _compose_loaded(overrides: Sequence[str], source: ConfigSource) -> Any:
    """Compose inside an open `repository(source)` (several compositions, one setup)."""
    from hydra import compose as hydra_compose

    return hydra_compose(source.config_name, overrides=[*overrides, *source.overrides()])


def _unknown_key(err: BaseException) -> str | None:
    """The key of an "unknown key" composition error, else None."""
    text = str(err).strip()
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown and "No match in the defaults list" not in text:
        return unknown.group(1)
    return None


def explain(err: BaseException, overrides: Sequence[str], source: ConfigSource) -> str:
    """One line for a composition error: the key, the value and what was expected."""
    cause = err.__cause__ if err.__cause__ is not None else err
    text = str(err).strip()
    key = _unknown_key(err)
    if key is not None:
        return f"unknown config key '{key}'.{_key_hint(key, overrides, source)}"
    full_key = getattr(cause, "full_key", None)
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else text
    if full_key and reason:
        reason = _plain_reason(reason)
        where = f"`{full_key}`" if reason.startswith("must ") else f"{full_key}:"
        return f"{where} {reason} -- {source.hint}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{' '.join(lines[:2])} -- {source.hint}"


def _plain_reason(reason: str) -> str:
    """OmegaConf's type errors in the project's words (the value and the expected type)."""
    converted = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", reason)
    if converted:
        expected = {"Integer": "an integer", "Float": "a number", "String": "a string"}
        kind = expected.get(converted.group(2), converted.group(2))
        return f"must be {kind}, but got {converted.group(1)!r}"
    boolean = re.match(r"Value '(.*)' is not a valid bool", reason)
    if boolean:
        return f"must be true or false, but got {boolean.group(1)!r}"
    return reason


def _key_hint(key: str, overrides: Sequence[str], source: ConfigSource) -> str:
    """ " Did you mean 'x'? Available: ..." for an unknown key, from the keys the config has
    with the same group choices; a bare leaf name also matches a nested key
    (``epsilon`` -> ``searcher.epsilon``)."""
    from omegaconf import OmegaConf

    groups = [a for a in overrides if _group_choice(a) is not None and "," not in a]
    try:
        cfg = _compose(groups, source)
    except Exception:  # no hint is better than a second error
        return ""
    keys = list(_key_paths(OmegaConf.to_container(cfg, resolve=False)))
    parent, _, leaf = key.rpartition(".")
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    nested = [k for k in keys if k.rpartition(".")[2] == leaf and k != key]
    if nested and not any(k.rpartition(".")[2] == leaf for k in siblings):
        return f" Did you mean '{nested[0]}'?"
    prefix = f"{parent}." if parent else ""
    names = [k.rpartition(".")[2] for k in siblings]
    hint = did_you_mean(leaf, names) if names else ""
    if prefix:
        hint = hint.replace(" Did you mean '", f" Did you mean '{prefix}")
    return hint + f" (a new key needs a leading +: +{key}=...)"


def _key_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if not isinstance(node, Mapping):
        return
    for name, value in node.items():
        path = f"{prefix}{name}"
        yield path
        yield from _key_paths(value, f"{path}.")
