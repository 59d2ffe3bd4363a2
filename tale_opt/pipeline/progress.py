"""The console's view of a running search: one progress line per round.

A round is every candidate with the same number of dropped layers (a greedy round; for a
one-shot searcher, the full model's probe and baseline, then each size it proposes). While a
round runs, a terminal shows one line that is redrawn in place as candidates finish,
``round 2: 17/29 candidates, 1 min 02 s, ETA 45 s, 12 stopped early``; when it ends, the line
becomes one INFO log record (``round 2: 29 candidates in 1 min 40 s, 21 stopped early``),
which is all a log file or a non-terminal output gets, plus, in a long round, a record every
`interval` seconds. The details of each candidate stay at DEBUG and in candidate_results.csv.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TextIO

from tale_opt.types import Candidate, Observation

log = logging.getLogger("tale_opt")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RoundProgress:
    """Counts the candidates of the current round as their observations arrive.

    Args:
        stream: Where the live line goes (stderr); a non-terminal gets log records only.
        interval: Seconds between progress records of a long round when not on a terminal.
        clock: Monotonic seconds (a parameter for tests).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.clock = clock
        self.round: int | None = None
        self.done: set[str] = set()
        self.stopped = 0
        self.total = 0
        self.started = 0.0
        self._reported = 0.0
        self._last = clock()  # the latest observation: where the next round starts
        self._bar: Any = None

    def console(self) -> AbstractContextManager[Any]:
        """Wrap the search in this: log records then print above the live line, not into it."""
        if not self.live:
            return nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm()

    def observed(self, obs: Observation, pending: Iterable[Candidate]) -> None:
        """Count `obs`; `pending` is what the searcher still proposes (`propose()` after it
        observed `obs`): its candidates of the same size are the rest of the round."""
        size, now = len(obs.drop), self.clock()
        if size != self.round:
            self._finish()
            self.round, self.done, self.stopped = size, set(), 0
            # A round's first candidate started when the one before it ended.
            self.started = self._reported = self._last
        self._last = now
        if obs.candidate.key not in self.done:
            self.done.add(obs.candidate.key)
            self.stopped += not obs.complete
        left = {c.key for c in pending if len(c.drop) == size} - self.done
        self.total = len(self.done) + len(left)
        if not left:
            self._finish()
            return
        self._show()

    def close(self) -> None:
        """End the current round's line (the search ended or was interrupted)."""
        self._finish()

    def line(self) -> str:
        """``round 2: 17/29 candidates, 1 min 02 s, ETA 45 s, 12 stopped early``."""
        elapsed = self.clock() - self.started
        done = len(self.done)
        text = f"round {self.round}: {done}/{self.total} candidates, {_duration(elapsed)}"
        if 0 < done < self.total:
            text += f", ETA {_duration(elapsed / done * (self.total - done))}"
        return text + self._stopped()

    def _stopped(self) -> str:
        return f", {self.stopped} stopped early" if self.stopped else ""

    def _show(self) -> None:
        if self.live:
            if self._bar is None:
                from tqdm.auto import tqdm

                # tqdm only draws and clears the line; its text is `line()`, timed from the
                # round's start (tqdm's own clock starts with the bar, after a candidate).
                self._bar = tqdm(file=self.stream, leave=False, bar_format="{desc}")
            self._bar.set_description_str(self.line())
            return
        now = self.clock()
        if now - self._reported >= self.interval:
            self._reported = now
            log.info("%s", self.line())

    def _finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.round is None or not self.done:
            return
        elapsed = _duration(self.clock() - self.started)
        n = len(self.done)
        if n < self.total:  # interrupted, or the search failed: say how far it got
            log.info("round %d: stopped after %d/%d candidates, %s%s", self.round, n,
                     self.total, elapsed, self._stopped())  # fmt: skip
        else:
            log.info("round %d: %d candidate%s in %s%s", self.round, n, "" if n == 1 else "s",
                     elapsed, self._stopped())  # fmt: skip
        self.round, self.done = None, set()
