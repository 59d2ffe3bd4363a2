"""Evaluation: task accuracy (one evaluator, three scoring modes, tokenization once per run) and
the perplexity probe."""

from tale_opt.evaluation.evaluator import SCORING_MODES, Evaluator, PreparedSplit
from tale_opt.evaluation.perplexity import (
    PerplexityResult,
    PreparedText,
    evaluate_perplexity,
    prepare_text,
    task_texts,
)
from tale_opt.evaluation.prompts import PromptEncoder
from tale_opt.evaluation.results import EvalResult, Prediction

__all__ = [
    "SCORING_MODES",
    "EvalResult",
    "Evaluator",
    "PerplexityResult",
    "Prediction",
    "PreparedSplit",
    "PreparedText",
    "PromptEncoder",
    "evaluate_perplexity",
    "prepare_text",
    "task_texts",
]
