"""Passes that choose what a model computes: `select-outputs` and `extract`.

Both are graphkit's own (no library cuts an ONNX graph at arbitrary tensors and checks the
cut is closed). They also provide the small graph helpers (who produces a tensor, which
nodes an output needs, pruning) that `strip-flip-test` reuses.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import onnx
from onnx import helper

from graphkit.errors import GraphkitError
from graphkit.graph import ancestors, node_inputs, producers, skeleton
from graphkit.passes.base import PassResult, register


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Known types of every tensor (graph inputs/outputs, value_info, shape inference)."""
    known: dict[str, onnx.ValueInfoProto] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception:  # noqa: BLE001 - failing inference only means fewer known types
        inferred = model
    for vi in list(inferred.graph.value_info) + list(model.graph.value_info):
        known.setdefault(vi.name, vi)
    for vi in list(model.graph.input) + list(model.graph.output):
        known[vi.name] = vi
    for init in model.graph.initializer:
        known.setdefault(
            init.name, helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        )
    return known


def prune(
    model: onnx.ModelProto,
    outputs: list[onnx.ValueInfoProto],
    inputs: list[onnx.ValueInfoProto] | None = None,
) -> int:
    """Keep only what `outputs` need (in place); return the number of nodes removed.

    `inputs` replaces the graph inputs (default: the original inputs that are still used).
    Initializers and value_info entries nobody reads any more are dropped too.
    """
    graph = model.graph
    stop = {vi.name for vi in inputs} if inputs is not None else set()
    keep = ancestors(graph, [o.name for o in outputs], stop)
    kept_nodes = [n for i, n in enumerate(graph.node) if i in keep]
    removed = len(graph.node) - len(kept_nodes)
    used: set[str] = {o.name for o in outputs}
    produced: set[str] = set()
    for node in kept_nodes:
        used.update(node_inputs(node))
        produced.update(node.output)
    if inputs is None:
        inits = {i.name for i in graph.initializer}
        inputs = [vi for vi in graph.input if vi.name in used and vi.name not in inits]
        inputs += [vi for vi in graph.input if vi.name in used and vi.name in inits]
    new_inits = [i for i in graph.initializer if i.name in used and i.name not in stop]
    new_vi = [
        vi
        for vi in graph.value_info
        if vi.name in produced and vi.name not in {o.name for o in outputs}
    ]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    for field, values in (
        (graph.input, list(inputs)),
        (graph.output, list(outputs)),
        (graph.initializer, new_inits),
        (graph.value_info, new_vi),
    ):
        copies = [type(v)() for v in values]
        for c, v in zip(copies, values):
            c.CopyFrom(v)
        del field[:]
        field.extend(copies)
    return removed


def _unknown(name: str, known: Iterable[str], what: str) -> GraphkitError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return GraphkitError(f"'{name}' is not {what}{hint}")


def all_tensor_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {vi.name for vi in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(n for n in node.output if n)
    return names


# --------------------------------------------------------------------------- select-outputs


@register("select-outputs", changes_outputs=True)
def select_outputs(
    model: onnx.ModelProto,
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
    outs = list(model.graph.output)
    by_name = {o.name: o for o in outs}
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
    dropped = [o.name for o in outs if o.name not in {c.name for c in chosen}]
    order_same = [o.name for o in outs] == [c.name for c in chosen]
    if order_same:
        return PassResult(
            model,
            False,
            ["all outputs already selected; nothing to do"],
            {o.name: o.name for o in outs},
        )
    inputs_before = [i.name for i in model.graph.input]
    removed = prune(model, chosen)
    notes = [f"kept output(s) {', '.join(c.name for c in chosen)}"]
    if dropped:
        notes.append(f"dropped output(s) {', '.join(dropped)}; removed {removed} node(s)")
    lost = [n for n in inputs_before if n not in {i.name for i in model.graph.input}]
    real_lost = [n for n in lost if n not in {i.name for i in model.graph.initializer}]
    if real_lost:
        notes.append(f"removed input(s) that no longer feed anything: {', '.join(real_lost)}")
    return PassResult(model, True, notes, {c.name: c.name for c in chosen})


# --------------------------------------------------------------------------- extract


@register("extract", changes_outputs=True)
def extract(
    model: onnx.ModelProto,
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
    names = all_tensor_names(model)
    for n in list(inputs or []) + list(outputs or []):
        if n not in names:
            raise _unknown(n, names, "a tensor of the graph")
    if inputs is not None and not inputs:
        raise GraphkitError("extract: 'inputs' must list at least one tensor")
    if outputs is not None and not outputs:
        raise GraphkitError("extract: 'outputs' must list at least one tensor")
    out_names = list(dict.fromkeys(outputs)) if outputs else [o.name for o in graph.output]
    in_names = list(dict.fromkeys(inputs)) if inputs else None
    inits = {i.name for i in graph.initializer}
    if in_names:
        bad = [n for n in in_names if n in inits]
        if bad:
            raise GraphkitError(f"'{bad[0]}' is a weight (initializer), not a tensor to cut at")
        both = set(in_names) & set(out_names)
        if both:
            raise GraphkitError(f"'{min(both)}' cannot be both a new input and an output")

    stop = set(in_names or [])
    needed = ancestors(graph, out_names, stop)
    reads: set[str] = set(out_names)
    for i in needed:
        reads.update(node_inputs(graph.node[i]))
    if in_names is not None:
        old_inputs = {vi.name for vi in graph.input} - inits
        stray = [n for n in out_names if n in old_inputs and n not in stop]
        stray += sorted((reads & old_inputs) - stop)
        if stray:
            raise GraphkitError(
                f"the cut is not closed: the outputs still depend on graph input '{stray[0]}', "
                "which is not among the new inputs (add it to 'inputs' or cut later)"
            )
        unused = [n for n in in_names if n not in reads]
        if unused:
            raise GraphkitError(f"new input '{unused[0]}' does not feed any of the outputs")
        prod = producers(graph)
        for n in in_names:
            if prod.get(n) in needed:
                raise GraphkitError(
                    f"cannot cut at '{n}': the node producing it also produces a tensor "
                    "the outputs need"
                )

    known = value_infos(model)
    new_outputs = [_typed(model, known, n, "output") for n in out_names]
    new_inputs = None
    if in_names is not None:
        new_inputs = [_typed(model, known, n, "input") for n in in_names]
    before_nodes = len(graph.node)
    old_outputs = [o.name for o in graph.output]
    old_inputs_list = [i.name for i in graph.input if i.name not in inits]
    removed = prune(model, new_outputs, new_inputs)
    notes = []
    if in_names is not None and in_names != old_inputs_list:
        notes.append(f"new input(s): {', '.join(_describe(v) for v in model.graph.input)}")
    if out_names != old_outputs:
        notes.append(f"new output(s): {', '.join(_describe(v) for v in model.graph.output)}")
    measured = [
        n for n in (in_names or []) + out_names if n not in known or not _has_type(known[n])
    ]
    if measured:
        notes.append(f"type/shape of {', '.join(measured)} measured with one onnxruntime run")
    notes.append(f"removed {removed} of {before_nodes} node(s)")
    changed = (
        removed > 0
        or out_names != old_outputs
        or (in_names is not None and in_names != old_inputs_list)
    )
    return PassResult(model, changed, notes, {n: n for n in out_names})


def _has_type(vi: onnx.ValueInfoProto | None) -> bool:
    return vi is not None and vi.type.tensor_type.elem_type != 0


def _typed(
    model: onnx.ModelProto, known: dict[str, onnx.ValueInfoProto], name: str, role: str
) -> onnx.ValueInfoProto:
    """A ValueInfo with dtype (and shape where known) for a tensor becoming an input/output."""
    vi = known.get(name)
    if (
        vi is not None
        and _has_type(vi)
        and (role == "output" or vi.type.tensor_type.HasField("shape"))
    ):
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(vi)
        return copy
    # Shape inference does not know it: measure it once on sample inputs.
    from graphkit.runtime import ort as ort_rt

    feeds = ort_rt.sample_inputs(model)
    value = ort_rt.run(model, feeds, outputs=[name])[name]
    elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    return helper.make_tensor_value_info(name, elem, list(value.shape))


def _describe(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "?"
    return f"{vi.name} {dtype}{dims}"
