"""Generative tasks (GSM8K, GSM8K-Hard, MATH-500, boolean expressions): the shipped YAMLs load
on the packaged data, render golden prompts, read every gold answer, and the GSM8K-Hard premise
filter does what its definition says."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

from tale_opt.errors import UsageError  # noqa: E402
from tale_opt.tasks.base import Example  # noqa: E402
from tale_opt.tasks.filters import build_filter, premises, sentences  # noqa: E402
from tale_opt.tasks.generative import GenerativeTask  # noqa: E402
from tale_opt.tasks.registry import build_task, load_pools, load_splits  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"
GENERATIVE = {
    # name -> (pool size after filtering, n_opt, n_eval, max_new_tokens)
    "gsm8k": (1319, 16, 64, 256),
    "gsm8k_hard": (64, 16, 48, 256),
    "math500": (500, 16, 64, 512),
    "boolean_expressions": (250, 48, 150, 8),
}
GSM8K_SYSTEM = (
    "Solve the math word problem. Work it out step by step, showing each calculation, and "
    "finish with one last line of the form '#### <number>' that holds only the final answer."
)


def task_cfg(name: str, **overrides: Any) -> dict[str, Any]:
    return {**yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text()), **overrides}


@functools.cache
def pool(name: str) -> tuple[GenerativeTask, list[Example]]:
    cfg = task_cfg(name)
    task = build_task(cfg)
    return task, load_pools(cfg, task)["shared"]


# -- shipped configs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATIVE)
def test_shipped_generative_task_loads_its_default_splits(name: str) -> None:
    size, n_opt, n_eval, max_new_tokens = GENERATIVE[name]
    task, examples = pool(name)
    assert isinstance(task, GenerativeTask) and len(examples) == size
    assert task.scoring == {**task.scoring, "mode": "generate", "max_new_tokens": max_new_tokens}
    splits = load_splits(task_cfg(name), seed=0)
    assert (len(splits.optimization), len(splits.evaluation), len(splits.fewshot)) == (
        n_opt,
        n_eval,
        0,
    )
    assert all(ex.answer for ex in splits.optimization)


@pytest.mark.parametrize("name", [*GENERATIVE, "math500_integer"])
def test_generative_task_composes_through_hydra_and_sets_eval_defaults(
    name: str, tmp_path: Path
) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    shutil.copytree(CONF / "task", tmp_path / "task")
    shutil.copytree(CONF / "eval", tmp_path / "eval")
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - task: arc_easy\n  - eval: default\n  - _self_\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={name}", "task.fewshot.k=3"])
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["eval"]["scoring"] == "generate"
    assert container["eval"]["max_new_tokens"] == container["task"]["scoring"]["max_new_tokens"]
    task = build_task(container["task"])
    assert task.name == name and task.fewshot.k == 3


def test_math500_integer_variant_is_the_papers_format() -> None:
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose

    cfg = compose(["task=math500_integer"])
    task = build_task(OmegaConf.to_container(cfg.task, resolve=True))
    assert task.parse("step 1 ...\n#### -7", Example("x", {})) == "-7"
    assert task.parse("so \\boxed{7}", Example("x", {})) is None  # only '#### N' counts
    assert "#### <integer>" in task.prompt.system


# -- golden prompts and gold answers --------------------------------------------------------


def test_gsm8k_golden_zero_shot_prompt_and_gold() -> None:
    task, examples = pool("gsm8k")
    first = examples[0]
    assert (first.id, first.answer) == ("0", "18")
    assert task.messages(first) == [
        {"role": "system", "content": GSM8K_SYSTEM},
        {
            "role": "user",
            "content": "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every "
            "morning and bakes muffins for her friends every day with four. She sells the "
            "remainder at the farmers' market daily for $2 per fresh duck egg. How much in "
            "dollars does she make every day at the farmers' market?",
        },
    ]
    # The demonstration reply drops the calculator annotations (<<16-3-4=9>>).
    assert task.target(first) == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer’s market.\n#### 18"
    )
    assert "answer" not in first.fields  # the gold column never reaches a template


def test_gsm8k_hard_golden_prompt_and_its_premises() -> None:
    task, examples = pool("gsm8k_hard")
    first = examples[0]
    assert (first.id, first.answer) == ("85", "44")
    question = (
        "Gene is sewing a quilt out of old souvenir t-shirts. He has one shirt from each "
        "vacation he has been on. Every shirt is its own quilt block. Each row is made of "
        "blocks from a different year of vacations. He goes on four vacations a year and has "
        "been vacationing since he was 23 years old. He is now 34. How many quilt blocks does "
        "he have in total?"
    )
    assert task.messages(first) == [
        {"role": "system", "content": GSM8K_SYSTEM},
        {"role": "user", "content": question},
    ]
    assert premises(question)[-2:] == [
        "He goes on four vacations a year and has been vacationing since he was 23 years old.",
        "He is now 34.",
    ]
    assert len(premises(question)) == 6


def test_math500_golden_prompt_and_gold_from_the_last_box() -> None:
    task, examples = pool("math500")
    first = examples[0]
    assert first.answer == "(3,\\frac{\\pi}{2})"
    assert task.messages(first)[0]["content"].endswith("inside \\boxed{}.")
    assert task.messages(first)[1]["content"].startswith(
        "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates."
    )


def test_boolean_expressions_golden_prompt() -> None:
    task, examples = pool("boolean_expressions")
    assert task.messages(examples[0]) == [
        {
            "role": "system",
            "content": "Evaluate the Boolean expression. Reply with only True or False.",
        },
        {"role": "user", "content": "not ( True or True ) or False is"},
    ]
    assert (examples[0].answer, task.target(examples[0])) == ("False", "False")


@pytest.mark.parametrize("name", ["gsm8k", "math500", "boolean_expressions"])
def test_every_demonstration_reply_parses_to_its_own_gold(name: str) -> None:
    # A demonstration must show the answer format the parser reads, with the right answer.
    task, examples = pool(name)
    for example in examples:
        parsed = task.parse(task.target(example), example)
        assert task.is_correct(parsed, example), (example.id, parsed, example.answer)


def test_gold_column_without_an_answer_is_a_usage_error(tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"id": 1, "question": "2+2?", "answer": "four"}\n')
    cfg = task_cfg("gsm8k", source={"path": str(data)})
    with pytest.raises(UsageError, match="row 0 .* has no gsm8k answer"):
        load_pools(cfg)


def test_prompt_version_tracks_prompt_parser_and_stops() -> None:
    base = build_task(task_cfg("gsm8k")).prompt_version
    edits = [
        {"prompt": {"system": "Solve it.", "user": "{question}"}},
        {"answer": {"name": "gsm8k", "extract": "strict"}},
        {"scoring": {"mode": "generate", "max_new_tokens": 256, "stop": ["Question:"]}},
        {"row_format": {"id": "doc_id", "answer": "answer"}},
    ]
    versions = {build_task(task_cfg("gsm8k", **edit)).prompt_version for edit in edits}
    assert base not in versions and len(versions) == len(edits)
    # max_new_tokens is the eval group's business (it is in the study fingerprint there).
    same = task_cfg("gsm8k")
    same["scoring"] = {**same["scoring"], "max_new_tokens": 16}
    assert build_task(same).prompt_version == base


def test_generative_task_refuses_letter_scoring_defaults() -> None:
    with pytest.raises(UsageError, match="scoring.mode must be 'generate'"):
        build_task(task_cfg("gsm8k", scoring={"mode": "letters"}))


# -- GSM8K-Hard: the premise definition ------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        # One premise per declarative sentence; the question sentence is not one.
        ("Tom has 3 apples. He buys 2 more. How many apples does he have?", 2),
        # Decimals, prices and initials never split a sentence.
        ("A pen costs $2.50 and a pad costs $.40 each. How much do 3 pens cost?", 1),
        ("It takes 3.5 hours. What is 7 divided by 3.5?", 1),
        # ';' and a comma before a coordinating conjunction split clauses.
        ("Ann reads 5 pages; Bo reads 6. Cy reads 7, and Di reads 8. Who reads most?", 4),
        ("He likes chalk, so he saves it. How long does it last?", 2),
        # A plain "and" inside a clause, or a comma list, does not.
        ("Sam buys apples and pears, plums, figs. How much fruit?", 1),
        # Conditions inside the question sentence are not counted.
        ("If a bag costs $20, how much do 3 bags cost?", 0),
        # An exclamation is a statement; a quoted question is still a question.
        ('Wow! She said "How many?" How many indeed?', 1),
    ],
)
def test_premise_count_on_crafted_questions(question: str, expected: int) -> None:
    assert len(premises(question)) == expected, premises(question)


def test_six_premises_pass_the_filter_and_five_do_not() -> None:
    five = "A is 1. B is 2. C is 3. D is 4. E is 5. What is the sum?"
    six = "A is 1. B is 2. C is 3. D is 4. E is 5, and F is 6. What is the sum?"
    assert (len(premises(five)), len(premises(six))) == (5, 6)
    cfg = task_cfg("gsm8k_hard")
    keep = build_filter(cfg["filter"])
    assert not keep(Example("5", {"question": five})) and keep(Example("6", {"question": six}))


def test_gsm8k_hard_is_the_64_gsm8k_questions_with_more_than_five_premises() -> None:
    _, hard = pool("gsm8k_hard")
    _, everything = pool("gsm8k")
    expected = [e.id for e in everything if len(premises(e.fields["question"])) > 5]
    assert [e.id for e in hard] == expected and len(expected) == 64
    assert all(len(sentences(e.fields["question"])) >= 2 for e in hard)


def test_a_filter_that_keeps_nothing_is_a_usage_error() -> None:
    cfg = task_cfg("gsm8k_hard", filter={"name": "min_premises", "more_than": 50})
    with pytest.raises(UsageError, match="keeps none"):
        load_pools(cfg)
