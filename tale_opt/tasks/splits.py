"""Seeded, disjoint optimization and evaluation splits.

Two ways to draw them:

* two sources (e.g. ARC-Easy validation for optimization, test for evaluation): each pool is
  shuffled with its own seeded stream and the first ``n`` items are taken;
* one source: the pool is shuffled once and cut into consecutive parts (first ``n_opt`` for
  optimization, the next ``n_eval`` for evaluation).

Disjointness holds by construction and is checked anyway, on example ids AND normalized content
(so the same item stored under different ids in two files is caught). Within a pool, repeated
items are dropped first (MMLU's test set repeats questions), which is what makes the one-source
cut disjoint by content.

Few-shot demonstrations are a third part, disjoint from both splits (checked the same way):

* carved: one more named part cut *after* the others from the same shuffled order (the shared
  pool, or the optimization pool of a two-source task), so turning few-shot on never changes
  which items the two splits hold (except that a null size leaves room for the k demos);
* from a dedicated source (e.g. MMLU's dev split): that pool, minus anything also in either
  split, shuffled with its own seeded stream; the first k are the demonstrations.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tale_opt import validate
from tale_opt.errors import ConfigValueError, UsageError
from tale_opt.tasks.base import Example, Splits

OVERLAP_POLICIES = ("error", "exclude")
ContentKey = Callable[[Example], str]


def default_content_key(example: Example) -> str:
    """Normalized string fields + choices; tasks pass a sharper key (their template fields)."""
    parts = [" ".join(str(v).casefold().split()) for _, v in sorted(example.fields.items())]
    return "\x1f".join(parts + [" ".join(c.casefold().split()) for c in example.choices])


def build_splits(
    optimization_pool: Sequence[Example],
    evaluation_pool: Sequence[Example] | None,
    *,
    n_opt: int | None,
    n_eval: int | None,
    seed: int,
    content_key: ContentKey = default_content_key,
    on_overlap: str = "error",
    n_fewshot: int = 0,
    fewshot_pool: Sequence[Example] | None = None,
) -> Splits:
    """Draw the optimization and evaluation splits, and the few-shot demonstrations.

    Args:
        optimization_pool: Examples the optimization split is drawn from; with
            ``evaluation_pool=None`` this single pool is partitioned for both splits.
        evaluation_pool: Examples the evaluation split is drawn from, or None.
        n_opt: Optimization split size; None or -1 means all that is available (with one
            source: all that remains after ``n_eval``).
        n_eval: Evaluation split size; None or -1 as above.
        seed: Shuffle seed; the same seed gives the same splits.
        content_key: Maps an example to its normalized content, for duplicate detection.
        on_overlap: With two pools, what to do with items present in both: ``error``, or
            ``exclude`` them from the optimization pool (the evaluation set stays whole).
        n_fewshot: Number of demonstrations (0 = zero-shot).
        fewshot_pool: A dedicated pool to draw them from; None carves them from the shared
            pool or the optimization pool.

    Raises:
        UsageError: a size <= 0 or larger than the pool, overlapping pools under
            ``on_overlap=error``, one id used for two different items, or too few items left
            for the demonstrations.
    """
    n_opt, n_eval = check_size("n_opt", n_opt), check_size("n_eval", n_eval)
    check_overlap_policy(on_overlap)
    opt_pool, opt_dups = _dedupe(optimization_pool, content_key, "optimization")
    info: dict[str, Any] = {"seed": seed, "duplicates_dropped": {"optimization": opt_dups}}
    carve = n_fewshot if fewshot_pool is None else 0  # demos cut from the pools below

    if evaluation_pool is None:
        info["pool_sizes"] = {"shared": len(opt_pool)}
        n_opt, n_eval = _fit_shared(len(opt_pool), n_opt, n_eval, reserve=carve)
        sizes = {"optimization": n_opt, "evaluation": n_eval, "fewshot": carve}
        parts = _cut(opt_pool, sizes, seed, "shared")
    else:
        eval_pool, eval_dups = _dedupe(evaluation_pool, content_key, "evaluation")
        info["duplicates_dropped"]["evaluation"] = eval_dups
        shared = _overlap(opt_pool, eval_pool, content_key)
        if shared and on_overlap == "error":
            raise UsageError(
                f"the optimization and evaluation sources share {len(shared)} item(s) "
                f"(by id or content), e.g. id {shared[0]!r}; use disjoint sources, or set "
                f"task.on_overlap=exclude to drop them from the optimization pool"
            )
        shared_ids = set(shared)
        opt_pool = [e for e in opt_pool if e.id not in shared_ids]
        info["overlap_excluded"] = len(shared)
        info["pool_sizes"] = {"optimization": len(opt_pool), "evaluation": len(eval_pool)}
        opt_sizes = {"optimization": _fit("n_opt", n_opt, len(opt_pool), carve), "fewshot": carve}
        eval_sizes = {"evaluation": _fit("n_eval", n_eval, len(eval_pool))}
        parts = _cut(opt_pool, opt_sizes, seed, "opt")
        parts.update(_cut(eval_pool, eval_sizes, seed, "eval"))
    if not carve:
        del parts["fewshot"]
    if n_fewshot:
        if fewshot_pool is not None:
            parts["fewshot"] = _draw_fewshot(fewshot_pool, n_fewshot, parts, seed, content_key)
        info["fewshot"] = {
            "k": n_fewshot,
            "source": "dedicated" if fewshot_pool is not None else "carved",
            "ids": [e.id for e in parts["fewshot"]],
        }

    names = list(parts)
    for i, left in enumerate(names):
        for right in names[i + 1 :]:
            clash = _overlap(parts[left], parts[right], content_key)
            if clash:  # unreachable unless the code above is wrong; the check is cheap
                raise UsageError(f"the {left} and {right} parts overlap on {len(clash)} item(s)")
    return Splits(
        optimization=tuple(parts["optimization"]),
        evaluation=tuple(parts["evaluation"]),
        fingerprint=fingerprint(parts),
        info=info,
        fewshot=tuple(parts.get("fewshot", ())),
    )


def _draw_fewshot(
    pool: Sequence[Example],
    k: int,
    parts: Mapping[str, Sequence[Example]],
    seed: int,
    content_key: ContentKey,
) -> list[Example]:
    """k demonstrations from a dedicated pool, never an item of either split."""
    return draw_disjoint_part(
        pool, k, parts, seed, content_key, stream="fewshot",
        too_few="task.fewshot.k={k} but the few-shot source has only {available} items not "
        "used by either split; lower task.fewshot.k",
    )  # fmt: skip


def draw_disjoint_part(
    pool: Sequence[Example],
    size: int | None,
    parts: Mapping[str, Sequence[Example]],
    seed: int,
    content_key: ContentKey,
    *,
    stream: str,
    too_few: str,
) -> list[Example]:
    """`size` items of `pool` (None: all) that are in none of `parts`, by id or content.

    The pool is deduplicated, every item found in a part is left out, and what remains is
    shuffled with its own seeded stream (`stream`), so the same seed draws the same items and
    drawing one part never changes the others.

    Args:
        too_few: The error message when fewer than `size` items remain; ``{k}`` and
            ``{available}`` are filled in.

    Raises:
        UsageError: Fewer than `size` items (or none at all) remain.
    """
    candidates, _ = _dedupe(pool, content_key, stream)
    taken: set[str] = set()
    for part in parts.values():
        taken.update(_overlap(candidates, part, content_key))
    candidates = [e for e in candidates if e.id not in taken]
    if (size is not None and len(candidates) < size) or not candidates:
        raise UsageError(too_few.format(k=size, available=len(candidates)))
    size = len(candidates) if size is None else size
    drawn = _cut(candidates, {stream: size}, seed, stream)[stream]
    for name, part in parts.items():
        if _overlap(drawn, part, content_key):  # unreachable unless the code above is wrong
            raise UsageError(f"the {stream} part overlaps the {name} part")
    return drawn


def fingerprint(parts: Mapping[str, Sequence[Example]]) -> str:
    """sha256 over the ordered example ids of every part (order and membership both count)."""
    payload = [[name, [e.id for e in examples]] for name, examples in parts.items()]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def check_size(name: str, value: Any) -> int | None:
    """A validated split size: a positive int, or None for all available (null or -1)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == -1):
        return None
    try:
        return validate.integer(value, f"task.{name}", minimum=1)
    except ConfigValueError as err:
        raise ConfigValueError(f"{err} (null or -1: all available)") from err


def check_overlap_policy(value: Any) -> None:
    """Raise a UsageError unless `value` is a known `on_overlap` policy."""
    if value not in OVERLAP_POLICIES:
        raise UsageError(f"task.on_overlap must be one of {OVERLAP_POLICIES}, got {value!r}")


def _fit(name: str, size: int | None, pool: int, reserve: int = 0) -> int:
    available = pool - reserve
    if size is None:
        if available <= 0:
            raise UsageError(
                f"the {pool} examples of the source all go to the {reserve} few-shot "
                f"demonstrations; lower task.fewshot.k"
            )
        return available
    if size > available:
        held = f" ({reserve} of {pool} are held for few-shot demonstrations)" if reserve else ""
        raise UsageError(
            f"task.{name}={size} is larger than the {available} examples available{held}; "
            f"set {name}={available} or less (or null for all)"
        )
    return size


def _fit_shared(
    total: int, n_opt: int | None, n_eval: int | None, reserve: int = 0
) -> tuple[int, int]:
    if n_opt is None and n_eval is None:
        raise UsageError(
            "with a single source, at most one of task.n_opt / task.n_eval may be null "
            f"(all remaining), but both are; set e.g. n_opt=48 (the source has {total} examples)"
        )
    room = total - reserve
    n_opt = room - n_eval if n_opt is None else n_opt  # type: ignore[operator]
    n_eval = room - n_opt if n_eval is None else n_eval
    if n_opt <= 0 or n_eval <= 0 or n_opt + n_eval > room:
        held = f" after the {reserve} few-shot demonstrations" if reserve else ""
        raise UsageError(
            f"task.n_opt={n_opt} + task.n_eval={n_eval} needs {n_opt + n_eval} examples but "
            f"the source has {room}{held}; lower them so n_opt + n_eval <= {room} "
            f"(e.g. n_opt={min(n_opt, room // 5) or 1}, n_eval=null)"
        )
    return n_opt, n_eval


def _cut(
    pool: Sequence[Example], sizes: Mapping[str, int], seed: int, stream: str
) -> dict[str, list[Example]]:
    """Shuffle `pool` with a seeded stream and cut consecutive named parts, in order."""
    order = list(pool)
    # A string seed is hashed deterministically (sha512), unlike hash(), so runs agree.
    random.Random(f"tale_opt/{stream}/{seed}").shuffle(order)
    parts: dict[str, list[Example]] = {}
    start = 0
    for name, size in sizes.items():
        parts[name] = order[start : start + size]
        start += size
    return parts


def _dedupe(
    pool: Sequence[Example], content_key: ContentKey, role: str
) -> tuple[list[Example], int]:
    """Drop repeated items (same content), keeping the first; an id reused for different
    content is a data error, since prediction files and checks key on ids."""
    seen_content: set[str] = set()
    content_of_id: dict[str, str] = {}
    kept: list[Example] = []
    for example in pool:
        key = content_key(example)
        if example.id in content_of_id and content_of_id[example.id] != key:
            raise UsageError(
                f"the {role} source uses id {example.id!r} for two different items; ids must be "
                f"unique (or set task.row_format.id: null to use content hashes as ids)"
            )
        content_of_id[example.id] = key
        if key not in seen_content:
            seen_content.add(key)
            kept.append(example)
    return kept, len(pool) - len(kept)


def _overlap(
    left: Sequence[Example], right: Sequence[Example], content_key: ContentKey
) -> list[str]:
    """Ids of `left` items that appear in `right` by id or by normalized content (sha256)."""
    right_ids = {e.id for e in right}
    right_content = {_digest(content_key(e)) for e in right}
    return [e.id for e in left if e.id in right_ids or _digest(content_key(e)) in right_content]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
