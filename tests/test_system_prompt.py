"""The system prompt: null, "" and whitespace-only all mean "none", render alike and share one
prompt version; the shipped tasks keep the prompt versions their studies were made with."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tale_opt.errors import UsageError
from tale_opt.tasks.base import Example
from tale_opt.tasks.registry import build_task

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"

# A changed prompt version makes every existing study of that task unusable (a resumed search
# refuses it), so these may only change on purpose, together with the prompt.
SHIPPED_PROMPT_VERSIONS = {
    "arc_challenge": "c1813dcd15c1",
    "arc_easy": "c1813dcd15c1",
    "arc_easy_cloze": "a5876929a0c0",
    "boolean_expressions": "65a9b391d981",
    "boolq": "ec4fd691435b",
    "commonsense_qa": "2f08a8c0a5f9",
    "gsm8k": "1a2f2ecfd166",
    "gsm8k_hard": "1a2f2ecfd166",
    "math500": "0049be5de819",
    "math500_integer": "660402ef5b4d",
    "mmlu": "4c0ee86540dc",
    "winogrande": "95c5714cec34",
}


def composed_tasks(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Every shipped task as the CLI composes it (defaults lists resolved)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    shutil.copytree(CONF / "task", tmp_path / "task")
    (tmp_path / "config.yaml").write_text("defaults:\n  - task: arc_easy\n  - _self_\n")
    names = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        return {
            name: OmegaConf.to_container(compose("config", [f"task={name}"]).task, resolve=True)
            for name in names
        }


def test_shipped_tasks_keep_their_prompt_versions(tmp_path: Path) -> None:
    tasks = composed_tasks(tmp_path)
    versions = {name: build_task(cfg).prompt_version for name, cfg in tasks.items()}
    assert versions == SHIPPED_PROMPT_VERSIONS


def task_cfg(name: str, system: Any) -> dict[str, Any]:
    cfg = yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text())
    cfg["prompt"]["system"] = system
    return cfg


EXAMPLE = Example(
    id="q1",
    fields={"question": "Which is a fruit?", "problem": "1+1", "input": "True and False"},
    choices=("apple", "stone"),
    answer_index=0,
    answer="2",
)


@pytest.mark.parametrize("name", ["arc_easy", "gsm8k"])
@pytest.mark.parametrize("empty", ["", "   ", "\n\t "])
def test_an_empty_or_blank_system_prompt_is_no_system_prompt(name: str, empty: str) -> None:
    none = build_task(task_cfg(name, None))
    blank = build_task(task_cfg(name, empty))
    assert blank.prompt_version == none.prompt_version
    assert blank.prompt.system is None
    assert blank.messages(EXAMPLE) == none.messages(EXAMPLE)
    assert [m["role"] for m in blank.messages(EXAMPLE)] == ["user"]


@pytest.mark.parametrize("name", ["arc_easy", "gsm8k"])
def test_a_real_system_prompt_is_kept_verbatim(name: str) -> None:
    task = build_task(task_cfg(name, "  Be brief.\n"))
    assert task.messages(EXAMPLE)[0] == {"role": "system", "content": "  Be brief.\n"}
    assert task.prompt_version != build_task(task_cfg(name, None)).prompt_version


@pytest.mark.parametrize("name", ["arc_easy", "gsm8k"])
def test_a_system_prompt_that_is_not_text_is_refused(name: str) -> None:
    with pytest.raises(UsageError, match=r"task.prompt.system must be text or null.*\[1, 2\]"):
        build_task(task_cfg(name, [1, 2]))
