"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM finish the current step, save ``last`` and stop.

:class:`StopSignals` turns the signals into a flag the loop reads after each step; a second
Ctrl-C aborts at once. :class:`TrainingStopped` is what the loop raises once ``last`` is saved.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ben_cli.errors import BenError
from ben_cli.train.state import LAST


class TrainingStopped(BenError):
    """The run was stopped (signal or request) after saving ``last``; ``--resume`` continues it."""

    def __init__(self, step: int, run_dir: Path, signum: int | None) -> None:
        name = signal.Signals(signum).name if signum else "request"
        self.step, self.run_dir, self.signum = step, run_dir, signum
        self.exit_code = 128 + signum if signum else 130
        super().__init__(f"stopped by {name} after step {step}; saved {run_dir / LAST}; "
                         f"continue with {{opt:resume}} {run_dir}")


class StopSignals:
    """SIGINT/SIGTERM set a flag that the loop reads after each step; a second Ctrl-C aborts.

    ``requested`` is set by the loop itself (a step hook asked to stop); :attr:`stop` is either.
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.signum: int | None = None
        self.requested = False
        self._say = say
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self._say(f"{signal.Signals(signum).name}: saving after this step (Ctrl-C again to abort without saving)")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers only from the main thread
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    @property
    def stop(self) -> bool:
        return self.signum is not None or self.requested


def ignore_interrupts_in_worker(_: int) -> None:
    """DataLoader workers ignore Ctrl-C: the main process stops the run after saving."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
