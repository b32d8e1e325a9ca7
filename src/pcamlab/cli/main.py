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
    from pcamlab.errors import PcamlabError
    from pcamlab.fileio import printable

    try:
        result = args.func(args)
    except PcamlabError as error:
        if args.debug:
            raise
        print(f"pcamlab: error: {printable(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("pcamlab: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
