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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcamlab",
        description="Train, evaluate and explain CNN detectors of metastases in PCam patches.",
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


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 never crashes a print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from pcamlab.errors import PcamlabError, plain_line
    from pcamlab.fileio import printable

    try:
        result = args.func(args)
    except PcamlabError as error:
        if args.debug:
            raise
        print(f"pcamlab: error: {plain_line(printable(error))}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the disk or the folder, not pcamlab: one line, unless a bug needs the trace
        message = _storage_message(error)
        if args.debug or message is None:
            raise
        print(f"pcamlab: error: {plain_line(printable(message))}", file=sys.stderr)
        return 1 if error.errno in (errno.ENOSPC, errno.EDQUOT) else 2
    except KeyboardInterrupt:
        print("pcamlab: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def _storage_message(error: OSError) -> str | None:
    """One line for a file that cannot be written or read for a reason of the machine (None otherwise)."""
    where = f" {error.filename!r}" if error.filename else ""
    fixes = {
        errno.ENOSPC: "the disk is full: free space or write elsewhere (--out)",
        errno.EDQUOT: "the disk quota is used up: free space or write elsewhere (--out)",
        errno.EROFS: "that file system is read-only: write elsewhere (--out)",
        errno.EACCES: "permission denied: fix the permissions or choose another place (--out)",
        errno.EPERM: "operation not permitted: fix the permissions or choose another place (--out)",
    }
    fix = fixes.get(error.errno)
    return None if fix is None else f"cannot use{where}: {fix}"


if __name__ == "__main__":
    sys.exit(main())
