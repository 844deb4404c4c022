"""The root ``ben`` command: registers subcommands and maps errors to exit codes.

Exit codes: 0 all done, 1 some inputs failed, 2 nothing could run, 130 Ctrl-C,
143 SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated

import typer

from ben_cli.cli.options import Group
from ben_cli.errors import BenError

app = typer.Typer(
    cls=Group,
    name="ben",
    help="Batch background removal with BEN (Background Erase Network).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from ben_cli.version import __version__

        print(f"ben {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                          help="Print the version and exit.")] = False,
) -> None:
    """Batch background removal with BEN (Background Erase Network)."""


def _register() -> None:
    # Each module only imports typer at import time, so `ben --help` stays instant.
    from ben_cli.cli import bench_cmd, erase, eval_cmd, export_cmd, train_cmd, trimap_cmd, weights_cmd

    for mod in (erase, trimap_cmd, eval_cmd, weights_cmd, train_cmd, bench_cmd, export_cmd):
        mod.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    _show_warnings_as_lines()  # Pillow's filters are installed by the first read (io.configure_warnings)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:
        rc = app(args=argv, standalone_mode=False)
    except BenError as e:  # OptionError included: every message with the flags of the command line
        _error(e.flag_message())
        return e.exit_code
    except typer.Exit as e:
        if e.exit_code == 130:  # typer turns Ctrl-C into Exit(130)
            _error("interrupted")
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort) as e:
        signal_name = getattr(e, "signal_name", "SIGINT")
        _error("interrupted")
        return 143 if signal_name == "SIGTERM" else 130
    except Exception as e:  # click usage errors and unexpected failures
        if isinstance(e, _usage_exceptions()):
            if type(e).__name__ == "NoArgsIsHelpError":  # `ben` alone: the help, as click shows it
                e.show()
            else:
                _error(usage_line(e))
            return 2
        if os.environ.get("BEN_DEBUG"):
            raise
        _error(f"internal error: {type(e).__name__}: {e} (set BEN_DEBUG=1 for a traceback)")
        return 2
    return rc if isinstance(rc, int) else 0


def _show_warnings_as_lines() -> None:
    """``BenWarning``s become one ``ben: warning: ...`` line each; Pillow's noise is silenced."""
    import warnings

    from ben_cli.errors import BenWarning

    original = warnings.showwarning
    if getattr(original, "_ben", False):
        return  # installed once per process

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, BenWarning):
            text = message.flag_message() if isinstance(message, BenWarning) else message
            print(f"ben: warning: {text}", file=sys.stderr, flush=True)
        else:
            original(message, category, filename, lineno, file, line)

    show._ben = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.filterwarnings("always", category=BenWarning)


def usage_line(e: Exception) -> str:
    """A click usage error as one line: the flags as typed (``--model``, not ``'--model' / '-m'``), without
    the validator's "Value error, ", and where to find the command's help."""
    import re

    text = e.format_message() if hasattr(e, "format_message") else str(e)
    text = re.sub(r"'(--?[\w-]+)'(?: / '(-[\w-]+)')?", lambda m: m[1] + (f"/{m[2]}" if m[2] else ""), text)
    text = " ".join(text.replace("Value error, ", "").split())
    text = text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
    names, ctx = [], getattr(e, "ctx", None)
    while ctx is not None and ctx.parent is not None:  # the subcommands, whatever the root is called
        names.append(ctx.info_name)
        ctx = ctx.parent
    command = " ".join(["ben", *reversed(names)])
    return f"{text.rstrip('.')} (see '{command} -h')"


def _usage_exceptions() -> tuple[type[Exception], ...]:
    """Click's usage-error classes: typer may vendor its own copy of click."""
    import importlib

    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _error(msg: str) -> None:
    print(f"ben: error: {msg}", file=sys.stderr, flush=True)


def run() -> None:
    """The ``ben`` console script: :func:`main`, then :func:`exit_now` with its code."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with ``code``, skipping the interpreter's module teardown when that is safe.

    After a command has run, tearing down the modules frees a loaded model's tensors object by
    object: 1.2 s after the last output of a 1024x1024 CPU run here, which the OS reclaims at once
    on exit. When torch is loaded and no other non-daemon thread is alive, the atexit handlers
    run (temporary folders, logging, worker pools), the standard streams are flushed, and the
    process exits without the teardown; otherwise, or with ``BEN_SLOW_EXIT=1``, it is a plain
    ``sys.exit``.
    """
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if "torch" not in sys.modules or others or os.environ.get("BEN_SLOW_EXIT"):
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            stream.flush()
    os._exit(code)
