"""Tasks: data sources, the generic multiple-choice task, answer parsing and splits.

Build everything from a task config node (a plain dict)::

    task = build_task(cfg)              # validated, reads no data
    splits = load_splits(cfg, seed=0)   # disjoint optimization / evaluation examples
"""

from tale_opt.tasks.base import Example, Message, Splits, Task
from tale_opt.tasks.multiple_choice import MultipleChoiceTask, PromptSpec
from tale_opt.tasks.registry import build_task, load_pools, load_splits

__all__ = [
    "Example",
    "Message",
    "MultipleChoiceTask",
    "PromptSpec",
    "Splits",
    "Task",
    "build_task",
    "load_pools",
    "load_splits",
]
