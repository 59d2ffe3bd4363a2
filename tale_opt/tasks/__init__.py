"""Tasks: data sources, the generic multiple-choice and generative tasks, answer parsing, splits.

Build everything from a task config node (a plain dict)::

    task = build_task(cfg)              # validated, reads no data
    splits = load_splits(cfg, seed=0)   # disjoint optimization / evaluation examples (+ demos)
"""

from tale_opt.tasks.base import Example, Message, Splits, Task
from tale_opt.tasks.fewshot import FewShotSpec
from tale_opt.tasks.generative import GenerativePrompt, GenerativeTask
from tale_opt.tasks.multiple_choice import MultipleChoiceTask, PromptSpec
from tale_opt.tasks.registry import build_task, load_pools, load_splits

__all__ = [
    "Example",
    "FewShotSpec",
    "GenerativePrompt",
    "GenerativeTask",
    "Message",
    "MultipleChoiceTask",
    "PromptSpec",
    "Splits",
    "Task",
    "build_task",
    "load_pools",
    "load_splits",
]
