"""What a search's numbers are worth: paired tests of accepted rounds, the answer profile, and
the warning that a baseline at chance level makes the search rank noise."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from tale_opt.evaluation.results import EvalResult, Prediction  # noqa: E402
from tale_opt.pipeline import significance as sig  # noqa: E402
from tale_opt.tasks.base import Example  # noqa: E402
from tale_opt.types import Candidate, DropSet, Observation, Status  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "tale_opt" / "conf"


def accepted(layers: tuple[int, ...], bits: str | None, status=Status.COMPLETE) -> Observation:
    extras = {} if bits is None else {sig.CORRECT: bits}
    score = bits.count("1") / len(bits) if bits else 0.0
    return Observation(Candidate(DropSet(layers)), score, {}, extras, status)


def test_round_tests_pair_each_accepted_round_with_the_baseline() -> None:
    baseline = accepted((), "1100110000")
    trajectory = [baseline, accepted((2,), "1111110000"), accepted((2, 7), "0000000000")]
    tests = sig.round_tests(trajectory)
    assert [t["round"] for t in tests] == [1, 2]
    assert tests[0]["drop_layers"] == [2]
    first, second = tests[0]["vs_baseline"], tests[1]["vs_baseline"]
    # round 1 gains examples 2 and 3 and loses none: 2 vs 0 discordant, p = 2 / 2**2 = 0.5
    assert (first["only_pick"], first["only_baseline"], first["both"]) == (2, 0, 4)
    assert first["p_value"] == 0.5 and first["verdict"] == "no detectable difference"
    # round 2 loses all 4 baseline successes: p = 2 / 2**4
    assert (second["only_pick"], second["only_baseline"]) == (0, 4)
    assert second["p_value"] == pytest.approx(0.125)
    assert sig.round_sentence(tests[0]) == (
        "round 1: drop {2} +2 examples over baseline (2 vs 0 discordant), p = 0.500, "
        "not significant"
    )


def test_round_tests_mark_rounds_without_outcomes() -> None:
    # A study recorded before outcomes travelled with trials: no test, said so.
    trajectory = [accepted((), "1010"), accepted((1,), None)]
    (test,) = sig.round_tests(trajectory)
    assert test["vs_baseline"] is None
    assert "no per-example outcomes" in sig.round_sentence(test)
    # Outcomes of a candidate stopped early are incomplete, never paired.
    assert sig.outcomes(accepted((3,), "10", Status.PRUNED)) is None
    assert sig.round_tests([]) == []


def test_significant_round_reads_better() -> None:
    baseline = accepted((), "0" * 8 + "1" * 8)
    better = accepted((4,), "1" * 16)
    (test,) = sig.round_tests([baseline, better])
    assert test["vs_baseline"]["verdict"] == "better"
    assert sig.round_sentence(test).endswith("+8 examples over baseline (8 vs 0 discordant), "
                                              "p = 0.008, better")  # fmt: skip


def counts(correct: int, n: int) -> dict[str, float]:
    return {"accuracy": correct / n, "n_correct": float(correct), "n_examples": float(n)}


def test_chance_warning_fires_on_the_old_letters_default() -> None:
    # SmolLM2 with letters on ARC-Easy (the old default run): 10 of 48 optimization examples
    # (20.8%) and 34 of 200 held-out (17.0%); four options, chance 25%.
    warnings = sig.noise_warnings(
        [("optimization", counts(10, 48), 0.25), ("held-out", counts(34, 200), 0.25)],
        scoring="letters",
    )
    assert len(warnings) == 2
    assert warnings[0].startswith(
        "the baseline's optimization accuracy 20.8% [11.7, 34.3] contains chance level (25.0%)"
    )
    assert "lies below chance level" in warnings[1]
    assert all("eval.scoring=loglik" in w and "ranks noise" in w for w in warnings)
    assert all("task.fewshot.k=5" in w for w in warnings)
    # Suggestions already in use are not made again.
    (again,) = sig.noise_warnings([("held-out", counts(34, 200), 0.25)], "loglik", fewshot=5)
    assert "eval.scoring" not in again and "fewshot" not in again
    assert again.endswith("try another task or model or a larger n_opt")


def test_no_chance_warning_when_the_baseline_is_clearly_above_chance() -> None:
    # loglik on the same split: 24 of 48 (50.0% [36.4, 63.6]) is clearly above 25%.
    assert sig.noise_warnings([("optimization", counts(24, 48), 0.25)], "loglik") == []
    # Free-form answers (math) have no chance level to compare with.
    assert sig.noise_warnings([("held-out", counts(0, 50), None)], "generate") == []
    # No counts (a perplexity probe's baseline): nothing to test.
    assert sig.noise_warnings([("optimization", {"score": -30.0}, 0.25)], "letters") == []


def test_heldout_warning_names_the_picks_significantly_worse_than_baseline() -> None:
    worse = {"vs_baseline": {"verdict": "worse"}}
    same = {"vs_baseline": {"verdict": "no detectable difference"}}
    heldout = {"baseline": {}, "best": same, "bsba": worse, "ae_hm": same, "final": worse}
    (warning,) = sig.heldout_warnings(heldout, n_opt=48)
    assert warning.startswith("BSBA and Final are significantly worse than Baseline")
    assert "48 optimization examples" in warning
    assert sig.heldout_warnings({"best": same, "final": same}, n_opt=48) == []


class LetterTask:
    def labels(self, example: Example) -> tuple[str, ...]:
        return tuple("ABCD"[: len(example.choices)])

    def n_options(self, example: Example) -> int:
        return len(example.choices)


def result_of(predictions: list[int | None], golds: list[int]) -> tuple[EvalResult, list]:
    examples = [
        Example(id=f"q{i}", fields={}, choices=("w", "x", "y", "z"), answer_index=g)
        for i, g in enumerate(golds)
    ]
    preds = [
        Prediction(f"q{i}", p, g, p == g, "")
        for i, (p, g) in enumerate(zip(predictions, golds, strict=True))
    ]
    n_correct = sum(p.correct for p in preds)
    n_invalid = sum(p.prediction is None for p in preds)
    res = EvalResult("letters", n_correct / len(preds), n_invalid / len(preds), len(preds),
                     n_correct, n_invalid, preds, 0.1)  # fmt: skip
    return res, examples


def test_answer_profile_names_the_most_frequent_label_and_its_share() -> None:
    res, examples = result_of([1, 1, 1, 0, None], [1, 0, 2, 0, 3])
    assert sig.answer_profile(LetterTask(), res, examples) == {
        "top_answer": "B",
        "top_answer_share": 0.6,
    }
    assert sig.chance_level(LetterTask(), examples) == 0.25


def test_heldout_record_pairs_a_pick_with_the_baseline_on_the_same_examples() -> None:
    base, examples = result_of([0, 0, 0, 0], [0, 1, 2, 3])
    pick, _ = result_of([0, 1, 2, 0], [0, 1, 2, 3])
    record = sig.heldout_record(LetterTask(), pick, examples, base)
    assert record["accuracy"] == 0.75
    assert record["accuracy_ci_low"] < 0.75 < record["accuracy_ci_high"]
    assert record["vs_baseline"]["only_pick"] == 2 and record["vs_baseline"]["only_baseline"] == 0
    assert "vs_baseline" not in sig.heldout_record(LetterTask(), base, examples, None)


@pytest.mark.real_model
@pytest.mark.slow
def test_chance_warning_on_smollm2_letters_but_not_cloze(smollm2) -> None:
    """The old default (ARC-Easy, letters) is at chance on the real model; the new default
    (the same questions as a cloze task scored by log-likelihood) is clearly above it."""
    from tale_opt.evaluation.evaluator import Evaluator
    from tale_opt.tasks.registry import build_task, load_splits

    model, tokenizer = smollm2
    fired = {}
    for name, scoring, chat_template in (
        ("arc_easy", "letters", True),
        ("arc_easy_cloze", "loglik", False),
    ):
        cfg = yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text())
        if name == "arc_easy_cloze":  # the file extends arc_easy through Hydra's defaults
            base = yaml.safe_load((CONF / "task" / "arc_easy.yaml").read_text())
            cfg = {**base, **{k: v for k, v in cfg.items() if k != "defaults"},
                   "prompt": {**base["prompt"], **cfg["prompt"]}}  # fmt: skip
        task = build_task(cfg)
        examples = load_splits(cfg, seed=0).optimization  # the default 48
        assert len(examples) == 48
        chance = sig.chance_level(task, examples)
        assert chance == pytest.approx(0.25, abs=0.01)
        evaluator = Evaluator(
            model, tokenizer, task, scoring=scoring, batch_size=16, chat_template=chat_template
        )
        res = evaluator.evaluate(evaluator.prepare(examples))
        fired[name] = sig.noise_warnings([("optimization", res.metrics(), chance)], scoring)
    assert len(fired["arc_easy"]) == 1 and "chance level" in fired["arc_easy"][0]
    assert fired["arc_easy_cloze"] == []
