"""Entry point of the ``pcamlab`` console script.

Each command lives in a module of this package that exposes ``register(subparsers)``; the module adds
its parser and sets ``func`` to a function taking the parsed ``argparse.Namespace``. Heavy imports
(torch, matplotlib) happen inside those functions so ``pcamlab --help`` stays fast. A listed module
that fails to import is an error (never a silently missing command).

Errors: a :class:`pcamlab.errors.PcamlabError` prints one line and exits with its ``exit_code``
(2 for usage/config/data problems, 1 for run-time failures); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys

# Command modules, in the order `pcamlab --help` lists them. Add a new command module here.
COMMAND_MODULES = [
    "pcamlab.cli.demo",
    "pcamlab.cli.train",
    "pcamlab.cli.evaluate",
    "pcamlab.cli.predict",
    "pcamlab.cli.export",
    "pcamlab.cli.models",
    "pcamlab.cli.data",
    "pcamlab.cli.explain",
    "pcamlab.cli.report",
    "pcamlab.cli.compare",
    "pcamlab.cli.tune",
    "pcamlab.cli.bench",
    "pcamlab.cli.slide",
    "pcamlab.cli.serve",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse with the project's error shape: one line naming the command and the fix, exit code 2.

    argparse prints the whole usage block above a bad argument's message; here the message is the one
    line and ``--help`` is named for the rest (every sub-command's parser is of this class).
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pcamlab",
        description="Train, evaluate and explain CNN detectors of metastases in PCam patches, and map whole "
        "slides with them.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise ImportError(
                f"pcamlab command module {name!r} cannot be imported ({error}); reinstall pcamlab "
                "(pip install -e .) or, if the command was removed, take it out of COMMAND_MODULES"
            ) from error
        module.register(subparsers)
    return parser


# Library parameters whose name differs from the flag's destination (``train(config, out_dir)`` <- ``--out``).
PARAMETER_DESTINATIONS = {"out_dir": "out", "out_path": "out", "batch_sizes": "batch_size", "precisions": "precision",
                          "space_file": "space", "max_size": "size", "path": "out",
                          "normal_slides": "normal", "tumour_slides": "tumour", "split_map": "split_csv",
                          "min_tissue_fraction": "min_tissue"}


def _command_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """``dest -> --flag`` of the command that ran (and of its subcommand)."""
    flags: dict[str, str] = {}
    current = parser
    while current is not None:
        following = None
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(args, action.dest, None)
                following = action.choices.get(chosen) if chosen else None
            elif action.option_strings:
                flags.setdefault(action.dest, max(action.option_strings, key=len))
        current = following
    return flags


def cli_message(message: str, parameters: tuple[str, ...], flags: dict[str, str]) -> str:
    """A library message as the command line says it: each named parameter becomes the command's flag.

    ``force=True`` -> ``--force``; ``exporter='legacy'`` -> ``--exporter legacy``; ``out`` -> ``--out``;
    ``resume=False`` -> ``--no-resume`` and ``repair=True`` -> ``without --no-repair`` where the command's flag
    is the negative one; ``class_map={'a': 'b'}`` -> ``--class-map a=b`` (a repeatable flag). Parameters the
    command has no flag for stay as they are.

    Example:
        >>> cli_message("choose another out or pass force=True", ("out", "force"), {"out": "--out", "force": "--force"})
        'choose another --out or pass --force'
        >>> cli_message("map it with class_map={'Carcinoma': 'tumour'}", ("class_map",), {"class_map": "--class-map"})
        'map it with --class-map Carcinoma=tumour'
    """
    for parameter in parameters:
        flag = flags.get(parameter) or flags.get(PARAMETER_DESTINATIONS.get(parameter, ""))
        name = re.escape(parameter)
        negative = flags.get(f"no_{parameter}")
        if negative:  # a --no-NAME flag: NAME=False is that flag, NAME=True is leaving it out
            message = re.sub(rf"(?<![\w.-]){name}=False\b", negative, message)
            if not flag:
                message = re.sub(rf"(?<![\w.-]){name}=True\b", f"without {negative}", message)
        if not flag:
            continue
        # a mapping: NAME={'a': 'b'} is a repeatable flag, --flag a=b (quoted for a shell when it needs it)
        message = re.sub(rf"(?<![\w.-]){name}=(\{{[^{{}}]*\}})", lambda match: _mapping_flags(match, flag), message)
        message = re.sub(rf"(?<![\w.-]){name}=True\b", flag, message)
        message = re.sub(rf"(?<![\w.-]){name}=(['\"]?)([^'\"\s,;)]+)\1", rf"{flag} \2", message)
        message = re.sub(rf"(?<![\w./'-]){name}(?![\w=/'-])", flag, message)  # not inside a path
    return message


def _mapping_flags(match: re.Match, flag: str) -> str:
    """``{'Carcinoma': 'tumour'}`` -> ``--class-map Carcinoma=tumour`` (unchanged when it is not a literal dict)."""
    import ast
    import shlex

    try:
        mapping = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return match.group(0)
    if not isinstance(mapping, dict) or not mapping:
        return match.group(0)
    return " ".join(f"{flag} {shlex.quote(f'{key}={value}')}" for key, value in mapping.items())


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 never crashes a print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from pcamlab import stopping

    restore = stopping.install()  # SIGINT/SIGTERM set a flag that loops check at safe points
    notes = _show_file_notes()
    try:
        return _dispatch(parser, args)
    finally:
        restore()  # in-process callers (tests, notebooks) get their handlers back
        notes()


def _show_file_notes():
    """Print what pcamlab.fileio cleaned up (a killed writer's temporaries) as ``note:`` lines on stderr."""
    import logging

    class NoteHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(f"note: {record.getMessage()}", file=sys.stderr)

    logger, handler = logging.getLogger("pcamlab.fileio"), NoteHandler(logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return lambda: logger.removeHandler(handler)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the command; PcamlabError and storage errors become one line and an exit code."""
    from pcamlab.errors import PcamlabError, plain_line
    from pcamlab.fileio import printable

    try:
        try:
            result = args.func(args)
            sys.stdout.flush()  # here, so a closed pipe is caught below and not at interpreter exit
        except Exception as error:  # an error raised while cleaning up after Ctrl+C/SIGTERM is the stop's
            stop = _stop_behind(error)
            if stop is None or args.debug:
                raise
            print(f"pcamlab: while stopping: {plain_line(printable(f'{type(error).__name__}: {error}'))}", file=sys.stderr)
            raise stop from None
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as other Unix tools do
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
    except PcamlabError as error:
        if args.debug:
            raise
        message = cli_message(plain_line(printable(error)), getattr(error, "parameters", ()), _command_flags(parser, args))
        print(f"pcamlab: error: {message}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the disk or the folder, not pcamlab: one line, unless a bug needs the trace
        message = _storage_message(error)
        if args.debug or message is None:
            raise
        print(f"pcamlab: error: {plain_line(printable(message))}", file=sys.stderr)
        return 1 if error.errno in (errno.ENOSPC, errno.EDQUOT) else 2
    except KeyboardInterrupt as error:  # pcamlab.stopping.Stopped, or a Ctrl+C that came before install()
        signum = getattr(error, "signum", 2)
        print("pcamlab: terminated (SIGTERM)" if signum == 15 else "pcamlab: interrupted", file=sys.stderr)
        return 128 + signum  # 130 for SIGINT, 143 for SIGTERM
    return int(result or 0)


def _stop_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl+C/SIGTERM (:class:`pcamlab.stopping.Stopped`) during whose handling ``error`` was raised, if any.

    A stop can land anywhere outside a loop's safe points, e.g. inside an import, which leaves a half-initialised
    module that the cleanup code then trips over; the command was stopped, and exits as stopped (130/143).
    """
    seen: set[int] = set()
    current: BaseException | None = error.__context__
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__context__
    return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's final flush does not raise BrokenPipeError again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing to silence
        pass


def _storage_message(error: OSError) -> str | None:
    """One line for a file that cannot be written or read for a reason of the machine (None otherwise)."""
    where = f" {error.filename!r}" if error.filename else ""
    fixes = {
        errno.ENOSPC: "the disk is full: free space or write elsewhere (--out)",
        errno.EDQUOT: "the disk quota is used up: free space or write elsewhere (--out)",
        errno.EROFS: "that file system is read-only: write elsewhere (--out)",
        errno.EACCES: "permission denied: fix the permissions or choose another place (--out)",
        errno.EPERM: "operation not permitted: fix the permissions or choose another place (--out)",
        errno.ENOTDIR: "a file stands where a folder is needed: choose another path (--out) or move that file",
        errno.EEXIST: "it exists and is not a folder pcamlab can use: choose another path (--out)",
        errno.EISDIR: "it is a folder where a file is needed: choose another path (--out)",
        errno.ENOENT: "no such file or folder, and it cannot be made there: check the path (--out)",
    }
    fix = fixes.get(error.errno)
    return None if fix is None else f"cannot use{where}: {fix}"


if __name__ == "__main__":
    sys.exit(main())
