"""Few-shot prompting: how many demonstrations, and how they are laid out in the chat.

The demonstrations themselves are data: the splits loader draws them once per run (seeded) from
a pool disjoint from both splits and attaches the same k examples to every example, so every
prompt of a run shows the same demonstrations in the same order. Here they are only rendered:

* ``chat`` (default): one user turn + one assistant turn per demonstration, before the real
  question; the model sees exactly the exchange it is asked to continue.
* ``inline``: the demonstrations are written into the user turn ahead of the question
  (``inline_format`` per demonstration, joined by ``inline_separator``), for models or
  templates that handle multi-turn prompts poorly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tale_opt import validate
from tale_opt.errors import UsageError
from tale_opt.tasks.base import Message
from tale_opt.tasks.templates import check_keys, template_fields

STYLES = ("chat", "inline")
FEWSHOT_KEYS = ("k", "style", "source", "inline_format", "inline_separator")


@dataclass(frozen=True)
class FewShotSpec:
    """How many demonstrations to show and how (every field enters `prompt_version`).

    Attributes:
        k: Demonstrations per prompt; 0 = zero-shot (the default).
        style: ``chat`` (user/assistant turns) or ``inline`` (inside the user turn).
        inline_format: One inline demonstration, with ``{prompt}`` (its user turn) and
            ``{target}`` (its answer).
        inline_separator: Joins inline demonstrations and the real question.
    """

    k: int = 0
    style: str = "chat"
    inline_format: str = "{prompt}\nAnswer: {target}"
    inline_separator: str = "\n\n"

    def __post_init__(self) -> None:
        validate.integer(self.k, "task.fewshot.k", minimum=0)  # 0: zero-shot
        if self.style not in STYLES:
            raise UsageError(f"task.fewshot.style must be one of {STYLES}, got {self.style!r}")
        template_fields(self.inline_format, "task.fewshot.inline_format", {"prompt", "target"})

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> FewShotSpec:
        """The spec of a task's ``fewshot`` node (``source`` is read by the splits loader)."""
        cfg = dict(cfg or {})
        check_keys(cfg, FEWSHOT_KEYS, "task.fewshot")
        cfg.pop("source", None)
        return cls(**cfg)

    def version(self) -> dict[str, Any]:
        """What enters `prompt_version`: nothing when zero-shot, so k=0 keeps old versions."""
        if self.k == 0:
            return {}
        return {"k": self.k, "style": self.style, **self._inline_fields()}

    def _inline_fields(self) -> dict[str, str]:
        if self.style != "inline":
            return {}
        return {"inline_format": self.inline_format, "inline_separator": self.inline_separator}


def build_messages(
    system: str | None,
    demos: Sequence[tuple[str, str]],
    prompt: str,
    spec: FewShotSpec,
) -> list[Message]:
    """Chat messages for one example: system turn, demonstrations, then the real question.

    Args:
        system: System prompt, or None for none.
        demos: ``(user turn, assistant answer)`` per demonstration, in display order.
        prompt: The real question's user turn.
        spec: Layout of the demonstrations.
    """
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    if spec.style == "inline" and demos:
        shown = [spec.inline_format.format(prompt=p, target=t) for p, t in demos]
        messages.append({"role": "user", "content": spec.inline_separator.join([*shown, prompt])})
        return messages
    for user, answer in demos:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": prompt})
    return messages
