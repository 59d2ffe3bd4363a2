"""Answer parsers of generative tasks, from case tables: what each reads out of a model's reply,
what it refuses (None = invalid, never a guess), and when two answers agree."""

from __future__ import annotations

import pytest

from tale_opt.errors import UsageError
from tale_opt.tasks.answer_parsing import parse_choice
from tale_opt.tasks.answers import build_answer_parser, canonical_number
from tale_opt.tasks.math_answers import equivalent, last_boxed, normalize

# The adversarial replies of the task spec, through every parser: (text, mc, gsm8k, math, bool).
ADVERSARIAL = [
    ("a", 0, None, None, None),  # a lone lower-case letter: answer A only for multiple choice
    ("The answer is (C)", 2, None, "C", None),
    ("c", 2, None, None, None),
    ("A or B", None, None, None, None),  # several letters
    ("", None, None, None, None),
    ("#### 1,234", None, "1234", "1234", None),
    ("\\boxed{\\frac{1}{2}}", None, "0.5", "\\frac{1}{2}", None),
    ("true", None, None, None, "True"),
]


@pytest.mark.parametrize(("text", "mc", "gsm8k", "math", "boolean"), ADVERSARIAL)
def test_adversarial_replies_through_every_parser(text, mc, gsm8k, math, boolean) -> None:
    assert parse_choice(text, ("A", "B", "C", "D"), ()) == mc
    assert build_answer_parser("gsm8k").parse(text) == gsm8k
    assert build_answer_parser("math").parse(text) == math
    assert build_answer_parser("boolean").parse(text) == boolean


@pytest.mark.parametrize(
    ("text", "flexible", "strict"),
    [
        ("She has 5 + 3 = 8 apples.\n#### 8", "8", "8"),
        ("#### 1,234", "1234", "1234"),
        ("####1234.00", "1234", "1234"),
        ("#### $18", "18", "18"),
        ("#### -3", "-3", "-3"),
        ("#### 0.50", "0.5", "0.5"),
        # The first '#### N' counts: a model that rambles on after its answer keeps it.
        ("#### 8\n#### 3\n#### 2", "8", "8"),
        ("So the answer is 42.", "42", None),
        ("The answer is: $1,000", "1000", None),
        ("3 + 4 = 7 apples, then 7 * 2 = 14", "14", None),  # flexible: the last number
        ("So she pays \\boxed{18} dollars, not 20.", "18", None),  # a boxed number
        ("\\boxed{\\frac{1}{3}}", "1/3", None),
        ("I cannot solve this.", None, None),
        ("", None, None),
        ("####", None, None),
        ("#### eighteen", None, None),
    ],
)
def test_gsm8k_case_table(text: str, flexible: str | None, strict: str | None) -> None:
    assert build_answer_parser({"name": "gsm8k"}).parse(text) == flexible
    assert build_answer_parser({"name": "gsm8k", "extract": "strict"}).parse(text) == strict


def test_gsm8k_gold_and_numeric_agreement() -> None:
    parser = build_answer_parser("gsm8k")
    assert parser.gold("He pays 2*3=<<2*3=6>>6.\n#### 1,234") == "1234"
    assert parser.gold(72) == "72"
    assert parser.equal("18", "18") and parser.equal("18.0", "18") and parser.equal("0.5", ".5")
    assert not parser.equal("18", "1.8")
    assert [canonical_number(t) for t in ("$1,234.50", "-0", "7.", "x")] == [
        "1234.5", "0", "7", None
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so the result is \\boxed{5}.", "5"),
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}"),
        ("\\boxed{2} at first, but really \\boxed{3}", "3"),  # the last box counts
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
        ("\\fbox{7}", "7"),
        ("\\boxed 7.", "7"),
        ("\\boxed{x = 5}", "5"),
        ("\\boxed{10,\\!080}", "10080"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{864 \\mbox{ inches}^2}", "864"),
        ("\\boxed{\\text{(C)}}", "C"),
        ("\\boxed{\\text{Evelyn}}", "Evelyn"),
        ("The final answer is $24$. I hope it is correct.", "24"),
        ("Reasoning...\n#### 12", "12"),
        ("\\boxed{\\frac{1}{2}", None),  # a truncated box is no answer
        ("It is about a half.", None),
        ("", None),
    ],
)
def test_math_boxed_case_table(text: str, boxed: str | None) -> None:
    assert build_answer_parser("math").parse(text) == boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1 ...\n#### 42", "42"),
        ("#### -7\n", "-7"),
        ("#### 3\nmore text\n#### 4", "4"),  # the last '####' line
        ("#### 1/2", None),
        ("#### 3.5", None),
        ("#### x = 3", None),
        ("\\boxed{42}", None),
        ("", None),
    ],
)
def test_math_integer_format_case_table(text: str, expected: str | None) -> None:
    assert build_answer_parser({"name": "math", "format": "integer"}).parse(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac12", "1/2", True),
        ("-\\frac{3}{4}", "-0.75", True),
        ("\\dfrac{6}{5}", "\\frac65", True),
        ("10080", "10,\\!080", True),
        ("\\$32,\\!348", "32348", True),
        ("11\\sqrt2", "11\\sqrt{2}", True),
        ("\\left[ 2, 5 \\right)", "[2,5)", True),
        ("90^\\circ", "90", True),
        ("0.333", "\\frac{1}{3}", False),
        ("(3,\\frac{\\pi}{2})", "(3,\\frac{\\pi}{3})", False),
        ("2", "-2", False),
    ],
)
def test_math_equivalence(a: str, b: str, same: bool) -> None:
    assert equivalent(a, b) is same
    assert equivalent(b, a) is same


def test_last_boxed_handles_nested_braces() -> None:
    assert last_boxed("\\boxed{\\frac{\\sqrt{2}}{2}} end") == "\\frac{\\sqrt{2}}{2}"
    assert last_boxed("no box") is None
    assert normalize(" \\$5. ") == "5"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("True", "True"),
        ("false", "False"),
        (" False.", "False"),
        ("**True**", "True"),
        ("`False`", "False"),
        ("False. Because not True is False.", "False"),
        ("The answer is True.", "True"),
        ("It evaluates to false", "False"),
        ("not ( True ) and ( True ) is False", "False"),
        ("Result = True", "True"),
        # Invalid: nothing, both values without a verdict, or neither.
        ("", None),
        ("True and False", None),
        ("True or False?", None),
        ("Yes", None),
        ("1", None),
    ],
)
def test_boolean_case_table(text: str, expected: str | None) -> None:
    assert build_answer_parser("boolean").parse(text) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "gsm"}, "Did you mean 'gsm8k'?"),
        ({"name": "math", "format": "latex"}, "task.answer.format must be one of"),
        ({"name": "gsm8k", "format": "boxed"}, "does not take|unknown key 'format'"),
        ({"name": "boolean", "extract": "strict"}, "unknown key 'extract'"),
    ],
)
def test_bad_answer_parser_spec_is_a_usage_error(spec, message) -> None:
    with pytest.raises(UsageError, match=message):
        build_answer_parser(spec)
