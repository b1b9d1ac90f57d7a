"""Helpers shared by subcommands: help text from docstrings, consoles."""

from __future__ import annotations

import argparse
import inspect

from rich.console import Console

console = Console(highlight=False)


def doc_of(obj: object) -> tuple[str, str]:
    """(first line, full text) of an object's docstring, for argparse help."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", "") or "")
    first = doc.splitlines()[0] if doc else ""
    return first, doc


def add_command(sub: argparse._SubParsersAction, name: str, target: object) -> argparse.ArgumentParser:
    """A subparser whose help and description are `target`'s docstring."""
    first, full = doc_of(target)
    return sub.add_parser(
        name,
        help=first,
        description=full,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
