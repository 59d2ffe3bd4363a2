"""`tasks=[arc_easy_cloze,boolq]`: the task configs of a multi-task search, composed by Hydra.

A list of configs of one group is awkward in Hydra's defaults list (several options of a group
merge into one node), so a multi-task search names its tasks in the plain key ``tasks`` and
each one is composed exactly as ``task=NAME`` would compose it, with the rest of the command
line: ``task.fewshot.k=0`` or ``n_opt=32`` then apply to every task, every task keeps its own
defaults otherwise (its scoring mode, chat template, split sizes), and a task of the user's own
(``--config-dir``, ``hydra.searchpath``) works like any other. Sweeps take lists in brackets:
``-m 'tasks=[arc_easy_cloze,boolq],[arc_easy_cloze,winogrande]' seed=0,1``.

The composition runs inside the Hydra job (`expand_tasks`), from the job's own overrides, so a
sweep's jobs each get their tasks; `check_tasks_overrides` refuses bad names before any job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tale_opt.commands.config import ConfigSource, group_options, repository
from tale_opt.errors import UsageError, did_you_mean

KEY = "tasks"
LABEL_RESOLVER = "tale_opt.task_label"
# Keys that choose the task(s): replaced by `task=NAME` when one task of the list is composed.
_TASK_KEYS = ("task", KEY)


def task_label(name: Any, tasks: Any = None) -> str:
    """What names a search's task(s) in run directories and tags: ``arc_easy_cloze`` or, for a
    multi-task search, ``arc_easy_cloze+boolq`` (conf/config.yaml's run directory uses it)."""
    if tasks:
        return "+".join(str(t) for t in tasks)
    return str(name)


def _key(arg: str) -> str:
    return arg.lstrip("+~").partition("=")[0]


def requested_lists(overrides: Sequence[str]) -> Iterator[list[Any]]:
    """Every task list a command line asks for (one per job of a ``tasks`` sweep).

    Raises:
        UsageError: ``tasks=a,b`` (a sweep of single tasks, not a list) or unparseable syntax.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in overrides:
        if _key(arg) != KEY:
            continue
        try:
            parsed = parser.parse_overrides([arg])[0]
        except Exception as err:  # Hydra's parser raises its own types for bad syntax
            raise UsageError(
                f"{arg}: not a list of task names; e.g. tasks=[arc_easy,boolq]"
            ) from err
        values = list(parsed.sweep_iterator()) if parsed.is_sweep_override() else [parsed.value()]
        for value in values:
            if value is None:
                continue
            if not isinstance(value, list):
                raise UsageError(
                    f"{arg}: give the tasks as a list in brackets, tasks=[{value},...] "
                    "(a comma list without brackets is a sweep of single tasks; use task=A,B "
                    "for that)"
                )
            yield value


def check_tasks_overrides(overrides: Sequence[str], source: ConfigSource) -> None:
    """Refuse a `tasks` list that cannot be a multi-task search, before any job starts.

    Raises:
        UsageError: ``task=`` and ``tasks=`` together; fewer than two tasks; a task listed
            twice; a name that is no task config (with the closest one).
    """
    lists = list(requested_lists(overrides))
    if not lists:
        return
    if any(_key(arg) == "task" for arg in overrides):
        raise UsageError(
            "give task=NAME (one task) or tasks=[A,B] (a multi-task search), not both"
        )
    with repository(source) as loader:
        available = group_options(loader, source, "task")
    for names in lists:
        check_task_list(names, available)


def check_task_list(names: Sequence[Any], available: Sequence[str] | None = None) -> list[str]:
    """`names` as a list of distinct task names (at least two), known when `available` is given.

    Raises:
        UsageError: What is wrong with the list, naming the fix.
    """
    if len(names) < 2:
        raise UsageError(
            f"tasks={list(names)} names {len(names)} task(s); a multi-task search needs at "
            "least two (for one task use task=NAME)"
        )
    checked = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise UsageError(f"tasks must be a list of task names, but got {list(names)!r}")
        if available is not None and name not in available:
            raise UsageError(f"unknown task '{name}' in tasks.{did_you_mean(name, available)}")
        if name in checked:
            raise UsageError(f"task {name!r} is listed twice in tasks; list each task once")
        checked.append(name)
    return checked


def task_overrides(overrides: Sequence[str], name: str) -> list[str]:
    """The overrides that compose task `name` of a multi-task command line: every override but
    those choosing the task(s), then ``task=NAME``."""
    return [*(a for a in overrides if _key(a) not in _TASK_KEYS), f"task={name}"]


def tasks_compositions(overrides: Sequence[str]) -> Iterator[list[str]]:
    """The overrides of each task of a (single-job) multi-task command line, to compose them
    all before the job starts."""
    for names in requested_lists(overrides):
        for name in names:
            yield task_overrides(overrides, str(name))


def expand_tasks(container: dict[str, Any], job_overrides: Sequence[str],
                 hydra_overrides: Sequence[str], config_name: str) -> dict[str, Any]:  # fmt: skip
    """`container` (a resolved search config) with ``tasks`` replaced by a mapping from each
    task's name to ``{"task": ..., "eval": ..., "n_opt": ..., "n_eval": ...}`` as ``task=NAME``
    plus the job's other overrides compose them. Called inside the Hydra job (it uses Hydra's
    loaded config repository, search path included). A config without ``tasks`` is returned
    as it is.

    Raises:
        UsageError: A bad list, or a task whose composition Hydra refuses (one line).
    """
    names = container.get(KEY)
    if not names:
        return container
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tale_opt.commands.config import explain

    names = check_task_list(list(names))
    searchpath = [a for a in hydra_overrides if _key(a) == "hydra.searchpath"]
    entries = {}
    for name in names:
        overrides = [*task_overrides(job_overrides, name), *searchpath]
        try:
            composed = OmegaConf.to_container(compose(config_name, overrides=overrides),
                                              resolve=True)  # fmt: skip
        except (HydraException, OmegaConfBaseException) as err:
            raise UsageError(f"task {name}: {explain(err, overrides, ConfigSource())}") from err
        entries[name] = task_entry(composed)
    return {**container, KEY: entries}


def task_entry(composed: Mapping[str, Any]) -> dict[str, Any]:
    """What a multi-task search keeps of one task's composed config."""
    return {
        "task": composed["task"],
        "eval": composed["eval"],
        "n_opt": composed.get("n_opt"),
        "n_eval": composed.get("n_eval"),
    }
