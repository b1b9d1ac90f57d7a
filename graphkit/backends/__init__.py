"""The backends: one package each, and `export_all` writing a plan in each one's format.

Each backend is a package `graphkit.backends.<name>` that satisfies `Backend`: its
`export(plan, deploy_model, out_dir, *, keep_float, **options)` writes that backend's
files; ncnn also holds its converter (`convert`, pnnx), runtime (`runtime`, the ncnn
bindings) and the calibration of an existing ncnn model (`native`). `_common` (files,
the plan-against-model check), `qdq_rules` (TensorRT / ATC Q/DQ placement) and `readme`
are shared.

Targets: ncnn (pnnx conversion, ncnn2table table, ncnn2int8 model, run and checked here),
tensorrt (explicit Q/DQ ONNX + legacy calibration cache), atc (AMCT record, quant config,
Q/DQ ONNX, input-size gears), vacc (vamc build YAML + .npz calibration set), onnx (Q/DQ).
Every target is written from the plan's deploy model (`QuantPlan.deploy_model`): the
plan's int8 weights and biases reach each backend, so the integers are the same in all of
them. The table may also be a TensorRT calibration cache. A table made for another model
is refused; nothing is moved into --out-dir unless every target succeeded. See
docs/exporters.md.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import onnx

from graphkit import scratch
from graphkit.backends._common import ExportedFile, check_table
from graphkit.errors import GraphkitError, InputError
from graphkit.logs import step
from graphkit.model import atomic_write_text
from graphkit.quant.table import CalibrationTable
from graphkit.quant.targets import NAMES, NO_INT8, UNSIGNED_TARGETS, layers_without_int8

TARGETS = {name: f"graphkit.backends.{name}" for name in NAMES}
# the layer types a target can keep float, where it cannot keep any (vamc's config skips
# Conv and MatMul nodes by index: skip_conv_layers, skip_matmul_layers)
FLOAT_OP_TYPES = {"vacc": ("Conv", "ConvTranspose", "MatMul")}


def float_op_types(targets: Sequence[str]) -> tuple[str, ...] | None:
    """The layer types every one of `targets` can keep float (None: any)."""
    allowed: set[str] | None = None
    for target in targets:
        if target in FLOAT_OP_TYPES:
            types = set(FLOAT_OP_TYPES[target])
            allowed = types if allowed is None else allowed & types
    return None if allowed is None else tuple(sorted(allowed))


class Backend(Protocol):
    """What every backend package provides (checked by tests/test_export_cli.py)."""

    NAME: str

    def export(
        self,
        table: CalibrationTable,
        model: onnx.ModelProto,
        out_dir: Path,
        *,
        keep_float: Sequence[str] = (),
        **options: object,
    ) -> list[ExportedFile]: ...


def backend(name: str) -> Backend:
    """The backend package `name` (one of TARGETS), imported on first use."""
    if name not in TARGETS:
        raise GraphkitError(f"unknown backend '{name}' (known: {', '.join(TARGETS)})")
    return cast(Backend, importlib.import_module(TARGETS[name]))


def parse_targets(text: str | Sequence[str]) -> list[str]:
    """'ncnn,tensorrt' or a list -> validated target names (order kept, duplicates dropped)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for t in (i.strip().lower() for i in items):
        if not t:
            continue
        if t == "all":
            return list(TARGETS)
        if t not in TARGETS:
            raise GraphkitError(f"unknown export target '{t}' (known: {', '.join(TARGETS)}, all)")
        if t not in out:
            out.append(t)
    if not out:
        raise GraphkitError("no export target given")
    return out


def load_table(path: str | Path, model: onnx.ModelProto) -> CalibrationTable:
    """A graphkit JSON table, or a TensorRT calibration cache converted to one.

    A cache holds activations only, so the weight ranges are taken from the model
    (symmetric absmax per output channel), as every calibration does.
    """
    p = Path(path)
    if not p.is_file():
        raise GraphkitError(f"calibration table {p} does not exist")
    with open(p, "rb") as f:
        head = f.read(4)
    if head == b"TRT-":
        from graphkit.backends.tensorrt.exporter import read_cache
        from graphkit.quant.calibrate import weight_entries

        table = read_cache(p)
        if not table.activations:
            raise InputError(f"TensorRT cache {p} has no activation ranges (only its header)")
        table.weights = weight_entries(model)
        return table
    return CalibrationTable.load(p)


README_HEADER = "# int8 export of "


def check_out_dir(out: Path) -> None:
    """Refuse, before any work, an output directory that is a file or whose README.md
    graphkit did not write (it would be overwritten)."""
    if out.exists() and not out.is_dir():
        raise GraphkitError(f"output directory {out} is a file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise GraphkitError(f"output directory {out} is under {parent}, which is a file")
            break
    readme = out / "README.md"
    if readme.is_file():
        with open(readme, encoding="utf-8", errors="replace") as f:
            if not f.readline().startswith(README_HEADER):
                raise GraphkitError(
                    f"{readme} was not written by graphkit and would be overwritten; "
                    "choose another --out-dir"
                )


def check_options(options: dict[str, object]) -> None:
    """Refuse an option no exporter takes (a misspelling would otherwise be ignored: each
    exporter takes the options of all and keeps its own)."""
    known: set[str] = set()
    for module in TARGETS.values():
        params = inspect.signature(importlib.import_module(module).export).parameters
        known |= {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - known)
    if unknown:
        raise GraphkitError(
            f"no exporter takes the option '{unknown[0]}' (options: {', '.join(sorted(known))})"
        )


def _check_destination(out: Path, dest: Path) -> None:
    """A file graphkit will move into --out-dir can be put there: not onto a directory, not
    under a file, not over a file that cannot be replaced."""
    if dest.is_dir():
        raise GraphkitError(f"{dest} is a directory; graphkit would write a file there")
    for parent in dest.relative_to(out).parents:
        if (out / parent).exists() and not (out / parent).is_dir():
            raise GraphkitError(f"{out / parent} is a file; graphkit would make a folder there")
    if dest.exists() and not os.access(dest, os.W_OK):
        raise GraphkitError(f"{dest} exists and cannot be replaced (not writable)")
    folder = next((out / p for p in dest.relative_to(out).parents if (out / p).is_dir()), None)
    if folder is not None and not os.access(folder, os.W_OK):
        raise GraphkitError(f"{folder} is not writable")


def export_all(
    table: CalibrationTable,
    model: onnx.ModelProto,
    targets: str | Sequence[str],
    out_dir: str | Path,
    *,
    keep_float: Sequence[str] = (),
    samples: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
    image_sizes: list[tuple[int, int]] | None = None,
    trt_version: str = "10.13.0",
    model_name: str = "model",
    log: Callable[[str], None] | None = None,
    **options: object,
) -> list[ExportedFile]:
    """Write every target's files under out_dir (one sub-directory each) and README.md.

    samples: a function returning a fresh iterable of ONNX feeds dicts (batch 1), used by
    ncnn (calibrate the converted model) and vacc (the .npz calibration set).
    image_sizes: (h, w) of the dataset's images, for ATC gears of variable-size models.
    log: called with a line before each step that takes a while (pnnx, ncnn checks).
    """
    say = step(__name__, log)
    names = parse_targets(targets)
    check_options(options)
    check_table(table, model, keep_float)
    # every backend gets the plan's weights (integers, biases), not the raw float ones
    model = table.deploy_model(model)
    out = Path(out_dir)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # build everything in a scratch directory beside out_dir, move it in only when every
    # target succeeded: a failing target leaves no half-exported directory behind
    scratch.sweep(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=scratch.prefix("export-"), dir=out.parent))
    try:
        files: list[ExportedFile] = []
        signed = None  # (plan, model) with the unsigned activations shifted onto int8
        for name in names:
            say(f"{name}: writing")
            plan, deployed = table, model
            if table.unsigned_activations() and name not in UNSIGNED_TARGETS:
                if signed is None:
                    signed = _shifted(table, model, say)
                plan, deployed = signed
            mod = backend(name)
            files += mod.export(
                plan,
                deployed,
                tmp,
                keep_float=tuple(keep_float),
                samples=samples,
                image_sizes=image_sizes,
                trt_version=trt_version,
                log=say,
                **options,
            )
        sources = sorted(p for p in tmp.rglob("*") if not p.is_dir())
        moves = [(src, out / src.relative_to(tmp)) for src in sources]
        for dest in [d for _, d in moves] + [out / "README.md"]:  # all, before the first move
            _check_destination(out, dest)
        out.mkdir(exist_ok=True)
        # file by file: what graphkit writes replaces its earlier version, anything else
        # the user keeps in these folders stays
        for src, dest in moves:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in files:
        f.path = out / Path(f.path).relative_to(tmp)
    from graphkit.backends.readme import readme_text

    notes = []
    if signed is not None and (moved := len(table.unsigned_activations())):
        notes.append(
            f"The plan stores {moved} never-negative activations as uint8; the files of the "
            "targets with signed int8 only get those it can shift by 127 uint8 steps onto "
            "int8 with the same step (the Convs' biases and Pads filled with the shift take "
            "it back; graphkit.quant.shift), so their models hold Pad / Sub nodes the "
            "original has not."
        )
    atomic_write_text(out / "README.md", readme_text(table, files, out, model_name, notes))
    return files


def _shifted(
    table: CalibrationTable, model: onnx.ModelProto, say: Callable[[str], None]
) -> tuple[CalibrationTable, onnx.ModelProto]:
    """The plan and deploy model for a backend with signed int8 only: the unsigned
    activations that can be are shifted onto int8 with their uint8 step
    (`graphkit.quant.shift`), the others stored signed."""
    from graphkit.quant.shift import shift_for_signed

    unsigned = len(table.unsigned_activations())
    plan, shifted_model, shifted = shift_for_signed(table, model)
    say(
        f"{len(shifted)} of the plan's {unsigned} unsigned activations shifted onto int8 (same step)"
    )
    if len(shifted) < unsigned:
        say(
            f"{unsigned - len(shifted)} unsigned activations stored as int8, one bit less than "
            "measured (read by an int8 layer other than a Conv; calibrate with --target to "
            "measure the plan as it runs there)"
        )
    return plan, shifted_model


__all__ = [
    "NO_INT8",
    "TARGETS",
    "UNSIGNED_TARGETS",
    "ExportedFile",
    "export_all",
    "float_op_types",
    "layers_without_int8",
    "load_table",
    "parse_targets",
]
