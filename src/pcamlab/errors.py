"""Errors a person can act on.

Every pcamlab error says what is wrong, what was received, and how to fix it, in one line. The CLI
prints the message and exits with ``exit_code`` (2 for usage/config/data problems, 1 for failures
at run time).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

# ANSI/VT100 escape sequences (colours, cursor moves) that some libraries put into their messages
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")

__all__ = [
    "PcamlabError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RunError",
    "RunFolderError",
    "did_you_mean",
    "plain_line",
]


class PcamlabError(Exception):
    """Base class of every error pcamlab raises on purpose.

    The message names function parameters (``force=True``, ``out``) and config fields (``train.epochs``),
    never command-line flags. ``parameters`` lists the parameters it names, so that the CLI can show
    them as its flags (``--force``, ``--out``) without the library knowing them.

    Example:
        >>> raise RunError("'a.csv' already exists; choose another out or pass force=True", parameters=("out", "force"))
    """

    exit_code = 2

    def __init__(self, *args: object, parameters: tuple[str, ...] = ()):
        super().__init__(*args)
        self.parameters = tuple(parameters)


class ConfigError(PcamlabError, ValueError):
    """A config file, override or option is invalid."""


class DataError(PcamlabError, ValueError):
    """A dataset is missing, malformed or inconsistent."""


class CheckpointError(PcamlabError, ValueError):
    """A checkpoint cannot be read or does not match what is asked of it."""


class RunError(PcamlabError, RuntimeError):
    """A failure while running (training diverged, a download failed, an export disagrees, ...)."""

    exit_code = 1


class RunFolderError(RunError):
    """An output or run folder that cannot be used as given: a usage error (exit code 2), not a failure.

    The output exists already (pcamlab never overwrites a finished result), holds nothing to resume,
    or the run folder to read does not exist. A subclass of :class:`RunError` so existing handlers
    still catch it.
    """

    exit_code = 2


def plain_line(text: object, limit: int | None = None) -> str:
    """``text`` as one plain line: terminal colour codes removed, line breaks and runs of spaces as one space.

    For messages of other libraries quoted in ours (the ONNX exporter colours its errors), which would
    otherwise print ``\\x1b[31m`` into log files.

    Args:
        text: any message.
        limit: cut to this many characters (with "...") when given.
    """
    line = " ".join(_ESCAPES.sub("", str(text)).split())
    if limit is not None and len(line) > limit:
        line = line[: limit - 3] + "..."
    return line


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
