"""List every pass, its options and what it does.

Every registered pass with its options, types and defaults, generated from the code's
own docstrings and type hints. Use the names in a pipeline YAML for `graphkit apply`.
"""

from __future__ import annotations

import argparse
import inspect

from graphkit.commands._common import add_command, add_json_argument, console, write_json
from graphkit.passes import load_all
from graphkit.passes.base import option_type_name


def describe_passes(verbose: bool = True) -> str:
    """Text listing of every registered pass: name, docstring, options with types."""
    lines = []
    for name, info in sorted(load_all().items()):
        tag = "  [changes outputs]" if info.changes_outputs else ""
        lines.append(f"{name}{tag}")
        body = info.doc if verbose else info.summary
        lines.extend("    " + line for line in body.splitlines())
        for opt, param in info.options.items():
            default = (
                "required"
                if param.default is inspect.Parameter.empty
                else f"default {param.default!r}"
            )
            lines.append(f"    - {opt}: {option_type_name(param)} ({default})")
        lines.append("")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "passes")
    p.add_argument("--short", action="store_true", help="one line per pass")
    add_json_argument(p, "every pass with its options")
    return p


def passes_doc() -> list[dict]:
    """Every pass as data: name, doc, whether it changes outputs, options."""
    return [
        {
            "name": name,
            "changes_outputs": info.changes_outputs,
            "doc": info.doc,
            "options": {
                opt: {
                    "type": option_type_name(param),
                    "default": None if param.default is inspect.Parameter.empty else param.default,
                    "required": param.default is inspect.Parameter.empty,
                }
                for opt, param in info.options.items()
            },
        }
        for name, info in sorted(load_all().items())
    ]


def run(args: argparse.Namespace) -> int:
    console.print(describe_passes(verbose=not args.short), markup=False)
    write_json(args.json, passes_doc())
    return 0
