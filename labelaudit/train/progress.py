"""Training progress across folds: the loop reports one fold; this adds what is left over all of them (stdlib only).

The overall estimate is this process's wall time since its first training step over the steps done since,
times the steps left, so the time between folds (export, setting up the next fold) is counted too, and a
resumed run counts only what it still has to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: progress(description, completed iterations, total iterations, status text)
ProgressFn = Callable[[str, int, int, str], None]


def format_seconds(seconds: float | None) -> str:
    """H:MM:SS, or "?" before anything was measured."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class FoldsProgress:
    """Forwards each fold's progress to `progress`, its status extended by the steps and time left over all folds.

    folds: how many folds this process will go through (trained or skipped); per_fold: steps of a whole fold.
    Call `fold()` for each fold trained (it returns the loop's progress callback) and `skip()` for each fold
    that was already finished (a resumed run): it reports nothing.
    """

    def __init__(self, progress: ProgressFn, folds: int, per_fold: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.progress, self.per_fold, self.clock = progress, per_fold, clock
        self.folds, self.waiting = folds, folds
        self.started: float | None = None
        self.steps = 0  # steps done by this process since `started`

    def skip(self) -> None:
        self.waiting -= 1

    def left(self, completed: int, total: int) -> int:
        """Steps left: the rest of the running fold and every fold not begun."""
        return (total - completed) + self.waiting * self.per_fold

    def eta(self, left: int) -> float | None:
        if not self.steps or self.started is None:
            return None
        return (self.clock() - self.started) / self.steps * left

    def fold(self) -> ProgressFn:
        self.waiting -= 1
        last: list[int] = []

        def update(description: str, completed: int, total: int, status: str) -> None:
            if not last:  # the loop's first call says where it starts (after the epochs a checkpoint holds)
                last.append(completed)
                if self.started is None:
                    self.started = self.clock()
            else:
                self.steps += completed - last[0]
                last[0] = completed
            if self.folds > 1:
                left = self.left(completed, total)
                share = 100 * self.steps / max(self.steps + left, 1)
                overall = f"all folds {share:.0f}%, {format_seconds(self.eta(left))} left"
                status = f"{status} · {overall}" if status else overall
            self.progress(description, completed, total, status)

        return update
