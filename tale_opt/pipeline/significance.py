"""What a search's accuracies are worth: chance level, answer profile and paired tests.

The statistics themselves are in `tale_opt.stats`; this module applies them to the objects of
a search: per-example outcomes of evaluations (`EvalResult`), the observations of accepted
rounds (which carry their optimization-split outcomes as a bit record, see `correct_bits`),
and the task that says how many answers each example allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tale_opt import stats
from tale_opt.outcomes import OUTCOMES_KEY, decode_outcomes, outcome_record
from tale_opt.stats import accuracy_interval
from tale_opt.types import Observation

if TYPE_CHECKING:  # importing the evaluation package would load torch
    from tale_opt.evaluation.results import EvalResult

# Observation.extras key: the candidate's per-example outcomes on the optimization split.
CORRECT = OUTCOMES_KEY


def correct_bits(result: EvalResult) -> dict[str, Any]:
    """Per-example outcomes of a complete evaluation as a compact record (`outcome_record`,
    bit i = example i of the split): small enough to travel with every trial, so any process
    can pair two configurations."""
    correct = {i: p.correct for i, p in enumerate(result.predictions)}
    return outcome_record(result.n_examples, correct)


def outcomes(obs: Observation) -> list[bool] | None:
    """The per-example outcomes a complete observation carries, in split order; None when it
    has none (stopped early, a probe other than accuracy, or recorded before outcomes were
    kept)."""
    seen = decode_outcomes(obs.extras.get(CORRECT)) if obs.complete else None
    if not seen or sorted(seen) != list(range(len(seen))):
        return None
    return list(seen.values())


def chance_level(task: Any, examples: Sequence[Any]) -> float | None:
    """Accuracy of uniform guessing over `examples` (None for free-form answers)."""
    counts = [int(task.n_options(ex)) for ex in examples]
    return stats.chance_accuracy(counts)


def task_fewshot(task: Any) -> int:
    """How many demonstrations the task shows before each question (0: zero-shot)."""
    spec = getattr(task, "fewshot", None)
    return int(getattr(spec, "k", 0) or 0)


def answer_profile(task: Any, result: EvalResult, examples: Sequence[Any]) -> dict[str, Any]:
    """The most frequent answer of an evaluation and its share: a model that answers "A" to
    most questions scores the share of "A" golds, whatever it knows. Labels are shown as the
    prompt shows them (A, B, … for multiple choice); an unparseable output counts as
    ``invalid``."""
    by_id = {ex.id: ex for ex in examples}
    answers = []
    for p in result.predictions:
        ex = by_id.get(p.example_id)
        labels = task.labels(ex) if ex is not None else ()
        if p.prediction is None:
            answers.append("invalid")
        elif labels and isinstance(p.prediction, int) and 0 <= p.prediction < len(labels):
            answers.append(labels[p.prediction])
        else:
            answers.append(str(p.prediction))
    top, share = stats.majority_share(answers)
    return {"top_answer": top, "top_answer_share": share}


def heldout_record(
    task: Any,
    result: EvalResult,
    examples: Sequence[Any],
    baseline: EvalResult | None,
) -> dict[str, Any]:
    """summary.json's `heldout` entry of one pick: accuracy with its interval, the answer
    profile, and (unless it is the Baseline) the paired test against the Baseline."""
    record: dict[str, Any] = {**result.metrics(), **answer_profile(task, result, examples)}
    if baseline is not None:
        test = stats.paired_comparison(
            [p.correct for p in result.predictions], [p.correct for p in baseline.predictions]
        )
        record["vs_baseline"] = test.as_dict()
    return record


def round_tests(trajectory: Sequence[Observation]) -> list[dict[str, Any]]:
    """The exact McNemar test of every accepted round against the baseline on the optimization
    split, in round order; a round without outcomes gets ``None`` fields."""
    if not trajectory:
        return []
    reference = outcomes(trajectory[0])
    tests = []
    for round_no, obs in enumerate(trajectory[1:], start=1):
        mine = outcomes(obs)
        entry: dict[str, Any] = {"round": round_no, "drop_layers": list(obs.drop.layers)}
        if reference is None or mine is None or len(mine) != len(reference):
            entry["vs_baseline"] = None
        else:
            entry["vs_baseline"] = stats.paired_comparison(mine, reference).as_dict()
        tests.append(entry)
    return tests


def round_sentence(test: Mapping[str, Any]) -> str:
    """``round 1: drop {2} +8 examples over baseline (10 vs 2 discordant), p = 0.039, better``."""
    head = f"round {test['round']}: drop {{{','.join(str(i) for i in test['drop_layers'])}}}"
    vs = test.get("vs_baseline")
    if not vs:
        return f"{head}: no per-example outcomes recorded (a study from an older version)"
    comparison = stats.PairedComparison(
        n=vs["n"], only_pick=vs["only_pick"], only_reference=vs["only_baseline"],
        both=vs["both"], neither=vs["neither"], p_value=vs["p_value"], alpha=vs["alpha"],
    )  # fmt: skip
    return f"{head} {comparison.sentence()}"


def noise_warnings(
    baselines: Sequence[tuple[str, Mapping[str, Any] | None, float | None]],
    scoring: str | None,
    fewshot: int = 0,
) -> list[str]:
    """Warnings for each split (name, Baseline metrics, chance level) on which the baseline is
    not clearly above chance: its 95% interval contains chance level or lies below it.

    A search whose baseline cannot be told apart from guessing ranks noise: its picks differ
    from the full model by the luck of the optimization split, and the held-out split will not
    confirm them.
    """
    warnings = []
    for split, metrics, chance in baselines:
        interval = accuracy_interval(metrics or {})
        if chance is None or interval is None or interval[0] > chance:
            continue
        accuracy = (metrics or {}).get("accuracy")
        where = "contains" if interval[1] >= chance else "lies below"
        tries = ["eval.scoring=loglik"] if scoring != "loglik" else []
        tries += ["few-shot prompts (task.fewshot.k=5)"] if not fewshot else []
        tries += ["another task or model", "a larger n_opt"]
        warnings.append(
            f"the baseline's {split} accuracy {stats.format_accuracy(accuracy, interval, '%')} "
            f"{where} chance level ({100 * chance:.1f}%): the model cannot be told apart from "
            "guessing with this task, prompt and scoring, so the search ranks noise; try "
            f"{', '.join(tries[:-1])} or {tries[-1]}"
        )
    return warnings


def heldout_warnings(heldout: Mapping[str, Mapping[str, Any]], n_opt: int) -> list[str]:
    """A warning naming the picks that are significantly worse than the Baseline on the
    held-out split: the layers the search chose hurt on questions it did not see."""
    names = {"best": "Best", "bsba": "BSBA", "ae_hm": "AE-HM", "final": "Final"}
    worse = [
        label
        for key, label in names.items()
        if ((heldout.get(key) or {}).get("vs_baseline") or {}).get("verdict") == stats.WORSE
    ]
    if not worse:
        return []
    named = worse[0] if len(worse) == 1 else f"{', '.join(worse[:-1])} and {worse[-1]}"
    return [
        f"{named} {'is' if len(worse) == 1 else 'are'} significantly worse than "
        "Baseline on the held-out split: the layers chosen on "
        f"{n_opt} optimization examples do not carry over; raise n_opt (the paper uses "
        "500 or more) or keep the full model"
    ]


__all__ = [
    "CORRECT",
    "answer_profile",
    "chance_level",
    "correct_bits",
    "heldout_record",
    "heldout_warnings",
    "noise_warnings",
    "outcomes",
    "round_sentence",
    "round_tests",
    "task_fewshot",
]
