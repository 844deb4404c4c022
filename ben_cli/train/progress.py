"""The training progress on stderr: a Rich bar on a terminal, else one line every few steps."""

from __future__ import annotations

import math
import sys
import time
from typing import Any


class Progress:
    """A Rich bar on a terminal (loss, images/s, ETA), else one line every few steps."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.start = enabled, total, 0
        self.every = max(1, min(100, total // 50))
        self.bar: Any = None
        self._t0 = time.perf_counter()

    def begin(self, start: int) -> None:
        """Show the bar from step ``start`` on (messages before this go straight to stderr)."""
        self.start, self._t0 = start, time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress, TextColumn

            from ben_cli.progress import progress_columns

            self.bar = Progress(*progress_columns(TextColumn("{task.fields[info]}")),
                                console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("train", total=self.total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, loss: float, ips: float) -> None:
        if not self.enabled:
            return
        info = f"loss {loss:.4f}  {ips:.1f} img/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            done = step - self.start
            rate = done / max(time.perf_counter() - self._t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else math.inf
            eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) and eta < 8.64e6 else "?"
            print(f"ben train: step {step}/{self.total}  {info}  eta {eta_s}", file=sys.stderr, flush=True)

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
