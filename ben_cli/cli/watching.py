"""``ben erase IN OUT --watch``: the first run over IN, then the drop folder watched
(:mod:`ben_cli.engines.watch`) until Ctrl-C or SIGTERM, with the model loaded once, a line per file on
stderr, the ``--report`` rewritten after each batch and the summary on exit (130 / 143)."""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ben_cli.cli import options as opt
from ben_cli.cli.driver import base_settings, execute_with_progress, print_summary, write_report
from ben_cli.errors import BenError, UsageError

if TYPE_CHECKING:
    from ben_cli.engines import RunSummary
    from ben_cli.engines.watch import Stop
    from ben_cli.io import Arrivals
    from ben_cli.options import InferenceOptions, OutputOptions, VideoOptions
    from ben_cli.plan import Plan

DEFAULT_SETTLE = 1.0
"""Seconds a file's size and modification time must stay unchanged before it is read (``--settle``)."""


def check_watch(inputs: list[str], output: str, *, watch: bool, settle: float | None, poll: bool,
                ray_engine: bool) -> None:
    """UsageError for what ``--watch`` cannot do (one local INPUT folder into an OUTPUT folder, local
    engine), and for ``--settle`` or ``--poll`` without it."""
    from ben_cli.io import is_url

    if not watch:
        if settle is not None or poll:
            raise UsageError("--settle and --poll need --watch")
        return
    if ray_engine:
        raise UsageError("--watch runs on the local engine: drop --engine ray")
    if "-" in (output, *inputs):
        raise UsageError("--watch reads an INPUT folder into an OUTPUT folder, not standard input or output")
    if len(inputs) != 1:
        raise UsageError(f"--watch watches one INPUT folder, {len(inputs)} inputs given "
                         "(start one ben erase --watch per folder)")
    if is_url(inputs[0]) or is_url(output):
        raise UsageError("--watch watches a local folder into a local OUTPUT folder, not a URL "
                         "(a network mount works with --poll)")
    source = Path(inputs[0])
    if not source.exists():
        raise UsageError(f"input not found: {source}")
    if not source.is_dir():
        raise UsageError(f"--watch needs an INPUT folder to watch, not the file {source}")


def watch_folder(plan: Plan, replan: Callable[[list[Path]], Plan], options: InferenceOptions, *, source: Path,
                 exts: frozenset[str], settle: float, poll: bool, overwrite: bool, workers: int | None,
                 report: Path | None, quiet: bool, output: OutputOptions, video: VideoOptions,
                 title: str = "ben erase --watch") -> RunSummary:
    """The first run of ``plan``, then the files arriving under ``source`` until a signal; the summary.

    ``replan(paths)``: the plan of those files of ``source`` (named as a run over it names them).
    The report is written after the first run and after every batch, and however the watch ends.
    """
    from ben_cli.io import Arrivals, Rules

    session = _Session(options, replan, report=report, quiet=quiet,
                       run_options={"output": output, "overwrite": overwrite, "workers": workers, "video": video})
    plan = settled_now(plan, settle)  # a file still being written waits for the watch's settle rule
    interrupted: str | None = None
    error: str | None = None
    previous = _install_handlers(session.stop)
    try:
        with Arrivals(Rules(source, plan.out_root, exts), poll=poll, poll_interval=min(1.0, max(settle, 0.1))) as found:
            interrupted = session.first_run(plan)
            if interrupted is None:
                interrupted = session.watch(found, plan, settle=settle, all_frames=video.all_frames)
    except BenError as e:
        error = e.flag_message()
        raise
    except KeyboardInterrupt as e:  # outside a run: loading the model, planning
        interrupted = getattr(e, "signal_name", "SIGINT")
    except Exception as e:
        error = f"internal error: {type(e).__name__}: {e}"
        raise
    finally:
        session.stop.closing = True
        summary = session.tally.summary(interrupted, error)
        session.write_report(summary)
        _restore_handlers(previous)
    if summary.other_settings:
        n = summary.other_settings
        opt.print_warning(f"{n} output{'s were' if n > 1 else ' was'} made with other settings; "
                          "--overwrite to redo them")
    if not quiet:
        done, failed = summary.count("done"), summary.count("failed")
        opt.print_error(f"watch stopped ({summary.interrupted}): {done} done, {failed} failed")
        print_summary(session.console, summary, title)
    return summary


class _Session:
    """One watch: the model loaded once (``loader``), the results of every run (``tally``), the signals' ``stop``."""

    def __init__(self, options: InferenceOptions, replan: Callable[[list[Path]], Plan], *, report: Path | None,
                 quiet: bool, run_options: dict) -> None:
        from ben_cli.engines.watch import Stop, Tally

        self.options, self.replan, self.report, self.quiet = options, replan, report, quiet
        self.run_options = run_options
        self.settings = base_settings(options)
        self.console = opt.stderr_console(quiet)
        self.stop, self.tally = Stop(), Tally(self.settings)
        self.loader = functools.cache(functools.partial(_load, options))

    def write_report(self, summary: RunSummary) -> None:
        if self.report is not None:
            write_report(self.report, summary)

    def run(self, plan: Plan, *, lines: tuple[str, ...], bar: bool, own_outputs: int) -> RunSummary:
        """One run of ``plan`` on the local engine with the loaded model; its results added to the tally."""
        from ben_cli.engines import create_run

        run = create_run("local", plan, self.options, settings=self.settings, loader=self.loader, **self.run_options)
        summary = execute_with_progress(run, self.console, self.quiet or not bar, lines=() if self.quiet else lines,
                                        signals=bar)
        self.tally.add(summary, own_outputs=own_outputs)
        self.write_report(self.tally.summary(summary.interrupted))
        return summary

    def first_run(self, plan: Plan) -> str | None:
        """The run over what is there (with the progress bar; stopped at once by a signal); the signal or None."""
        return self.run(plan, lines=("done",), bar=True, own_outputs=plan.own_outputs).interrupted

    def watch(self, found: Arrivals, plan: Plan, *, settle: float, all_frames: bool) -> str:
        """After the first run: load the model (when the first run did not), then run the arrivals until a
        signal, whose name is returned."""
        from ben_cli.engines.watch import watch
        from ben_cli.io import Settling, complete

        t0 = time.perf_counter()
        erasers = self.loader()
        if not self.tally.loaded:
            self.tally.loaded_now(_settings(erasers), time.perf_counter() - t0)
        settling = Settling(settle, complete=functools.partial(complete, all_frames=all_frames))
        for job in plan.jobs:  # what the first run dealt with comes again only once it changes
            settling.handled(Path(job.source), job.pin.stamp if job.pin is not None else None)
        settling.add(found.existing())  # what came while the first run ran
        if not self.quiet:
            how = "polling" if found.poll else "events"
            opt.print_error(f"watching {found.rules.root} for new images ({how}, settle {settle:g} s; "
                            "Ctrl-C or SIGTERM to stop)")
        return watch(found, settling, self.batch, batch_size=self.options.batch_size or erasers[0].batch_size,
                     stop=self.stop)

    def batch(self, paths: list[Path]) -> str | None:
        """Plan and run one batch of arrivals (a signal meanwhile waits for its end: :class:`Stop`)."""
        sub = self.replan(paths)
        names = {str(p) for p in paths}
        for note in sub.notes:
            if note.split(": ", 1)[0] in names:  # the clash notes of these files (not the folder's others)
                opt.print_warning(note)
        planned = {str(job.source) for job in sub.jobs}
        own = [p for p in paths if str(p) not in planned and p.is_file()]  # the planner left them out
        if not self.quiet:
            for p in own:
                opt.print_error(f"{p}: skipped (ben's own output)")
        if not sub.jobs:
            self.tally.own_outputs += len(own)
            return None
        return self.run(sub, lines=("done", "skipped"), bar=False, own_outputs=len(own)).interrupted


def settled_now(plan: Plan, settle: float, now_ns: int | None = None) -> Plan:
    """``plan`` without the files modified less than ``settle`` seconds ago (or in the future): they may be
    still being written, so the watch takes them once they have settled."""
    from dataclasses import replace

    now_ns = time.time_ns() if now_ns is None else now_ns

    def young(job) -> bool:
        mtime = None if job.pin is None else job.pin.mtime_ns
        return mtime is not None and now_ns - mtime < settle * 1e9

    return replace(plan, jobs=[job for job in plan.jobs if not young(job)])


def _load(options: InferenceOptions) -> list:
    from ben_cli.pipeline import load_erasers

    return load_erasers(options)


def _settings(erasers: list) -> dict:
    """What the loaded model resolved the options to (as a run records them)."""
    settings = dict(erasers[0].settings)
    if len(erasers) > 1:
        settings["device"] = ",".join(str(e.device) for e in erasers)
    return settings


def _install_handlers(stop: Stop) -> dict | None:
    """Ctrl-C and SIGTERM call ``stop.request`` (from the main thread only: elsewhere the handlers stand)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame) -> None:
        stop.request(signal.Signals(signum).name)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict | None) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)
