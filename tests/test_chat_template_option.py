"""`eval.chat_template=false` gives plain-text prompts for any task and every reader of the
task's text, and the log says once how prompts are rendered, including a system prompt that a
chat template adds on its own (SmolLM2's)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from tale_opt.evaluation.evaluator import Evaluator
from tale_opt.evaluation.probes import load_probe_texts
from tale_opt.pipeline.candidates import study_config
from tale_opt.tasks.base import Example
from tale_opt.tasks.registry import build_task
from tests.test_evaluator import CHAT_TEMPLATE, make_tokenizer

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def compose(overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from tale_opt.commands.config import compose as compose_config

    return OmegaConf.to_container(compose_config(overrides), resolve=True)


@pytest.mark.parametrize("name", TASKS)
def test_the_command_line_turns_the_chat_template_off_for_any_task(name) -> None:
    cfg = compose([f"task={name}", "eval.chat_template=false"])
    assert cfg["eval"]["chat_template"] is False
    # ... and it reaches the evaluator's options and the study's fingerprint.
    assert study_config(cfg)["eval"]["chat_template"] is False


@pytest.fixture(scope="module")
def smollm2_tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    """A tiny random model with SmolLM2's tokenizer and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def arc_easy_without_system_prompt() -> Any:
    cfg = yaml.safe_load((CONF / "task" / "arc_easy.yaml").read_text())
    cfg["prompt"]["system"] = None
    return build_task(cfg)


QUESTIONS = [
    Example("q1", {"question": "Which is a fruit?"}, ("apple", "stone"), 0),
    Example("q2", {"question": "Which one is cold?"}, ("ice", "fire", "sun"), 0),
]


def prompt_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("prompts:")]


def test_smollm2s_own_system_prompt_is_logged_once_and_gone_without_the_template(
    smollm2_tiny, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = smollm2_tiny
    task = arc_easy_without_system_prompt()
    with caplog.at_level(logging.INFO, logger="tale_opt"):
        evaluator = Evaluator(model, tokenizer, task, scoring="letters")
        prepared = evaluator.prepare(QUESTIONS)
        evaluator.prepare(QUESTIONS[1:])  # a second split: said once is enough
    [line] = prompt_log(caplog)
    assert "chat template" in line and SMOLLM_DEFAULT_SYSTEM in line
    assert SMOLLM_DEFAULT_SYSTEM in tokenizer.decode(prepared.prompt_ids[0])

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tale_opt"):
        plain = Evaluator(model, tokenizer, task, scoring="letters", chat_template=False)
        text = tokenizer.decode(plain.prepare(QUESTIONS).prompt_ids[0])
    [line] = prompt_log(caplog)
    assert "plain text" in line and "SmolLM" not in line
    assert text == "Which is a fruit?\nA. apple\nB. stone\nAnswer:"


def test_the_log_shows_the_tasks_own_system_prompt_when_it_has_one(
    smollm2_tiny, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = smollm2_tiny
    task = build_task(yaml.safe_load((CONF / "task" / "arc_easy.yaml").read_text()))
    with caplog.at_level(logging.INFO, logger="tale_opt"):
        Evaluator(model, tokenizer, task, scoring="letters").prepare(QUESTIONS)
    [line] = prompt_log(caplog)
    assert task.prompt.system in line and "SmolLM" not in line


@pytest.mark.parametrize("chat_template", [True, False])
def test_probe_text_from_the_task_is_rendered_like_its_prompts(chat_template: bool) -> None:
    tokenizer = make_tokenizer(CHAT_TEMPLATE)
    texts, add_special = load_probe_texts(
        {"source": "task", "limit": 2}, tokenizer=tokenizer,
        task=arc_easy_without_system_prompt(), examples=QUESTIONS, chat_template=chat_template,
    )  # fmt: skip
    assert len(texts) == 2
    assert ("<|user|>" in texts[0]) is chat_template
    # Plain text gets its BOS from the tokenizer; templated text already has it.
    assert add_special is not chat_template
    if not chat_template:
        assert texts[0].endswith("\nAnswer: A")
