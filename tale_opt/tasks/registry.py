"""Build tasks and their splits from a plain config mapping (a `conf/task/*.yaml` node).

The config arrives as a plain dict (the CLI converts the Hydra node with
``OmegaConf.to_container(cfg.task, resolve=True)``), so this package never imports Hydra.
Keys are validated here, at the boundary, so a typo fails before any model is loaded.

Task config schema (see conf/task/*.yaml)::

    name: arc_easy                  # required
    type: multiple_choice           # multiple_choice (default) | generative
    description: ...                # free text, optional
    sources:                        # two sources: optimization and evaluation drawn separately
      optimization: {path: ..., row_format: {...}}   # a source may override row_format
      evaluation:   {path: ...}
    source: {path: ...}             # OR one source, partitioned (first n_opt, next n_eval)
                                    # ({generator: boolean_expressions, options: {...}} too)
    subjects: [anatomy, ...]        # fills {subject} in source paths / hub configs
    on_overlap: error               # or exclude: drop items shared with evaluation from opt
    filter: {name: min_premises, more_than: 5}     # optional: keep only matching items
    row_format: {name: labelled_choices, answer: answerKey, ...}  # generative: {id, answer}
    prompt: {system: ..., user: ..., labels: [A, B, ...], ...}    # generative: system, user
    answer: {name: gsm8k}           # generative only: the answer parser (tasks/answers.py)
    scoring: {mode: generate, max_new_tokens: 256, stop: [...], stop_patterns: [...]}
    fewshot: {k: 0, style: chat, source: {path: ...}}   # k demonstrations (0 = zero-shot)
    n_opt: 48                       # null or -1: all available
    n_eval: 200
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from tale_opt.errors import UsageError, did_you_mean
from tale_opt.tasks.base import Example, Splits
from tale_opt.tasks.filters import build_filter
from tale_opt.tasks.generative import GenerativeTask
from tale_opt.tasks.multiple_choice import MultipleChoiceTask
from tale_opt.tasks.sources import SOURCE_KEYS, describe, load_rows, resolve_path
from tale_opt.tasks.splits import build_splits, check_overlap_policy, check_size
from tale_opt.tasks.templates import check_keys

AnyTask = MultipleChoiceTask | GenerativeTask
TASK_KEYS = (
    "name",
    "type",
    "description",
    "source",
    "sources",
    "subjects",
    "on_overlap",
    "filter",
    "row_format",
    "prompt",
    "answer",
    "scoring",
    "fewshot",
    "n_opt",
    "n_eval",
)
SOURCE_ROLES = ("optimization", "evaluation")
ROLE_NAMES = {
    "optimization": "optimization split",
    "evaluation": "evaluation split",
    "shared": "data",
    "fewshot": "few-shot pool",
}
# type -> builder from the config node; each validates its own prompt / row_format keys.
TASK_TYPES: dict[str, Callable[[Mapping[str, Any]], AnyTask]] = {
    "multiple_choice": MultipleChoiceTask.from_config,
    "generative": GenerativeTask.from_config,
}
# Marks "take the size from the task config" (None already means "all available").
FROM_CONFIG: Any = object()
# Used when a task config has no n_opt / n_eval key; small enough for a 2-core CPU run.
DEFAULT_N_OPT = 48
DEFAULT_N_EVAL = 200


def build_task(cfg: Mapping[str, Any]) -> AnyTask:
    """A task from its config, validated; reads no data.

    Args:
        cfg: The task config node as a plain mapping.

    Raises:
        UsageError: unknown or missing keys, unknown type / row format / answer parser /
            filter / scoring mode, or a malformed prompt template.
    """
    check_keys(cfg, TASK_KEYS, "task")
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"task.name must be a non-empty string, but got {name!r}")
    kind = cfg.get("type", "multiple_choice")
    if kind not in TASK_TYPES:
        raise UsageError(
            f"task.type must name a task type, got {kind!r}." + did_you_mean(kind, TASK_TYPES)
        )
    if kind != "generative" and cfg.get("answer") is not None:
        raise UsageError("task.answer (an answer parser) only applies to type: generative")
    _source_specs(cfg)  # validate the sources' shape now; reading them waits for load_splits
    fewshot_source = (cfg.get("fewshot") or {}).get("source")
    if fewshot_source:
        _source_spec("fewshot", fewshot_source)
    check_overlap_policy(cfg.get("on_overlap", "error"))
    if cfg.get("filter"):
        build_filter(cfg["filter"])
    for key in ("n_opt", "n_eval"):
        check_size(key, cfg.get(key, 1))
    return TASK_TYPES[kind](cfg)


def load_splits(
    task_cfg: Mapping[str, Any],
    seed: int,
    n_opt: int | None = FROM_CONFIG,
    n_eval: int | None = FROM_CONFIG,
) -> Splits:
    """Read the task's sources and draw disjoint optimization / evaluation splits, plus the
    few-shot demonstrations when ``task.fewshot.k > 0``.

    The same k demonstrations (seeded by `seed`) are attached to every example of both splits
    (`Example.demos`), so whoever renders an example renders them.

    Args:
        task_cfg: The task config node as a plain mapping.
        seed: Split seed (same seed, same splits and demonstrations).
        n_opt: Optimization size; defaults to ``task_cfg["n_opt"]`` (48 when absent);
            None/-1 = all available.
        n_eval: Evaluation size; defaults to ``task_cfg["n_eval"]`` (200 when absent);
            None/-1 = all available.

    Raises:
        UsageError: bad config, unreadable sources, wrong sizes, or overlapping sources.
    """
    task = build_task(task_cfg)
    n_opt = task_cfg.get("n_opt", DEFAULT_N_OPT) if n_opt is FROM_CONFIG else n_opt
    n_eval = task_cfg.get("n_eval", DEFAULT_N_EVAL) if n_eval is FROM_CONFIG else n_eval
    pools = load_pools(task_cfg, task)
    splits = build_splits(
        pools.get("optimization", pools.get("shared", [])),
        pools.get("evaluation"),
        n_opt=n_opt,
        n_eval=n_eval,
        seed=seed,
        content_key=task.content_key,
        on_overlap=task_cfg.get("on_overlap", "error"),
        n_fewshot=task.fewshot.k,
        fewshot_pool=pools.get("fewshot"),
    )
    info = {
        **splits.info,
        "task": task.name,
        "prompt_version": task.prompt_version,
        "sources": {role: describe(spec) for role, spec in _source_specs(task_cfg).items()},
    }
    demos = tuple(splits.fewshot)
    optimization, evaluation = (
        tuple(replace(e, demos=demos) for e in part) if demos else tuple(part)
        for part in (splits.optimization, splits.evaluation)
    )
    return Splits(optimization, evaluation, splits.fingerprint, info, fewshot=demos)


def load_pools(
    task_cfg: Mapping[str, Any], task: AnyTask | None = None
) -> dict[str, list[Example]]:
    """Every example of every source (filtered by ``task.filter``), before deduplication and
    sampling.

    Returns:
        ``{"shared": [...]}`` for a one-source task, else ``{"optimization": [...],
        "evaluation": [...]}``; plus ``"fewshot"`` when ``task.fewshot.source`` is set.
        Sources with ``{subject}`` are concatenated over ``task.subjects`` in order.
    """
    task = task or build_task(task_cfg)
    keep = build_filter(task_cfg["filter"]) if task_cfg.get("filter") else None
    specs = _source_specs(task_cfg)
    fewshot_source = (task_cfg.get("fewshot") or {}).get("source")
    if fewshot_source:
        specs["fewshot"] = _source_spec("fewshot", fewshot_source)
    pools: dict[str, list[Example]] = {}
    for role, spec in specs.items():
        row_format = spec.pop("row_format", None)
        row_format = _row_format(row_format) if row_format else None
        pools[role] = []
        for expanded, subject in _expand_subjects(spec, task_cfg.get("subjects")):
            rows = load_rows(expanded)
            if subject is not None:
                for row in rows:
                    row.setdefault("subject", subject)
            try:
                examples = task.to_examples(rows, describe(expanded), row_format)
            except UsageError as err:  # a bad row: say whose and which part of the data
                raise UsageError(f"task {task.name!r}, {ROLE_NAMES[role]}: {err}") from None
            pools[role] += [e for e in examples if keep(e)] if keep else examples
        if not pools[role]:
            raise UsageError(
                f"task.filter {dict(task_cfg['filter'])} keeps none of the {role} source's "
                f"items; loosen it"
            )
    return pools


def _source_specs(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"shared": spec}`` for one source, or ``{"optimization": ..., "evaluation": ...}``."""
    one, two = cfg.get("source"), cfg.get("sources")
    if (one is None) == (two is None):
        raise UsageError(
            "a task needs exactly one of 'source' (one data set, partitioned) or 'sources' "
            f"(optimization + evaluation), but got source={one!r}, sources={two!r}"
        )
    if one is not None:
        specs = {"shared": one}
    else:
        if not isinstance(two, Mapping):
            raise UsageError(
                f"task.sources must map optimization/evaluation to sources, got {two!r}"
            )
        check_keys(two, SOURCE_ROLES, "task.sources")
        missing = [role for role in SOURCE_ROLES if not two.get(role)]
        if missing:
            raise UsageError(
                f"task.sources needs both {SOURCE_ROLES}, but {missing[0]!r} is missing"
            )
        specs = dict(two)
    return {role: _source_spec(role, spec) for role, spec in specs.items()}


def _source_spec(role: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise UsageError(f"task source '{role}' must be a mapping like {{path: ...}}: {spec!r}")
    check_keys(spec, (*SOURCE_KEYS, "row_format"), f"task source '{role}'")
    return dict(spec)


def _expand_subjects(
    spec: Mapping[str, Any], subjects: Sequence[str] | None
) -> list[tuple[dict[str, Any], str | None]]:
    """One spec per subject when the path or hub config has a ``{subject}`` placeholder."""
    templated = [k for k in ("path", "config") if "{subject}" in str(spec.get(k) or "")]
    if not templated:
        return [(dict(spec), None)]
    if not subjects or isinstance(subjects, str):
        raise UsageError(
            f"source {describe(spec)} has a {{subject}} placeholder, so task.subjects must be a "
            f"non-empty list of subjects, but got {subjects!r}"
        )
    if spec.get("path"):
        # Check names up front, so a typo gets "did you mean" instead of "file not found".
        parent = resolve_path(str(spec["path"]).split("{subject}")[0])
        known = {p.name for p in parent.iterdir()} if parent.is_dir() else set()
        for subject in subjects:
            if known and subject not in known:
                raise UsageError(
                    f"task.subjects has an unknown subject {subject!r}."
                    + did_you_mean(subject, known)
                )
    return [
        ({k: (v.replace("{subject}", s) if k in templated else v) for k, v in spec.items()}, s)
        for s in subjects
    ]


def _row_format(spec: Any) -> dict[str, Any]:
    return {"name": spec} if isinstance(spec, str) else dict(spec)
