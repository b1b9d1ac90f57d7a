"""Helpers shared by subcommands: help text from docstrings, consoles."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Logs and CI pipes get 120 columns instead of rich's 80, so tables stay one row per line.
_piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
console = Console(highlight=False, width=120 if _piped else None)


# command -> (module in graphkit/commands, module whose docstring is the command's help)
COMMANDS = {
    "apply": ("apply", "graphkit.pipeline"),
    "calibrate": ("calibrate", "graphkit.quant.quantize"),
    "demo": ("demo", "graphkit.demo"),
    "diff": ("diff", "graphkit.evaluators.diff"),
    "eval": ("eval", "graphkit.evaluators.evaluate"),
    "export": ("export", "graphkit.backends"),
    "inspect": ("inspect_model", "graphkit.inspect"),
    "passes": ("passes", "graphkit.commands.passes"),
    "table": ("table", "graphkit.commands.table"),
}


# one command line per command, shown at the end of its --help
EXAMPLES = {
    "apply": "graphkit apply examples/passes/default.yaml model.onnx -o clean.onnx --report r.json",
    "calibrate": "graphkit calibrate model.onnx --data examples/models/posenet.yaml -o plan.json "
    "--qdq model.int8.onnx --target ncnn,tensorrt --out-dir deploy/; an ncnn model: graphkit "
    "calibrate model.param --data spec.yaml --out-dir int8/",
    "demo": "graphkit demo --out-dir graphkit-demo",
    "diff": "graphkit diff model.onnx model.int8.onnx --data examples/models/posenet.yaml "
    "--html diff.html --per-layer",
    "eval": "graphkit eval model.int8.onnx --model-config examples/models/posenet.yaml --workers 2",
    "export": "graphkit export plan.json model.onnx --target ncnn,tensorrt,atc,vacc "
    "--out-dir deploy/ --data examples/models/posenet.yaml",
    "inspect": "graphkit inspect model.onnx --json -",
    "passes": "graphkit passes --short",
    "table": "graphkit table show plan.json --weights",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (they are docstrings); every option with a real default
    says it, unless its help already does."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" not in text
            and action.default not in (None, False, argparse.SUPPRESS, [], "")
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def module_doc(module: str) -> tuple[str, str]:
    """(first line, full text) of a module's docstring, read from its source without
    importing it: `graphkit --help` stays fast (no onnx, no onnxruntime)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    doc = inspect.cleandoc(ast.get_docstring(ast.parse(source)) or "")
    first = doc.splitlines()[0] if doc else ""
    return first, doc


def add_command(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """A subparser whose help and description are the docstring of the library module
    the command calls (COMMANDS)."""
    first, full = module_doc(COMMANDS[name][1])
    return sub.add_parser(
        name,
        help=first,
        description=full,
        epilog=f"example: {EXAMPLES[name]}" if name in EXAMPLES else None,
        formatter_class=HelpFormatter,
    )


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type of every count, limit and size: a whole number >= 1."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type of seeds: a whole number >= 0."""
    return _whole(text, 0)


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """--executor / --ray-address, the same on every command that can use Ray."""
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this machine (--workers processes); ray: Ray tasks on the cluster in "
        "RAY_ADDRESS or --ray-address, else on a local Ray; --workers then sets the number "
        "of shards (default: one per CPU of the cluster). Results are the same. "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to join (e.g. ray://head:10001; default: RAY_ADDRESS)",
    )


def timed_log(prefix: str = "  ") -> Callable[[str], None]:
    """A `log` for library calls: each line with the seconds since this was made, so a
    long step is visible while it runs (and in piped CI logs)."""
    import time

    start = time.perf_counter()

    def log(msg: str) -> None:
        console.print(f"{prefix}[dim]{time.perf_counter() - start:6.1f}s[/] {msg}")

    return log


def short_name(name: str, width: int = 48) -> str:
    """Long exporter names cut in the middle: the model part that says where (the start)
    and the op part that says what (the end) both stay, and each row stays on one line."""
    if len(name) <= width:
        return name
    head = (width - 1) // 3
    return name[:head] + "…" + name[-(width - 1 - head) :]


class PipedProgress(Progress):
    """rich's live bar on a terminal; where output is piped (CI logs, `| tee`), where rich
    draws nothing until the end, a plain line per running task every `interval` seconds."""

    def __init__(self, *columns, interval: float = 10.0, **kwargs):
        super().__init__(*columns, **kwargs)
        self.interval = interval
        self._done = threading.Event()
        self._reporter: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        if not self.console.is_terminal:
            self._reporter = threading.Thread(target=self._report, daemon=True)
            self._reporter.start()

    def stop(self) -> None:
        self._done.set()
        if self._reporter is not None:
            self._reporter.join()
        super().stop()

    def _report(self) -> None:
        while not self._done.wait(self.interval):
            for task in self.tasks:
                if task.visible and not task.finished and task.started:
                    self.console.print(status_line(task), markup=False, highlight=False)


def status_line(task) -> str:
    """`calibrate: 40/86, 12 s, about 14 s left` for a rich progress task."""
    done = f"{task.completed:.0f}" + (f"/{task.total:.0f}" if task.total else "")
    left = task.time_remaining
    eta = f", about {left:.0f} s left" if left is not None and task.total else ""
    return f"{task.description}: {done}, {task.elapsed or 0:.0f} s{eta}"


def progress_bar(
    label: str = "{task.description}", unit: str = "", interval: float = 10.0
) -> Progress:
    """The progress bar every long command shows: label, bar, done/total, elapsed and the
    time left; piped, a status line every `interval` seconds instead."""
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    return PipedProgress(*columns, console=console, transient=True, interval=interval)


def add_json_argument(p: argparse.ArgumentParser, what: str) -> None:
    """`--json FILE`: the command's result for programs; '-' writes it to stdout (the
    console text then goes to stderr)."""
    p.add_argument(
        "--json",
        metavar="FILE",
        help=f"write {what} as JSON to FILE ('-': to stdout, the console text to stderr)",
    )


def write_json(path: str | None, doc: object) -> None:
    """The `--json` output: stdout for '-', else written atomically (and said so)."""
    import json

    if not path:
        return
    text = json.dumps(doc, indent=1, default=str)
    if path == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    from graphkit.model import atomic_write_text

    atomic_write_text(path, text)
    console.print(f"wrote {path}", markup=False)


def _external_data_files(model: Path) -> set[Path]:
    """The external data files an ONNX input reads (nothing for other inputs or files
    that do not parse: loading them reports that later)."""
    if model.suffix != ".onnx" or not model.is_file():
        return set()
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model: load_model says why, later
        return set()
    return {
        (model.parent / e.value).resolve()
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


def spec_inputs(spec: str | None) -> list[str]:
    """The spec file and the data files it reads (annotations, detections, arrays): what
    no output may replace. Empty for a spec that does not load (its command says why)."""
    if not spec:
        return []
    from graphkit.data import load_input_spec
    from graphkit.errors import GraphkitError

    try:
        source = load_input_spec(spec).source
    except GraphkitError:
        return [spec]
    return [spec] + [p for p in (source.ann, source.dets, source.path) if p]


def check_output_files(inputs: str | Sequence[str | None], **outputs: str | None) -> None:
    """Refuse, before any work, outputs that would replace a file the command reads (or a
    model's external weights), name one file twice, or cannot be written: `json=path`
    style keywords (underscores for dashes) -> one sentence."""
    import tempfile

    from graphkit import scratch
    from graphkit.errors import GraphkitError

    given = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs if i]
    read = {Path(i).resolve() for i in given}
    weights: set[Path] | None = None  # the inputs' data files, parsed only when needed
    seen: dict[Path, str] = {}
    for flag, value in outputs.items():
        if not value or (flag == "json" and value == "-"):
            continue
        name = "-o" if flag == "output" else "--" + flag.replace("_", "-")
        p = Path(value)
        if p.resolve() in read:
            what = "the input model" if p.suffix in (".onnx", ".param", ".bin") else "an input"
            raise GraphkitError(f"{name} {value} is {what}; write to another file")
        if p.resolve() in seen:
            raise GraphkitError(
                f"{seen[p.resolve()]} and {name} both write {value}; give each its own file"
            )
        seen[p.resolve()] = name
        data = Path(str(p) + ".data")
        if data.exists() and weights is None:
            weights = {d for m in read for d in _external_data_files(m)}
        if data.exists() and data.resolve() in (weights or set()):  # a big output's weights
            raise GraphkitError(
                f"{name} {value} would write {p.name}.data, the file the input model's "
                "weights are read from; write to another file"
            )
        if p.is_dir():
            raise GraphkitError(f"{name} {value} is a directory; give a file name")
        if not p.parent.is_dir():
            raise GraphkitError(f"{name} {value}: directory {p.parent} does not exist")
        if p.exists() and not os.access(p, os.W_OK):
            raise GraphkitError(f"{name} {value} exists and cannot be replaced (not writable)")
        try:  # the only sure test that a file can be made there (/proc, read-only mounts)
            fd, probe = tempfile.mkstemp(prefix=scratch.prefix("probe-"), dir=p.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise GraphkitError(
                f"{name} {value}: directory {p.parent} is not writable ({exc.strerror})"
            ) from None
