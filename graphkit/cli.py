"""The `graphkit` command: parse arguments, call the library, print. No logic lives here.

Each subcommand is a module in graphkit/commands/ with `add_parser(subparsers)` and
`run(args) -> int`; help texts come from the library's docstrings.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from rich.console import Console
from rich.markup import escape

from graphkit import __version__
from graphkit.errors import GraphkitError

err_console = Console(stderr=True, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    from graphkit import commands

    parser = argparse.ArgumentParser(
        prog="graphkit",
        description=(
            "Clean ONNX graphs with verified passes, calibrate them for int8, write "
            "backend int8 tables, and check the result (per-layer diff, COCO keypoint AP)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"graphkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    mods = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    for name in mods:
        if name.startswith("_"):
            continue
        module = importlib.import_module(f"graphkit.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except GraphkitError as exc:
        err_console.print(f"[bold red]graphkit: error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("graphkit: interrupted; no output was written")
        return 130
    except Terminated:
        err_console.print("graphkit: terminated; no output was written")
        return 143


if __name__ == "__main__":
    sys.exit(main())
