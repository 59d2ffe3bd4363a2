"""Turn a task's chat messages into prompt token ids, once per run.

Two renderings:

* the tokenizer has a chat template: render it to text with the generation prompt, then tokenize
  with ``add_special_tokens=False``. The template already writes BOS where the model wants it;
  tokenizing again with special tokens gives a double BOS on Llama-3 / Mistral (the reference
  implementation's bug). This is also what ``apply_chat_template(tokenize=True)`` does.
* no chat template (base models): a plain-text rendering ending in ``"Answer:"``, tokenized with
  the tokenizer's special tokens, because here nothing else adds BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError

from tale_opt.errors import UsageError
from tale_opt.tasks.base import Message

ANSWER_CUE = "Answer:"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def merge_system_into_first_user(messages: Sequence[Message]) -> list[Message]:
    """Fold the system prompt(s) into the first user turn, separated by a blank line."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def render_plain(messages: Sequence[Message]) -> str:
    """Plain-text prompt for tokenizers without a chat template.

    ``system + "\\n\\n" + user + "\\nAnswer:"``; few-shot assistant turns follow their question as
    ``" <answer>\\n\\n"`` so demonstrations read like the final question.
    """
    parts: list[str] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            parts.append(f"{content}\n\n")
        elif role == "user":
            parts.append(f"{content}\n{ANSWER_CUE}")
        elif role == "assistant":
            parts.append(f" {content}\n\n")
        else:
            raise UsageError(
                f"message role must be 'system', 'user' or 'assistant', but got {role!r}"
            )
    return "".join(parts)


class PromptEncoder:
    """Renders chat messages with the tokenizer's template (or plain text) and tokenizes them.

    Args:
        tokenizer: A Hugging Face tokenizer.
        chat_template: Use the tokenizer's chat template when it has one (False: plain text
            for every model, as lm-evaluation-harness does unless asked for the template).
    """

    def __init__(self, tokenizer: Any, *, chat_template: bool = True) -> None:
        self.tokenizer = tokenizer
        self.uses_chat_template = chat_template and has_chat_template(tokenizer)
        # Set once the template has rejected a system turn, so later prompts skip the failing try.
        self.merges_system = False

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text: the chat template with the generation prompt, else plain text."""
        if not messages or messages[-1]["role"] != "user":
            roles = [m["role"] for m in messages]
            raise UsageError(f"a prompt must end with a user turn, but the roles were {roles}")
        if not self.uses_chat_template:
            return render_plain(messages)
        has_system = any(m["role"] == "system" for m in messages)
        if self.merges_system and has_system:
            messages = merge_system_into_first_user(messages)
        try:
            return self._apply_template(messages)
        except TemplateError:
            # Some templates (Gemma 2: "System role not supported") raise on a system turn.
            # Gemma's own guidance is to put the instructions in the first user turn, so we do
            # that instead of dropping them; anything else is a genuine template error.
            if not has_system or self.merges_system:
                raise
            self.merges_system = True
            return self._apply_template(merge_system_into_first_user(messages))

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the rendered prompt (no double BOS, see the module docstring)."""
        text = self.render(messages)
        ids = self.tokenizer.encode(text, add_special_tokens=not self.uses_chat_template)
        if not ids:
            raise UsageError(f"the prompt tokenized to no tokens: {text!r}")
        return list(ids)

    def _apply_template(self, messages: Sequence[Message]) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )


def text_before_first_question(text: str, messages: Sequence[Message]) -> str:
    """What a rendered prompt holds before the content of its first user turn: the template's
    header and the system turn, including a default system prompt that some chat templates
    add when the task has none (SmolLM2's: "You are a helpful AI assistant named SmolLM,
    trained by Hugging Face"). The whole text when the template changed the user content."""
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    at = text.find(first) if first else -1
    return text[:at] if at >= 0 else text


def first_token(tokenizer: Any, text: str) -> int | None:
    """The first token of `text` that is not whitespace only (None if there is none).

    SentencePiece tokenizers can split ``" A"`` into ``"▁"`` + ``"A"``; the bare ``"▁"`` says
    nothing about the label and would be shared by every label.
    """
    for token_id in tokenizer.encode(text, add_special_tokens=False):
        if tokenizer.decode([token_id]).strip():
            return int(token_id)
    return None


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Per label, the first token of both ``"A"`` and ``" A"`` (deduplicated).

    Raises:
        UsageError: A label has no token, or two labels share a token (the argmax over label
            tokens could not tell them apart).
    """
    per_label: list[tuple[int, ...]] = []
    owner: dict[int, str] = {}
    for label in labels:
        ids = []
        for variant in (label, f" {label}"):
            token_id = first_token(tokenizer, variant)
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
        if not ids:
            raise UsageError(f"answer label {label!r} has no non-whitespace token")
        for token_id in ids:
            other = owner.setdefault(token_id, label)
            if other != label:
                raise UsageError(
                    f"answer labels {other!r} and {label!r} share their first token "
                    f"{tokenizer.decode([token_id])!r} (id {token_id}), so `letters` scoring "
                    "cannot tell them apart; use labels that start with distinct tokens or "
                    "scoring=generate / scoring=loglik"
                )
        per_label.append(tuple(ids))
    return tuple(per_label)
