"""BIG-Bench(-Hard) boolean_expressions: items generated from the grammar, scored by a parser.

No registry ships the items, so they are generated: expressions over ``True``/``False`` with
``not``, ``and``, ``or`` and parentheses, written as BBH writes them (tokens separated by
spaces, e.g. ``not ( True ) and ( True )``), of 7-8 tokens by default as BBH's items are.
Generation is seeded and deterministic; every expression appears once (so items never straddle
splits); answers are balanced between True and False (a constant reply scores 50%).

Answers come from a recursive-descent parser with Python's precedence, never from ``eval``::

    expression := conjunction ( "or" conjunction )*
    conjunction := negation ( "and" negation )*
    negation := "not" negation | atom
    atom := "True" | "False" | "(" expression ")"
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from tale_opt import validate
from tale_opt.errors import UsageError
from tale_opt.tasks.templates import check_keys, content_id

_CONSTANTS = ("True", "False")
DEFAULTS: dict[str, Any] = {"size": 250, "seed": 0, "min_tokens": 7, "max_tokens": 8}


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            want = expected or "a token"
            raise ValueError(f"expected {want} at token {self.pos}, got {token!r}")
        self.pos += 1
        return token

    def expression(self) -> bool:
        value = self.conjunction()
        while self.peek() == "or":
            self.take()
            right = self.conjunction()  # evaluate both sides: a malformed right side must fail
            value = value or right
        return value

    def conjunction(self) -> bool:
        value = self.negation()
        while self.peek() == "and":
            self.take()
            right = self.negation()
            value = value and right
        return value

    def negation(self) -> bool:
        if self.peek() == "not":
            self.take()
            return not self.negation()
        return self.atom()

    def atom(self) -> bool:
        token = self.take()
        if token in _CONSTANTS:
            return token == "True"
        if token == "(":
            value = self.expression()
            self.take(")")
            return value
        raise ValueError(f"unexpected {token!r} at token {self.pos - 1}")


def tokenize(expression: str) -> list[str]:
    """Tokens of an expression; parentheses need not be spaced."""
    return expression.replace("(", " ( ").replace(")", " ) ").split()


def evaluate(expression: str) -> bool:
    """The value of a boolean expression (``not`` > ``and`` > ``or``, as in Python).

    Raises:
        ValueError: the expression is malformed (unknown token, unbalanced parentheses,
            missing operand, trailing tokens).
    """
    parser = _Parser(tokenize(expression))
    value = parser.expression()
    if parser.peek() is not None:
        raise ValueError(f"unexpected {parser.peek()!r} at token {parser.pos}")
    return value


def _random_expression(rng: random.Random, budget: int) -> list[str]:
    """A random well-formed expression of at most about `budget` tokens."""
    roll = rng.random()
    if budget <= 1 or roll < 0.3:
        return [rng.choice(_CONSTANTS)]
    if roll < 0.5:
        return ["not", *_random_expression(rng, budget - 1)]
    if roll < 0.65 and budget >= 3:
        return ["(", *_random_expression(rng, budget - 2), ")"]
    left = rng.randint(1, max(1, budget - 2))
    operator = rng.choice(("and", "or"))
    return [*_random_expression(rng, left), operator, *_random_expression(rng, budget - 1 - left)]


def generate(size: int, seed: int, min_tokens: int, max_tokens: int) -> list[tuple[str, bool]]:
    """`size` distinct expressions with their values, half True and half False (seeded).

    Raises:
        UsageError: bad arguments, or the length range holds too few distinct expressions.
    """
    for key, value in (("size", size), ("min_tokens", min_tokens), ("max_tokens", max_tokens)):
        validate.integer(value, f"boolean_expressions {key}", minimum=1)
    if min_tokens > max_tokens:
        raise UsageError(
            f"boolean_expressions needs min_tokens <= max_tokens, got {min_tokens} > {max_tokens}"
        )
    rng = random.Random(f"tale_opt/boolean_expressions/{seed}")
    quota = {True: (size + 1) // 2, False: size // 2}
    seen: set[str] = set()
    items: list[tuple[str, bool]] = []
    attempts = 0
    while len(items) < size:
        attempts += 1
        if attempts > 200 * size + 10_000:
            raise UsageError(
                f"could not generate {size} distinct balanced expressions of {min_tokens}-"
                f"{max_tokens} tokens (got {len(items)}); lower size or widen the token range"
            )
        tokens = _random_expression(rng, rng.randint(min_tokens, max_tokens))
        text = " ".join(tokens)
        if not min_tokens <= len(tokens) <= max_tokens or text in seen:
            continue
        value = evaluate(text)
        if quota[value] == 0:
            continue
        seen.add(text)
        quota[value] -= 1
        items.append((text, value))
    return items


def generate_rows(options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{id, expression, answer}`` for a source ``{generator: boolean_expressions}``.

    Args:
        options: ``size`` (250), ``seed`` (0; the data set's identity, not the split seed),
            ``min_tokens`` (7), ``max_tokens`` (8).
    """
    options = dict(options or {})
    check_keys(options, tuple(DEFAULTS), "boolean_expressions source options")
    args = {**DEFAULTS, **options}
    return [
        {"id": content_id(text), "expression": text, "answer": str(value)}
        for text, value in generate(**args)
    ]
