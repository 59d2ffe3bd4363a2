"""Few-shot prompting: demonstrations come from a third part disjoint from both splits, are the
same for every example of a run (seeded), never move the splits, and render as chat turns or
inline; k and the layout enter the prompt version."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

from tale_opt.errors import UsageError  # noqa: E402
from tale_opt.evaluation.prompts import render_plain  # noqa: E402
from tale_opt.tasks.base import Example  # noqa: E402
from tale_opt.tasks.registry import build_task, load_splits  # noqa: E402
from tale_opt.tasks.splits import build_splits  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"
# The paper's k: 5, and 8 for math.
PAPER_K = {
    "arc_easy": 5,
    "arc_challenge": 5,
    "boolq": 5,
    "commonsense_qa": 5,
    "winogrande": 5,
    "mmlu": 5,
    "boolean_expressions": 5,
    "gsm8k": 8,
    "gsm8k_hard": 8,
    "math500": 8,
}


def task_cfg(name: str, k: int = 0, **fewshot: Any) -> dict[str, Any]:
    cfg = yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text())
    cfg["fewshot"] = {**cfg.get("fewshot", {}), "k": k, **fewshot}
    return cfg


def keys(task: Any, examples: Any) -> tuple[set[str], set[str]]:
    return {e.id for e in examples}, {task.content_key(e) for e in examples}


def pool(n: int, prefix: str = "x") -> list[Example]:
    return [
        Example(f"{prefix}{i}", {"question": f"{prefix} q {i}"}, ("a", "b"), 0) for i in range(n)
    ]


# -- shipped tasks ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_K)
def test_demos_are_disjoint_from_both_splits_and_shared_by_every_example(name: str) -> None:
    k = PAPER_K[name]
    cfg = task_cfg(name, k)
    task = build_task(cfg)
    splits = load_splits(cfg, seed=0)
    assert len(splits.fewshot) == k
    demo_ids, demo_content = keys(task, splits.fewshot)
    for part in (splits.optimization, splits.evaluation):
        part_ids, part_content = keys(task, part)
        assert not demo_ids & part_ids and not demo_content & part_content
        assert all(e.demos == tuple(splits.fewshot) for e in part)
    # Every demonstration can be shown: it has a gold reply.
    assert all(task.target(d) for d in splits.fewshot)
    assert len(task.messages(splits.evaluation[0])) == 2 + 2 * k  # system, k pairs, question


@pytest.mark.parametrize("name", ["gsm8k", "arc_easy", "mmlu", "boolean_expressions"])
def test_turning_fewshot_on_leaves_both_splits_unchanged(name: str) -> None:
    zero = load_splits(task_cfg(name, 0), seed=3)
    few = load_splits(task_cfg(name, PAPER_K[name]), seed=3)
    for a, b in ((zero.optimization, few.optimization), (zero.evaluation, few.evaluation)):
        assert [e.id for e in a] == [e.id for e in b]
    assert zero.fewshot == () and zero.optimization[0].demos == ()
    assert zero.fingerprint != few.fingerprint  # the demos are part of the run's identity


def test_demos_are_seeded() -> None:
    first = [e.id for e in load_splits(task_cfg("gsm8k", 8), seed=0).fewshot]
    again = [e.id for e in load_splits(task_cfg("gsm8k", 8), seed=0).fewshot]
    other = [e.id for e in load_splits(task_cfg("gsm8k", 8), seed=1).fewshot]
    assert first == again and first != other
    # Growing k keeps the first demonstrations (they are a prefix of one seeded order).
    five = [e.id for e in load_splits(task_cfg("gsm8k", 5), seed=0).fewshot]
    assert five == first[:5]


def test_mmlu_demos_come_from_the_dev_split() -> None:
    splits = load_splits(task_cfg("mmlu", 5), seed=0)
    assert all(e.meta["source"].endswith("/dev") for e in splits.fewshot)
    assert splits.info["fewshot"]["source"] == "dedicated"


def test_null_eval_size_leaves_room_for_the_demos() -> None:
    zero = load_splits(task_cfg("gsm8k_hard", 0), seed=0)
    eight = load_splits(task_cfg("gsm8k_hard", 8), seed=0)
    assert (len(zero.evaluation), len(eight.evaluation), len(eight.fewshot)) == (48, 40, 8)


# -- rendering and prompt version -------------------------------------------------------------


def test_chat_style_renders_each_demo_as_a_user_assistant_pair() -> None:
    cfg = task_cfg("arc_easy", 2)
    messages = build_task(cfg).messages(load_splits(cfg, seed=0).evaluation[0])
    assert [m["role"] for m in messages] == [
        "system", "user", "assistant", "user", "assistant", "user"
    ]  # fmt: skip
    assert messages[1]["content"].startswith("Planting certain crop plants in a field")
    assert messages[1]["content"].endswith("\nD. atmospheric carbon dioxide increases")
    assert (messages[2]["content"], messages[4]["content"]) == ("B", "B")
    assert messages[5]["content"].startswith("A bird eats a brightly-colored insect")


def test_inline_style_writes_the_demos_into_the_user_turn() -> None:
    cfg = task_cfg("gsm8k", 2, style="inline")
    messages = build_task(cfg).messages(load_splits(cfg, seed=0).optimization[0])
    assert [m["role"] for m in messages] == ["system", "user"]
    blocks = messages[1]["content"].split("\n\n")
    assert len(blocks) == 3  # demo, demo, question
    assert blocks[0].startswith("Naruto can lift a mountain ten times higher")
    assert "how high can Naruto lift a mountain, in feet?\nAnswer: If Pompei can" in blocks[0]
    assert blocks[0].endswith("then Naruto can lift a mountain 10*4=40 feet.\n#### 40")
    assert blocks[1].startswith("Wendy wants to place 20 more than double")
    assert blocks[2].startswith("How much does it cost you for lunch today at Subway")


def test_plain_rendering_of_demos_reads_like_the_question() -> None:
    cfg = task_cfg("boolean_expressions", 1)
    task = build_task(cfg)
    splits = load_splits(cfg, seed=0)
    demo = splits.fewshot[0]
    text = render_plain(task.messages(splits.evaluation[0]))
    assert f"{demo.fields['expression']} is\nAnswer: {demo.answer}\n\n" in text
    assert text.endswith(f"{splits.evaluation[0].fields['expression']} is\nAnswer:")


def test_prompt_version_tracks_k_and_style_but_zero_shot_keeps_its_version() -> None:
    plain = yaml.safe_load((CONF / "task" / "arc_easy.yaml").read_text())
    plain.pop("fewshot")
    versions = {
        "none": build_task(plain).prompt_version,
        "k0": build_task(task_cfg("arc_easy", 0)).prompt_version,
        "k0-inline": build_task(task_cfg("arc_easy", 0, style="inline")).prompt_version,
        "k5": build_task(task_cfg("arc_easy", 5)).prompt_version,
        "k5-inline": build_task(task_cfg("arc_easy", 5, style="inline")).prompt_version,
        "k8": build_task(task_cfg("arc_easy", 8)).prompt_version,
    }
    assert versions["none"] == versions["k0"] == versions["k0-inline"]
    assert len({versions[k] for k in ("k0", "k5", "k5-inline", "k8")}) == 4


# -- build_splits on synthetic pools ------------------------------------------------------------


def test_carved_demos_are_a_third_disjoint_part() -> None:
    splits = build_splits(pool(20), None, n_opt=5, n_eval=None, seed=0, n_fewshot=3)
    parts = [splits.optimization, splits.evaluation, splits.fewshot]
    assert [len(p) for p in parts] == [5, 12, 3]
    assert len({e.id for p in parts for e in p}) == 20


def test_dedicated_demo_pool_skips_items_of_either_split() -> None:
    opt, evaluation = pool(10, "o"), pool(10, "e")
    # The few-shot source repeats every optimization and evaluation item (under new ids) and
    # holds two items of its own: only those two may become demonstrations.
    copies = [Example(f"c{e.id}", e.fields, e.choices, 0) for e in [*opt, *evaluation]]
    fresh = pool(2, "f")
    splits = build_splits(
        opt, evaluation, n_opt=None, n_eval=None, seed=0, n_fewshot=2,
        fewshot_pool=[*copies, *fresh],
    )  # fmt: skip
    assert sorted(e.id for e in splits.fewshot) == ["f0", "f1"]
    with pytest.raises(UsageError, match="only 2 items not used by either split"):
        build_splits(
            opt, evaluation, n_opt=None, n_eval=None, seed=0, n_fewshot=3,
            fewshot_pool=[*copies, *fresh],
        )  # fmt: skip


def test_sizes_that_leave_no_room_for_the_demos_name_the_fix() -> None:
    with pytest.raises(UsageError, match="after the 4 few-shot demonstrations"):
        build_splits(pool(10), None, n_opt=3, n_eval=5, seed=0, n_fewshot=4)
    with pytest.raises(UsageError, match="held for few-shot demonstrations"):
        build_splits(pool(10), pool(5, "e"), n_opt=9, n_eval=2, seed=0, n_fewshot=2)
