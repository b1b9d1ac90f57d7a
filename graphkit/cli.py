"""The `graphkit` command: parse arguments, call the library, print. No logic lives here.

Each subcommand is a module in graphkit/commands/ with `add_parser(subparsers)` and
`run(args) -> int`; help texts come from the library's docstrings.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from graphkit import __version__
from graphkit.errors import GraphkitError

err_console = Console(stderr=True, highlight=False)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (argparse prints the whole usage
    block first); subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command is listed; only `command`'s module (all of them when None) is
    imported to define its options, so `graphkit --help` loads neither onnx nor
    onnxruntime."""
    from graphkit.commands._common import COMMANDS, module_doc

    parser = Parser(
        prog="graphkit",
        description=(
            "Clean ONNX graphs with verified passes, calibrate them for int8, write "
            "backend int8 tables, and check the result (per-layer diff, COCO keypoint AP)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"graphkit {__version__}")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log the library's steps to stderr at this level (default warning; -v info, "
        "-vv debug), before the command: graphkit -v calibrate ...",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, doc_module) in COMMANDS.items():
        if command is None or name == command:
            module = importlib.import_module(f"graphkit.commands.{module_name}")
            module.add_parser(sub).set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=module_doc(doc_module)[0])
    return parser


def _command_in(argv: list[str]) -> str:
    """The command named on the command line ("" when none is)."""
    from graphkit.commands._common import COMMANDS

    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--log-level":  # its value is not the command
            skip = True
        elif not a.startswith("-"):
            return a if a in COMMANDS else ""
    return ""


def configure_logging(level: str | None, verbose: int) -> None:
    """The `graphkit.*` loggers to stderr: --log-level wins, else -v / -vv, else warnings."""
    import logging

    name = level or {0: "warning", 1: "info"}.get(verbose, "debug")
    logger = logging.getLogger("graphkit")
    logger.setLevel(getattr(logging, name.upper()))
    if not any(getattr(h, "_graphkit", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler._graphkit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


class Terminated(Exception):
    """SIGTERM, turned into an exception so `finally:` blocks stop workers and remove
    scratch files (Python's default SIGTERM ends the process on the spot)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        print("graphkit: error: no command given (the list is above)", file=sys.stderr)
        return 2
    from graphkit.commands._common import console

    configure_logging(args.log_level, args.verbose)
    if getattr(args, "json", None) == "-":  # stdout is the JSON: people read stderr
        console.file = sys.stderr
    try:
        return int(args._run(args) or 0)
    except GraphkitError as exc:
        err_console.print(f"[bold red]graphkit: error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except OSError as exc:  # a file a check could not foresee (permissions, disk full)
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or type(exc).__name__
        err_console.print(f"[bold red]graphkit: error:[/] {escape(where + reason)}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("graphkit: interrupted; no output was written")
        return 130
    except Terminated:
        err_console.print("graphkit: terminated; no output was written")
        return 143
    finally:
        console.file = None  # type: ignore[assignment]  # back to sys.stdout, as made


if __name__ == "__main__":
    sys.exit(main())
