"""Task-accuracy evaluation: one evaluator, three scoring modes, tokenization once per run."""

from tale_opt.evaluation.evaluator import SCORING_MODES, Evaluator, PreparedSplit
from tale_opt.evaluation.prompts import PromptEncoder
from tale_opt.evaluation.results import EvalResult, Prediction

__all__ = [
    "SCORING_MODES",
    "EvalResult",
    "Evaluator",
    "Prediction",
    "PreparedSplit",
    "PromptEncoder",
]
