"""The pass interface: a named function from a model to a PassResult, with typed options.

A pass is registered with `@register("name")` on a function from an `onnx_ir.Model` (edited
in place or replaced) to a PassResult, whose keyword-only arguments are its options (type hints and defaults are the option schema, the docstring is what
`graphkit passes` prints). Passes whose purpose is to change the outputs (strip-flip-test,
select-outputs, extract) say so with `changes_outputs=True` and tell the verifier which
old tensor each kept output must equal through `PassResult.output_map`. The registered
function also takes a protobuf model and then returns one (converted in and out), so
callers outside a pipeline need not know about the IR.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError, InputError
from graphkit.validation import validate


@dataclass
class PassResult:
    """What a pass returns: the new model and a plain account of what it changed."""

    # an ir.Model from the pass itself; a protobuf when the caller handed in a protobuf
    model: Any
    changed: bool
    notes: list[str] = field(default_factory=list)
    # new output name -> tensor name in the model before the pass that it must equal.
    # None means "outputs keep their names and must all be equal".
    output_map: dict[str, str] | None = None
    # new graph input name -> the input of the model before the pass it replaces (rename).
    input_map: dict[str, str] | None = None


@dataclass
class PassInfo:
    name: str
    func: Callable[..., PassResult]
    changes_outputs: bool
    options: dict[str, inspect.Parameter]

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "(no description)")

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0]


REGISTRY: dict[str, PassInfo] = {}


def register(name: str, changes_outputs: bool = False) -> Callable:
    """Register a pass under `name`; its keyword-only parameters become its options."""

    def wrap(func: Callable[..., PassResult]) -> Callable[..., PassResult]:
        sig = inspect.signature(func)
        options = {
            p.name: p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        if name in REGISTRY:
            raise RuntimeError(f"pass {name!r} registered twice")

        @functools.wraps(func)
        def run(model: Any, **kwargs: Any) -> PassResult:
            if isinstance(model, ir.Model):
                return func(model, **kwargs)
            result = func(ir.from_proto(model), **kwargs)
            # unchanged, the caller gets its own model back, not a round-tripped copy
            result.model = ir.to_proto(result.model) if result.changed else model
            return result

        REGISTRY[name] = PassInfo(name, run, changes_outputs, options)
        return run

    return wrap


def get_pass(name: str) -> PassInfo:
    """Look a pass up by name, suggesting the closest one when it does not exist."""
    load_all()
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise GraphkitError(f"unknown pass '{name}'{hint}; `graphkit passes` lists them")


def option_type_name(param: inspect.Parameter) -> str:
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return "any"
    if isinstance(ann, str):
        return ann
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def validate_options(info: PassInfo, options: dict[str, Any] | None) -> dict[str, Any]:
    """Check option names and types against the pass signature; return the options."""
    options = dict(options or {})
    hints = typing.get_type_hints(info.func)
    for key, value in options.items():
        if key not in info.options:
            close = difflib.get_close_matches(key, list(info.options), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(info.options) or "none"
            raise InputError(
                f"pass '{info.name}' has no option '{key}'{hint}; its options are: {known}"
            )
        # every numeric pass option is a size, count, index or batch: finite, not negative
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and (not math.isfinite(value) or value < 0):
            raise InputError(
                f"option '{key}' of pass '{info.name}' must be a finite number of at "
                f"least 0, got {value!r}"
            )
        expected = hints.get(key)
        if expected is not None and expected is not Any:
            try:
                validate(expected, value, "")
            except GraphkitError:
                raise GraphkitError(
                    f"option '{key}' of pass '{info.name}' must be "
                    f"{option_type_name(info.options[key])}, got {type(value).__name__} "
                    f"{value!r}"
                ) from None
    for key, param in info.options.items():
        if param.default is inspect.Parameter.empty and key not in options:
            raise InputError(f"pass '{info.name}' needs option '{key}'")
    return options


def count_ops(model: onnx.ModelProto | ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    nodes = model.graph if isinstance(model, ir.Model) else model.graph.node
    for node in nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


_loaded = False


def load_all() -> dict[str, PassInfo]:
    """Import every pass module of this package so the registry is complete (by file name:
    the package itself is not imported from here, which would be a cycle)."""
    global _loaded
    if not _loaded:
        import pkgutil
        from pathlib import Path

        for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if mod.name != "base" and not mod.name.startswith("_"):
                importlib.import_module(f"graphkit.passes.{mod.name}")
        _loaded = True
    return REGISTRY
