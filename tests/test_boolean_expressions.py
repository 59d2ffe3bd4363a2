"""Boolean expressions: the parser honours not > and > or and rejects malformed input; the
generator is seeded, distinct, balanced and BBH-shaped; and nothing calls Python's eval."""

from __future__ import annotations

import inspect
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tale_opt.errors import UsageError
from tale_opt.tasks import boolean_expressions
from tale_opt.tasks.boolean_expressions import evaluate, generate, generate_rows, tokenize


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("True", True),
        ("not True", False),
        ("not not not False", True),
        ("not ( True ) and ( True )", False),
        # and binds tighter than or: True or (False and False).
        ("True or False and False", True),
        ("( True or False ) and False", False),
        # not binds tighter than and: (not False) and False.
        ("not False and False", False),
        ("not ( False and False )", True),
        ("False or not ( True ) and False", False),
        ("not True or ( False and True )", False),
        ("True and False and not True and True", False),
        ("not not ( not ( False ) )", True),
        ("(True)and(not False)", True),  # parentheses need no spaces
    ],
)
def test_evaluate_follows_python_precedence(expression: str, value: bool) -> None:
    assert evaluate(expression) is value


@pytest.mark.parametrize(
    "expression",
    ["", "True and", "( True", "True )", "not", "True False", "and True", "true", "1 or 0",
     "True or ( )", "__import__('os')"],
)  # fmt: skip
def test_malformed_expressions_raise(expression: str) -> None:
    with pytest.raises(ValueError):
        evaluate(expression)


def _oracle(expression: str) -> bool:
    """An independent evaluator: reduce innermost parentheses, then a flat or-of-ands."""
    text = " ".join(tokenize(expression))
    inner = re.compile(r"\( ([^()]*) \)")
    while "(" in text:
        text = inner.sub(lambda m: str(_flat(m.group(1).split())), text)
    return _flat(text.split())


def _flat(tokens: list[str]) -> bool:
    groups: list[list[bool]] = [[]]
    negate = False
    for token in tokens:
        if token == "or":
            groups.append([])
        elif token == "not":
            negate = not negate
        elif token in ("True", "False"):
            groups[-1].append((token == "True") != negate)
            negate = False
    return any(all(group) for group in groups)


def _expressions(depth: int = 3) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(["True", "False"])
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            inner.map(lambda e: f"not {e}"),
            inner.map(lambda e: f"( {e} )"),
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(" ".join),
        ),
        max_leaves=8,
    )


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_evaluate_agrees_with_an_independent_evaluator(expression: str) -> None:
    assert evaluate(expression) is _oracle(expression)


def test_generated_items_are_seeded_distinct_balanced_and_bbh_shaped() -> None:
    items = generate(250, seed=0, min_tokens=7, max_tokens=8)
    assert items == generate(250, seed=0, min_tokens=7, max_tokens=8)
    assert items != generate(250, seed=1, min_tokens=7, max_tokens=8)
    texts = [text for text, _ in items]
    assert len(set(texts)) == 250
    assert sum(value for _, value in items) == 125
    assert all(7 <= len(text.split()) <= 8 for text in texts)
    assert all(value is _oracle(text) for text, value in items)
    assert set(" ".join(texts).split()) == {"True", "False", "not", "and", "or", "(", ")"}


def test_rows_carry_content_ids_and_text_answers() -> None:
    rows = generate_rows({"size": 10, "seed": 3})
    assert [set(row) for row in rows] == [{"id", "expression", "answer"}] * 10
    assert all(row["id"].startswith("sha256:") for row in rows)
    assert {row["answer"] for row in rows} == {"True", "False"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 0}, "size must be an integer >= 1"),
        ({"min_tokens": 9, "max_tokens": 8}, "min_tokens <= max_tokens"),
        ({"size": 500, "min_tokens": 1, "max_tokens": 2}, "could not generate 500 distinct"),
        ({"sise": 3}, "Did you mean 'size'?"),
    ],
)
def test_bad_generator_options_are_usage_errors(options, message) -> None:
    with pytest.raises(UsageError, match=message):
        generate_rows(options)


def test_the_module_never_calls_eval() -> None:
    source = inspect.getsource(boolean_expressions)
    assert not re.search(r"(?<![\w.])(eval|exec|compile)\(", source)
