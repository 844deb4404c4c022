"""Typed errors of the library.

Library code raises these; only ``ben_cli.cli.app`` turns them into messages and
exit codes (0 all done, 1 some inputs failed, 2 nothing could run).
"""

from __future__ import annotations

import re

_OPTION = re.compile(r"\{opt:([a-z_]+)\}")


def install_hint(extra: str) -> str:
    """How to add an optional extra, in the one form that works from an index and from a checkout
    (pip resolves the extra of the installed distribution): ``pip install "ben_cli[video]"``."""
    return f'pip install "ben_cli[{extra}]"'


def render_options(text: str, flags: bool) -> str:
    """A library message's ``{opt:param}`` placeholders -> the parameter's name (``batch_size``), or with
    ``flags`` the command-line flag (``--batch-size``), as the CLI shows it."""
    return _OPTION.sub(lambda m: "--" + m[1].replace("_", "-") if flags else m[1], text)


class _NamesOptions:
    """A message that names other options as ``{opt:param}`` (the library never spells a CLI flag)."""

    def __str__(self) -> str:
        return render_options(super().__str__(), flags=False)

    def flag_message(self) -> str:
        """The message with command-line flags in place of parameter names (what the CLI prints)."""
        return render_options(super().__str__(), flags=True)


class BenError(_NamesOptions, Exception):
    """Base class of every error that ``ben`` reports without a traceback."""

    exit_code: int = 2


class UsageError(BenError):
    """A bad option or argument combination."""


class OptionError(UsageError):
    """One option has a bad value; ``param`` is its Python name (``batch_size``).

    The library names the parameter; the CLI shows the flag (``--batch-size``).
    ``reason`` may place the name itself with ``{flag}`` (``noun`` stands there in the
    library's message); otherwise the message is prefixed with it. Other options are
    named ``{opt:param}``, as in every :class:`BenError`.
    """

    def __init__(self, param: str, reason: str, noun: str | None = None) -> None:
        self.param = param
        self.reason = reason
        self.noun = noun
        super().__init__(self._render(noun or param))

    def __reduce__(self):
        return (type(self), (self.param, self.reason, self.noun))

    def _render(self, name: str) -> str:
        return self.reason.replace("{flag}", name) if "{flag}" in self.reason else f"{name}: {self.reason}"

    def flag_message(self) -> str:
        """The message with the command-line flags instead of the parameter names."""
        return render_options(self._render("--" + self.param.replace("_", "-")), flags=True)


class WeightsNotFoundError(BenError):
    """No checkpoint could be found (and none could be downloaded)."""


class CheckpointError(BenError):
    """A checkpoint file cannot be read, or its tensors do not fit the model."""


class DeviceUnavailableError(BenError):
    """The requested device or precision is not available on this machine."""


class EngineError(BenError):
    """An engine cannot run: Ray is not installed, a GPU was asked of a machine without one, the cluster failed."""


class StalledError(EngineError):
    """A Ray run made no progress for the stall limit: the one line says which resource it waits for.

    Exit 1, like a run in which files failed: the files done are kept, the report is written.
    """

    exit_code = 1


class InputError(BenError):
    """One input cannot be used (unreadable, not an image, too large, ...).

    Raised per file; a batch reports it and goes on with the other files.
    """

    exit_code = 1

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across process pools
        return (type(self), (self.path, self.reason))


class PairingError(BenError):
    """Predictions and ground truths do not pair up one to one (``ben eval``)."""


class BenWarning(_NamesOptions, UserWarning):
    """Something the user should know that does not stop the run (a slow path, a renamed output).

    The CLI prints these as one ``ben: warning: ...`` line each.
    """
