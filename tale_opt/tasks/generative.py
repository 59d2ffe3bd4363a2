"""One generic generative task: the model writes a reply, a named answer parser scores it.

GSM8K, GSM8K-Hard, MATH-500 and BBH boolean expressions are this class with different YAML:
the prompt template, which column holds the gold answer, the answer parser (``gsm8k``,
``math``, ``boolean``; see `tale_opt.tasks.answers`) and the decoding defaults (``scoring``:
``max_new_tokens``, ``stop`` strings, ``stop_patterns``).

Rows become Examples whose ``answer`` is the normalized gold and whose ``meta["target"]`` is
the reply a demonstration shows (GSM8K: the worked solution without calculator annotations,
ending ``#### N``; MATH: the solution with its ``\\boxed{}``; booleans: ``True``/``False``).
The gold column never reaches ``fields``, so no prompt template can show it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tale_opt.errors import UsageError
from tale_opt.tasks.answers import GoldError, build_answer_parser
from tale_opt.tasks.base import Example, Message
from tale_opt.tasks.fewshot import FewShotSpec, build_messages
from tale_opt.tasks.sources import require_columns
from tale_opt.tasks.templates import (
    SCORING_KEYS,
    check_keys,
    content_id,
    normalize,
    short_hash,
    system_prompt,
    template_fields,
)

PROMPT_KEYS = ("system", "user")
ROW_KEYS = ("id", "answer")


@dataclass(frozen=True)
class GenerativePrompt:
    """The prompt of a generative task (all of it enters `prompt_version`).

    Attributes:
        user: ``str.format`` template of the user turn over row columns, e.g. ``"{question}"``.
        system: System prompt (verbatim), or None for no system turn (so are ``""`` and
            blank text, see `system_prompt`).
    """

    user: str
    system: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "system", system_prompt(self.system))


class GenerativeTask:
    """A task scored by parsing the model's generated reply.

    Args:
        name: Task name (run names, study fingerprints).
        prompt: How examples are rendered.
        row_format: ``{"id": <id column>, "answer": <gold column>}``; a row without an id gets
            a content hash.
        answer: The answer parser spec, e.g. ``{"name": "gsm8k", "extract": "strict"}``.
        scoring: Decoding defaults read by the ``eval`` group: ``mode`` (must be
            ``generate``), ``max_new_tokens``, ``stop`` (strings that end a reply, cut before
            them), ``stop_patterns`` (regexes; the reply ends once one matches, kept up to the
            end of the match, e.g. a complete ``#### N`` line).
        fewshot: How demonstrations are laid out (zero-shot by default).
    """

    def __init__(
        self,
        name: str,
        prompt: GenerativePrompt,
        row_format: Mapping[str, Any],
        answer: Mapping[str, Any] | str,
        scoring: Mapping[str, Any] | None = None,
        fewshot: FewShotSpec | None = None,
    ) -> None:
        self.name = name
        self.prompt = prompt
        check_keys(row_format, ROW_KEYS, "task.row_format")
        self.row_format = {"id": "id", "answer": "answer", **row_format}
        self.answer_spec = {"name": answer} if isinstance(answer, str) else dict(answer)
        self.parser = build_answer_parser(self.answer_spec)
        self.scoring = dict(scoring or {})
        check_keys(self.scoring, SCORING_KEYS, "task.scoring")
        if self.scoring.get("mode", "generate") != "generate":
            raise UsageError(
                f"task '{name}' is generative: task.scoring.mode must be 'generate', "
                f"but got {self.scoring['mode']!r}"
            )
        self.stop_strings = tuple(str(s) for s in self.scoring.get("stop") or ())
        self.stop_patterns = tuple(str(s) for s in self.scoring.get("stop_patterns") or ())
        self.fewshot = fewshot or FewShotSpec()
        self.template_fields = template_fields(prompt.user, "task.prompt.user")
        shaped: dict[str, Any] = {
            "prompt": {"user": prompt.user, "system": prompt.system},
            "rows": self.row_format,
            "answer": self.answer_spec,
        }
        if self.stop_strings or self.stop_patterns:
            # Not the prompt, but where a reply ends changes what is scored: same role.
            shaped["stop"] = [self.stop_strings, self.stop_patterns]
        if self.fewshot.version():
            shaped["fewshot"] = self.fewshot.version()
        self.prompt_version = short_hash(shaped)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GenerativeTask:
        """A task from its config node (see `tale_opt.tasks.registry`)."""
        prompt_cfg = dict(cfg.get("prompt") or {})
        check_keys(prompt_cfg, PROMPT_KEYS, "task.prompt")
        if not prompt_cfg.get("user"):
            raise UsageError("task.prompt.user (the user-turn template) is required: '{question}'")
        if not cfg.get("answer"):
            raise UsageError("a generative task needs task.answer, e.g. {name: gsm8k}")
        return cls(
            name=cfg["name"],
            prompt=GenerativePrompt(**prompt_cfg),
            row_format=dict(cfg.get("row_format") or {}),
            answer=cfg["answer"],
            scoring=cfg.get("scoring"),
            fewshot=FewShotSpec.from_config(cfg.get("fewshot")),
        )

    # -- data -----------------------------------------------------------------------------

    def to_examples(
        self,
        rows: Sequence[Mapping[str, Any]],
        origin: str,
        row_format: Mapping[str, Any] | None = None,
    ) -> list[Example]:
        """Turn source rows into Examples with normalized gold answers.

        Raises:
            UsageError: a row lacks a needed column, the template shows the gold column, or a
                gold answer cannot be read.
        """
        columns = {**self.row_format, **(row_format or {})}
        gold_column = columns["answer"]
        if gold_column in self.template_fields:
            raise UsageError(
                f"task.prompt.user uses {{{gold_column}}}, the gold answer column; "
                f"remove it from the template"
            )
        require_columns(rows, [gold_column, *self.template_fields], origin)
        examples = []
        for index, row in enumerate(rows):
            try:
                gold = self.parser.gold(row[gold_column])
            except GoldError as err:
                raise UsageError(
                    f"source {origin} row {index} (id {row.get(columns['id'])!r}): "
                    f"gold column {gold_column!r} has no {self.parser.name} answer: {err}"
                ) from None
            fields = {k: v for k, v in row.items() if k != gold_column}
            meta = {"source": origin, "target": self.parser.demo(row[gold_column], gold)}
            native_id = row.get(columns["id"])
            if native_id is None or str(native_id) == "":
                # No native id: the content is the identity, so equal items get equal ids.
                native_id = content_id(self._content(fields))
            examples.append(Example(str(native_id), fields, answer=gold, meta=meta))
        return examples

    def content_key(self, example: Example) -> str:
        """Normalized prompt content (the template's fields), for duplicate detection."""
        return self._content(example.fields)

    def _content(self, fields: Mapping[str, Any]) -> str:
        return "\x1f".join(normalize(fields.get(f, "")) for f in self.template_fields)

    # -- Task protocol ----------------------------------------------------------------------

    def messages(self, example: Example) -> list[Message]:
        """System prompt, the example's demonstrations, then the rendered question."""
        demos = [(self.user_turn(d), self.target(d)) for d in example.demos]
        return build_messages(self.prompt.system, demos, self.user_turn(example), self.fewshot)

    def user_turn(self, example: Example) -> str:
        """The example's user turn: the template filled with its fields."""
        return self.prompt.user.format(**example.fields)

    def target(self, example: Example) -> str:
        """The reply a demonstration shows (see the module docstring)."""
        return str(example.meta.get("target", example.answer or ""))

    def labels(self, example: Example) -> tuple[str, ...]:
        """Generative tasks have no answer labels."""
        return ()

    def continuations(self, example: Example) -> tuple[str, ...]:
        """Generative tasks have no choices to score by log-likelihood."""
        return ()

    def n_options(self, example: Example) -> int:
        """Possible answers (True/False: 2); 0 for free-form answers such as numbers."""
        return self.parser.n_options

    def parse(self, text: str, example: Example) -> str | None:
        """The normalized answer stated in `text`, or None when it states none."""
        return self.parser.parse(text)

    def is_correct(self, prediction: Any | None, example: Example) -> bool:
        """Whether the parsed answer agrees with the gold (numerically where both parse)."""
        if prediction is None or example.answer is None:
            return False
        return self.parser.equal(str(prediction), example.answer)


__all__ = ["GenerativePrompt", "GenerativeTask"]
