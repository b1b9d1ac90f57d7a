"""Passes that choose what a model computes: `select-outputs` and `extract`.

Both are graphkit's own (no library cuts an ONNX graph at arbitrary tensors and checks the
cut is closed). They also provide the small graph helpers (which nodes an output needs,
pruning, known tensor types) that `strip-flip-test` reuses.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.irgraph import (
    ancestors,
    name_of,
    reads,
    remove_nodes,
    skeleton,
    to_proto,
    values_by_name,
)
from graphkit.passes.base import PassResult, register

# --------------------------------------------------------------------------- graph helpers


def value_infos(model: ir.Model) -> dict[str, ir.Value]:
    """Known type and shape of every tensor of the graph, by name: graph inputs and outputs
    as declared, others from shape inference, else as the model declares them.

    The values returned only carry `dtype`/`shape`; inferred ones belong to no graph.
    """
    known = _inferred(model)
    for name, value in values_by_name(model.graph).items():
        declared = value.is_graph_input() or value.is_graph_output()
        if declared or (name not in known and (value.type is not None or value.is_initializer())):
            known[name] = value
    return known


def _inferred(model: ir.Model) -> dict[str, ir.Value]:
    """Types and shapes onnx shape inference finds for the tensors inside the graph."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception:  # noqa: BLE001 - failing inference only means fewer known types
        return {}
    known: dict[str, ir.Value] = {}
    for vi in inferred.graph.value_info:
        known.setdefault(vi.name, ir.serde.deserialize_value_info_proto(vi, None))
    return known


def _has_type(value: ir.Value | None) -> bool:
    return value is not None and value.dtype is not None


def prune(
    model: ir.Model,
    outputs: list[ir.Value],
    inputs: list[ir.Value] | None = None,
) -> int:
    """Keep only what `outputs` need (in place); return the number of nodes removed.

    `inputs` replaces the graph inputs (default: the original inputs that are still used);
    a value written by a node becomes a new graph input of the same name, type and shape.
    Initializers nobody reads any more are dropped too.
    """
    g = model.graph
    stop = list(inputs) if inputs is not None else []
    keep = set(ancestors(outputs, stop))
    dead = [n for n in g if n not in keep]
    used = {name_of(v) for v in outputs} | {name_of(v) for n in keep for v in reads(n)}
    g.outputs.clear()
    g.outputs.extend(outputs)
    if inputs is None:
        old = list(g.inputs)
        new = [v for v in old if name_of(v) in used and not v.is_initializer()]
        new += [v for v in old if name_of(v) in used and v.is_initializer()]
    else:
        new = [_as_input(v) for v in inputs]
    remove_nodes(g, dead)
    g.inputs.clear()
    g.inputs.extend(new)
    stop_names = {name_of(v) for v in stop}
    for name in [n for n in g.initializers if n not in used or n in stop_names]:
        g.initializers.pop(name)
    return len(dead)


def _as_input(value: ir.Value) -> ir.Value:
    """`value` itself when it can be a graph input, else a new value of the same name, type
    and shape that every reader now reads (its producer is left for pruning)."""
    if value.producer() is None:
        return value
    fresh = ir.Value(name=value.name, type=value.type, shape=value.shape)
    value.replace_all_uses_with(fresh)
    return fresh


def _unknown(name: str, known: Iterable[str], what: str) -> GraphkitError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return GraphkitError(f"'{name}' is not {what}{hint}")


def all_tensor_names(model: ir.Model) -> set[str]:
    return set(values_by_name(model.graph))


# --------------------------------------------------------------------------- select-outputs


@register("select-outputs", changes_outputs=True)
def select_outputs(
    model: ir.Model,
    *,
    names: list[str] | None = None,
    last: bool = False,
    index: int | None = None,
) -> PassResult:
    """Keep only some graph outputs and remove everything that no longer contributes.

    Give exactly one of: `names` (outputs to keep, in that order), `last: true` (keep the
    last output, as mmpose's `inference_model` keeps only the last stage of a multi-stage
    head), or `index` (position in the output list, negative counts from the end).
    Graph inputs that no longer feed anything are removed as well. graphkit's own pass.
    """
    given = sum([names is not None, bool(last), index is not None])
    if given != 1:
        raise GraphkitError("select-outputs needs exactly one of the options names, last or index")
    outs = list(model.graph.outputs)
    by_name = {name_of(o): o for o in outs}
    if names is not None:
        if not names:
            raise GraphkitError("select-outputs needs at least one name in 'names'")
        for n in names:
            if n in by_name:
                continue
            if n in all_tensor_names(model):
                raise GraphkitError(
                    f"'{n}' is an intermediate tensor, not an output of the model; "
                    "use the extract pass to cut there"
                )
            raise _unknown(n, by_name, f"an output of the model (outputs: {', '.join(by_name)})")
        chosen = [by_name[n] for n in dict.fromkeys(names)]
    else:
        pos = -1 if last else index
        assert pos is not None
        if not -len(outs) <= pos < len(outs):
            raise GraphkitError(
                f"output index {pos} is out of range: the model has {len(outs)} outputs"
            )
        chosen = [outs[pos]]
    chosen_names = [name_of(c) for c in chosen]
    dropped = [name_of(o) for o in outs if name_of(o) not in chosen_names]
    if [name_of(o) for o in outs] == chosen_names:
        return PassResult(
            model,
            False,
            ["all outputs already selected; nothing to do"],
            {name_of(o): name_of(o) for o in outs},
        )
    inputs_before = [name_of(i) for i in model.graph.inputs]
    removed = prune(model, chosen)
    notes = [f"kept output(s) {', '.join(chosen_names)}"]
    if dropped:
        notes.append(f"dropped output(s) {', '.join(dropped)}; removed {removed} node(s)")
    kept_inputs = {name_of(i) for i in model.graph.inputs}
    lost = [n for n in inputs_before if n not in kept_inputs]
    real_lost = [n for n in lost if n not in model.graph.initializers]
    if real_lost:
        notes.append(f"removed input(s) that no longer feed anything: {', '.join(real_lost)}")
    return PassResult(model, True, notes, {n: n for n in chosen_names})


# --------------------------------------------------------------------------- extract


@register("extract", changes_outputs=True)
def extract(
    model: ir.Model,
    *,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
) -> PassResult:
    """Cut the graph at named tensors, which become the new inputs and/or outputs.

    Typical use: drop in-graph post-processing (`outputs: [heatmap tensor]`) or
    pre-processing (`inputs: [normalized image tensor]`). Types and shapes of new inputs
    come from shape inference (or, where it knows nothing, from one onnxruntime run on
    sample inputs). Everything that no longer contributes is removed. Fails with a clear
    sentence if a name is not a tensor of the graph or if the cut is not closed (an output
    still needs a graph input that is not among the new inputs). graphkit's own pass
    (onnx.utils.extract_model neither infers missing types nor explains a bad cut).
    """
    if inputs is None and outputs is None:
        raise GraphkitError("extract needs 'inputs', 'outputs' or both")
    graph = model.graph
    values = values_by_name(graph)
    for n in list(inputs or []) + list(outputs or []):
        if n not in values:
            raise _unknown(n, values, "a tensor of the graph")
    if inputs is not None and not inputs:
        raise GraphkitError("extract: 'inputs' must list at least one tensor")
    if outputs is not None and not outputs:
        raise GraphkitError("extract: 'outputs' must list at least one tensor")
    out_names = list(dict.fromkeys(outputs)) if outputs else [name_of(o) for o in graph.outputs]
    in_names = list(dict.fromkeys(inputs)) if inputs else None
    if in_names is not None:
        _check_cut(graph, values, in_names, out_names)

    known = value_infos(model)
    unknown = [n for n in out_names if not _has_type(known.get(n))]
    unknown += [n for n in in_names or [] if not _has_type(known.get(n)) or known[n].shape is None]
    measured = _measure(model, unknown)
    new_outputs = [_typed(values[n], known.get(n), measured.get(n)) for n in out_names]
    new_inputs = None
    if in_names is not None:
        new_inputs = [_typed(values[n], known.get(n), measured.get(n)) for n in in_names]
    before_nodes = len(graph)
    old_outputs = [name_of(o) for o in graph.outputs]
    old_inputs_list = [name_of(i) for i in graph.inputs if not i.is_initializer()]
    removed = prune(model, new_outputs, new_inputs)
    notes = []
    if in_names is not None and in_names != old_inputs_list:
        notes.append(f"new input(s): {', '.join(_describe(v) for v in graph.inputs)}")
    if out_names != old_outputs:
        notes.append(f"new output(s): {', '.join(_describe(v) for v in graph.outputs)}")
    untyped = [n for n in (in_names or []) + out_names if not _has_type(known.get(n))]
    if untyped:
        notes.append(f"type/shape of {', '.join(untyped)} measured with one onnxruntime run")
    notes.append(f"removed {removed} of {before_nodes} node(s)")
    changed = (
        removed > 0
        or out_names != old_outputs
        or (in_names is not None and in_names != old_inputs_list)
    )
    return PassResult(model, changed, notes, {n: n for n in out_names})


def _check_cut(
    graph: ir.Graph, values: dict[str, ir.Value], in_names: list[str], out_names: list[str]
) -> None:
    """Refuse a cut at weights, an open cut (outputs still need an old input), unused new
    inputs and a new input whose producer is still needed."""
    bad = [n for n in in_names if values[n].is_initializer()]
    if bad:
        raise GraphkitError(f"'{bad[0]}' is a weight (initializer), not a tensor to cut at")
    both = set(in_names) & set(out_names)
    if both:
        raise GraphkitError(f"'{min(both)}' cannot be both a new input and an output")
    stop = set(in_names)
    needed = set(ancestors([values[n] for n in out_names], [values[n] for n in in_names]))
    read = set(out_names) | {name_of(v) for node in needed for v in reads(node)}
    old_inputs = {name_of(v) for v in graph.inputs if not v.is_initializer()}
    stray = [n for n in out_names if n in old_inputs and n not in stop]
    stray += sorted((read & old_inputs) - stop)
    if stray:
        raise GraphkitError(
            f"the cut is not closed: the outputs still depend on graph input '{stray[0]}', "
            "which is not among the new inputs (add it to 'inputs' or cut later)"
        )
    unused = [n for n in in_names if n not in read]
    if unused:
        raise GraphkitError(f"new input '{unused[0]}' does not feed any of the outputs")
    for n in in_names:
        if values[n].producer() in needed:
            raise GraphkitError(
                f"cannot cut at '{n}': the node producing it also produces a tensor "
                "the outputs need"
            )


def _measure(model: ir.Model, names: list[str]) -> dict[str, np.ndarray]:
    """Values of tensors shape inference knows nothing about, from one run on sample inputs."""
    if not names:
        return {}
    from graphkit.runtime import ort as ort_rt

    proto = to_proto(model)
    feeds = ort_rt.sample_inputs(proto)
    return ort_rt.run(proto, feeds, outputs=list(dict.fromkeys(names)))


def typed_like(value: ir.Value, array: np.ndarray) -> ir.Value:
    """`value` with the dtype and shape of a measured array (to become a graph input or
    output)."""
    value.dtype = ir.DataType.from_numpy(array.dtype)
    value.shape = ir.Shape(array.shape)
    return value


def _typed(value: ir.Value, known: ir.Value | None, measured: np.ndarray | None) -> ir.Value:
    """`value` with the dtype (and shape where known) it gets as a graph input or output."""
    if measured is not None:
        typed_like(value, measured)
    elif known is not None and known is not value:
        value.type = known.type
        value.shape = known.shape
    return value


def _describe(value: ir.Value) -> str:
    dims: list[int | str] = []
    for d in value.shape or []:
        dims.append(d if isinstance(d, int) else (d.value or "?"))
    dtype = value.dtype.name.lower() if value.dtype is not None else "?"
    return f"{name_of(value)} {dtype}{dims}"
