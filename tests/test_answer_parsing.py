"""Answer parsing: what counts as naming a choice, and what is explicitly invalid (None)."""

from __future__ import annotations

import pytest

from tale_opt.tasks.answer_parsing import parse_choice

LABELS = ("A", "B", "C", "D")
CHOICES = ("a dog", "Paris", "photosynthesis", "Sunlight is the source of energy.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A bare label, however it is wrapped.
        ("B", 1),
        (" B", 1),
        ("B\n", 1),
        ("B.", 1),
        ("(B)", 1),
        ("[B]", 1),
        ("**C**", 2),
        ("`D`", 3),
        ("c", 2),  # a lone lower-case letter that is the whole output
        ("(c)", 2),
        # A label opening a longer answer.
        ("B) Paris", 1),
        ("B. Paris", 1),
        ("C: photosynthesis", 2),
        ("D\n\nBecause sunlight drives photosynthesis.", 3),
        # Answer phrases.
        ("Answer: B", 1),
        ("answer: B", 1),
        ("The answer is (C)", 2),
        ("The correct answer is C.", 2),
        ("The correct option is D", 3),
        ("I think **C** is right.", 2),
        ("The answer is B. Answer: B", 1),  # repeating the same label is fine
        # The output is exactly one choice's text (case-insensitive, trailing period ignored).
        ("paris", 1),
        ("PHOTOSYNTHESIS", 2),
        ("sunlight is the source of energy", 3),
        # Invalid: nothing, or nothing answer-like.
        ("", None),
        ("   ", None),
        ("\n", None),
        ("I am not sure.", None),
        ("The capital of France", None),
        # The article "a" is never answer A, and a capital "A" opening a sentence is not either.
        ("It is a cat", None),
        ("a cat", None),
        ("A cat sat on the mat", None),
        ("I", None),  # a letter outside the label set
        # Hedging between several labels.
        ("A or B", None),
        ("A/B", None),
        ("A, B", None),
        ("(A) or (C)", None),
        ("Answer: A. No wait, the answer is B", None),
        # Labels outside the label set.
        ("E", None),
        ("(E)", None),
        ("The answer is E", None),
        ("e", None),
        ("Z.", None),
    ],
)
def test_parse_choice_case_table(text: str, expected: int | None) -> None:
    assert parse_choice(text, LABELS, CHOICES) == expected


def test_choice_text_equal_to_a_label_prefers_the_label_reading() -> None:
    # An item whose choices are themselves letters: "B" means label B, not the text "B".
    assert parse_choice("B", LABELS, ("B", "C", "D", "A")) == 1


def test_lone_a_is_answer_a_only_when_it_is_the_whole_output() -> None:
    assert parse_choice("a", LABELS, ()) == 0
    assert parse_choice("a dog", LABELS, ()) is None  # no matching choice text here


def test_exact_choice_text_wins_even_when_it_starts_like_a_sentence() -> None:
    assert parse_choice("A dog", LABELS, CHOICES) == 0


def test_labels_follow_the_label_set_in_use() -> None:
    numeric = ("1", "2", "3", "4")
    assert parse_choice("3", numeric, ()) == 2
    assert parse_choice("Answer: 2", numeric, ()) == 1
    assert parse_choice("B", numeric, ()) is None
    assert parse_choice("B", ("A", "B"), ()) == 1
    assert parse_choice("C", ("A", "B"), ()) is None


def test_two_choices_with_equal_text_are_ambiguous() -> None:
    assert parse_choice("yes", ("A", "B"), ("Yes", "yes")) is None
