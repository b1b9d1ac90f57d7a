"""One-layer-at-a-time quantization: each layer's own contribution to the output error.

For every layer that reads dequantized inputs in the Q/DQ model, a model is built from the
FP32 reference with only that layer's Q/DQ pairs copied in (same scales, same int8
weights), everything else float. Running it against the reference over the data gives the
error that layer alone causes at the model outputs: the ranking used to pick layers to
keep in float. Deriving the models from the quantized model itself (instead of
re-quantizing) guarantees the per-layer numbers describe exactly the model being shipped.

Each layer's model is an edit of one onnx_ir copy of the reference (the Q/DQ nodes, the
initializers they read and the float twin go in, are serialized, and come out again), so
the graph is converted once, not once per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.errors import GraphkitError
from graphkit.evaluators.executors import OnnxExecutor
from graphkit.evaluators.graphinfo import QDQ_OPS, reads_dequantized
from graphkit.irgraph import copy_node, name_of, skeleton, to_ir, to_proto, values_by_name
from graphkit.metrics import RunningDiff, finite_or_none

Undo = list[Callable[[], None]]


def layer_nodes(graph: ir.Graph) -> list[tuple[int, ir.Node]]:
    """(position, node) of the non-Q/DQ nodes that read at least one DequantizeLinear output."""
    return [
        (i, n) for i, n in enumerate(graph) if n.op_type not in QDQ_OPS and reads_dequantized(n)
    ]


def quantized_layers(quant: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Non-Q/DQ nodes of a Q/DQ model that read at least one DequantizeLinear output."""
    return [quant.graph.node[i] for i, _ in layer_nodes(to_ir(quant).graph)]


def input_chain(value: ir.Value | None) -> tuple[list[ir.Node], ir.Value] | None:
    """The [QuantizeLinear,] DequantizeLinear nodes that make a layer's input `value`, and
    the value they start from (the float activation, or the integer weight); None when
    `value` is not a DequantizeLinear output."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] is None:
        return None
    chain, src = [dq], dq.inputs[0]
    q = src.producer()
    if q is not None and q.op_type == "QuantizeLinear" and q.inputs[0] is not None:
        chain.insert(0, q)
        src = q.inputs[0]
    return chain, src


def output_names(node: ir.Node) -> tuple[str, ...]:
    return tuple(name_of(v) for v in node.outputs)


class Counterparts:
    """The reference node a quantized layer came from: same name and op type, else same
    outputs (the first such node in graph order)."""

    def __init__(self, ref: ir.Graph):
        self.by_name: dict[tuple[str, str], ir.Node] = {}
        self.by_outputs: dict[tuple[str, ...], ir.Node] = {}
        for n in ref:
            self.by_name.setdefault((n.name or "", n.op_type), n)
            self.by_outputs.setdefault(output_names(n), n)

    def __call__(self, layer: ir.Node) -> ir.Node | None:
        if layer.name and (layer.name, layer.op_type) in self.by_name:
            return self.by_name[(layer.name, layer.op_type)]
        return self.by_outputs.get(output_names(layer))


def insert_layer_qdq(
    ref: ir.Model,
    quant: ir.Model,
    layer: ir.Node,
    target: ir.Node | None,
    tensors: dict[str, ir.Value],
    undo: Undo,
) -> ir.Node:
    """Put copies of `layer`'s input Q/DQ chains (from `quant`) in front of `target`, its
    counterpart in `ref`, with the quantized initializers `ref` lacks; `tensors` are the
    reference's values by name. Returns `target`; appends to `undo` what takes it all out
    again; raises GraphkitError, changing nothing, when the reference cannot take them."""
    graph, q_inits = ref.graph, quant.graph.initializers
    if target is None or len(target.inputs) < len(layer.inputs):
        raise GraphkitError(f"layer '{layer.name}' has no counterpart in the reference model")
    chains: list[tuple[int, list[ir.Node]]] = []
    for slot, value in enumerate(layer.inputs):
        found = input_chain(value)
        if found is None:
            continue
        chain, src = found
        if name_of(src) not in tensors and name_of(src) not in q_inits:
            raise GraphkitError(
                f"layer '{layer.name}' quantizes tensor '{name_of(src)}' that the reference "
                "does not have"
            )
        chains.append((slot, chain))

    added: dict[str, ir.Value] = {}

    def resolve(value: ir.Value | None, renamed: dict[str, ir.Value]) -> ir.Value | None:
        """What a copied Q/DQ node reads in the reference, by name."""
        if value is None:
            return None
        name = name_of(value)
        if name in renamed:
            return renamed[name]
        if name in added:
            return added[name]
        source = q_inits.get(name)
        if source is not None and name not in graph.initializers:
            init = ir.Value(name=name, const_value=source.const_value)  # see untyped_weights
            graph.register_initializer(init)
            added[name] = init
            return init
        found = tensors.get(name)
        return found if found is not None else ir.Value(name=name)  # dangling, as it was

    new_nodes: list[ir.Node] = []
    rewired: list[tuple[int, ir.Value | None]] = []
    copied: set[int] = set()
    renamed: dict[str, ir.Value] = {}
    for slot, chain in chains:
        for n in chain:
            # a tensor read in two inputs (Mul(x, x)) has one chain: copied once
            if id(n) in copied:
                continue
            copied.add(id(n))
            # the quantizer may reuse a name the reference has (bias DQ -> 'b2')
            names = [f"{name_of(v)}__single_layer" for v in n.outputs]
            inputs = [resolve(v, renamed) for v in n.inputs]
            c = copy_node(n, inputs, f"{n.name or ''}__single_layer", names)
            renamed.update((name_of(v), out) for v, out in zip(n.outputs, c.outputs))
            new_nodes.append(c)
        rewired.append((slot, target.inputs[slot]))
        target.replace_input_with(slot, renamed[name_of(chain[-1].outputs[0])])
    # Insert the Q/DQ nodes right before the target so the graph stays topologically sorted.
    if new_nodes:
        graph.insert_before(target, new_nodes)
    opsets = ref.opset_imports
    before = dict(opsets)
    for domain, version in quant.opset_imports.items():
        if domain in ("", "ai.onnx") and domain in opsets and version > opsets[domain]:
            opsets[domain] = version

    def restore() -> None:
        opsets.clear()
        opsets.update(before)
        for slot, old in reversed(rewired):
            target.replace_input_with(slot, old)
        if new_nodes:
            graph.remove(new_nodes, safe=True)
        for name in added:
            graph.initializers.pop(name)

    undo.append(restore)
    return target


def untyped_weights(graph: ir.Graph) -> None:
    """Forget the declared type and shape of the initializers that are not graph inputs (the
    tensors carry them): the serializer then writes no value_info for weights, and the
    per-layer models declare exactly what the reference does."""
    for value in graph.initializers.values():
        if not value.is_graph_input():
            value.type = None
            value.shape = None


def find_node(graph: ir.Graph, node: onnx.NodeProto) -> ir.Node:
    """The IR node of a protobuf node of the same model (tensor names are unique)."""
    outputs = tuple(node.output)
    for n in graph:
        if output_names(n) == outputs and n.op_type == node.op_type:
            return n
    raise GraphkitError(f"node '{node.name}' is not in the quantized model")


def single_layer_model(
    ref: onnx.ModelProto, quant: onnx.ModelProto, layer: onnx.NodeProto
) -> onnx.ModelProto:
    """The reference with only `layer`'s input Q/DQ (from `quant`) inserted."""
    ref_ir, quant_ir = to_ir(ref), to_ir(quant)
    untyped_weights(ref_ir.graph)
    node = find_node(quant_ir.graph, layer)
    target = Counterparts(ref_ir.graph)(node)
    insert_layer_qdq(ref_ir, quant_ir, node, target, values_by_name(ref_ir.graph), [])
    return to_proto(ref_ir)


def with_float_twin(
    graph: ir.Graph,
    source: ir.Node,
    inputs: Sequence[ir.Value | None],
    own: ir.Value,
    undo: Undo,
    dtype: ir.DataType = ir.DataType.FLOAT,
) -> ir.Value:
    """Add a float copy of the layer `source` reading `inputs` (its reference inputs, from
    before its Q/DQ went in) and make its output and the layer's `own` output graph outputs;
    returns the copy's output. `own` is declared `dtype` when it has no type (a float type:
    only a float output gets a twin). `undo` learns how to take it out again.

    One optimized run of the single-layer model then gives the layer's own error: no second
    run of the reference per layer, and no unoptimized session for an inner tensor."""
    names = [f"{name_of(v)}__float_twin" if name_of(v) else "" for v in source.outputs]
    twin = copy_node(source, inputs, f"{source.name or ''}__float_twin", names)
    graph.append(twin)  # after every producer of its inputs: order stays valid
    out = twin.outputs[list(source.outputs).index(own)]
    declared = own.type
    if own.type is None:
        own.type = ir.TensorType(dtype)
    out.type = own.type
    graph.outputs.extend([own, out])

    def restore() -> None:
        graph.outputs.pop()  # pop, not del: onnx_ir 1.1's del keeps the graph-output mark
        graph.outputs.pop()
        graph.remove(twin, safe=True)
        own.type = declared

    undo.append(restore)
    return out


FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


class ElementTypes:
    """Element type of a reference tensor: as declared, else as the quantized model declares
    the same layer output, else as onnx shape inference of the reference finds (run once,
    on its skeleton, when first needed, before any edit); None when nothing tells."""

    def __init__(self, ref: ir.Model):
        self.ref = ref
        self._inferred: dict[str, ir.DataType] | None = None

    def __call__(self, value: ir.Value, quantized: ir.Value | None) -> ir.DataType | None:
        if value.dtype is not None:
            return value.dtype
        if quantized is not None and quantized.dtype is not None:
            return quantized.dtype
        if self._inferred is None:
            self._inferred = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(skeleton(self.ref))
            except Exception:  # noqa: BLE001 - failing inference only means unknown types
                return None
            for vi in inferred.graph.value_info:
                if vi.type.tensor_type.elem_type:
                    self._inferred[vi.name] = ir.DataType(vi.type.tensor_type.elem_type)
        return self._inferred.get(name_of(value))


def _skipped(layer: ir.Node, reason: str) -> dict[str, Any]:
    out0 = name_of(layer.outputs[0])
    return {
        "node": layer.name or out0,
        "op_type": layer.op_type,
        "output": out0,
        "output_sqnr_db": None,
        "output_cosine": None,
        "output_rel_l2": None,
        "layer_sqnr_db": None,
        "skipped": reason,
    }


def per_layer_errors(
    ref: onnx.ModelProto,
    quant: onnx.ModelProto,
    samples: Sequence[dict[str, np.ndarray]],
    layers: Sequence[str] | None = None,
    on_layer: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """For each quantized layer alone: SQNR at its own output and at the model outputs
    (`on_total(n)` is told how many layers first, `on_layer` after each).

    The own-output SQNR needs a float output that is not a model output (a Shape or
    ArgMax layer gets only the model-output figures); a layer whose model cannot be built
    or run gets a row saying why it was skipped.

    `samples` is a list (it is replayed once per layer); reference outputs are computed
    once and kept, so memory is the model outputs of len(samples) images.
    """
    ref_exec = OnnxExecutor(ref)
    outs = ref_exec.outputs()
    quant_ir = to_ir(quant)
    picked = [
        n for _, n in layer_nodes(quant_ir.graph) if layers is None or (n.name or "") in layers
    ]
    if not picked:
        raise GraphkitError("the quantized model has no Q/DQ layers to evaluate one at a time")
    if on_total is not None:
        on_total(len(picked))
    ref_outputs = [ref_exec.run(f, outs) for f in samples]
    # one IR of the reference: each layer's edit is serialized, then taken out again
    ref_ir = to_ir(ref)
    untyped_weights(ref_ir.graph)
    counterpart = Counterparts(ref_ir.graph)
    tensors = values_by_name(ref_ir.graph)
    dtype_of = ElementTypes(ref_ir)
    rows: list[dict[str, Any]] = []
    for layer in picked:
        out0 = name_of(layer.outputs[0])
        source = counterpart(layer)
        # the layer's own output: the first that is not a model output, if it is float
        # (a float twin of an integer output would not load); an unknown type is taken
        # for float and, should that model not load, dropped
        own: list[ir.Value] = []
        dtype: ir.DataType | None = None
        for i, value in enumerate(source.outputs if source is not None else ()):
            if name_of(value) and name_of(value) not in outs:
                dtype = dtype_of(value, layer.outputs[i] if i < len(layer.outputs) else None)
                own = [value] if dtype is None or dtype in FLOAT_TYPES else []
                break
        build = (ref_ir, quant_ir, layer, source, tensors, outs)
        try:
            try:
                built = _layer_model(*build, own, dtype)
                out_diffs, own_diff = _run_layer(built, outs, samples, ref_outputs)
            except GraphkitError:
                if not own or dtype is not None:
                    raise
                own = []
                out_diffs, own_diff = _run_layer(
                    _layer_model(*build, own), outs, samples, ref_outputs
                )
        except GraphkitError as exc:
            rows.append(_skipped(layer, str(exc)))
            continue
        worst = min(out_diffs.values(), key=lambda d: d.sqnr_db)
        rows.append(
            {
                "node": layer.name or out0,
                "op_type": layer.op_type,
                "output": out0,
                "output_sqnr_db": finite_or_none(worst.sqnr_db),
                "output_cosine": finite_or_none(worst.cosine),
                "output_rel_l2": finite_or_none(worst.rel_l2),
                "layer_sqnr_db": None if own_diff is None else finite_or_none(own_diff.sqnr_db),
            }
        )
        if on_layer is not None:
            on_layer(layer.name or "")
    return rows


def _layer_model(
    ref: ir.Model,
    quant: ir.Model,
    layer: ir.Node,
    source: ir.Node | None,
    tensors: dict[str, ir.Value],
    outs: list[str],
    own: list[ir.Value],
    dtype: ir.DataType | None = None,
) -> tuple[onnx.ModelProto, list[str], str, str]:
    """The reference with `layer`'s Q/DQ in and, when `own` holds the layer's output, its
    float twin (`own` declared `dtype` if untyped): the model, the tensors to ask it for,
    the layer's own output and the twin's ("" for none). The reference IR is left as it
    was."""
    undo: Undo = []
    try:
        float_inputs = list(source.inputs) if source is not None else []
        target = insert_layer_qdq(ref, quant, layer, source, tensors, undo)
        if not own:
            return to_proto(ref), list(outs), "", ""
        twin = with_float_twin(
            ref.graph, target, float_inputs, own[0], undo, dtype or ir.DataType.FLOAT
        )
        mine, theirs = name_of(own[0]), name_of(twin)
        return to_proto(ref), [*outs, mine, theirs], mine, theirs  # a few ms; runs take seconds
    finally:
        for step in reversed(undo):
            step()


def _run_layer(
    built: tuple[onnx.ModelProto, list[str], str, str],
    outs: list[str],
    samples: Sequence[dict[str, np.ndarray]],
    ref_outputs: list[dict[str, np.ndarray]],
) -> tuple[dict[str, RunningDiff], RunningDiff | None]:
    """Differences of a single-layer model's outputs from the reference's, and of the
    layer's own output from its float twin (None without a twin)."""
    model, names, mine, twin = built
    layer_exec = OnnxExecutor(model)
    out_diffs = {o: RunningDiff() for o in outs}
    own_diff = RunningDiff() if twin else None
    for feeds, ref_out in zip(samples, ref_outputs):
        got = layer_exec.run(feeds, names)
        for o in outs:
            out_diffs[o].update(ref_out[o], got[o], o)
        if own_diff is not None:
            own_diff.update(got[twin], got[mine], mine)
    return out_diffs, own_diff


def _layer_group(names, ref_bytes, quant_bytes, samples):
    """One Ray task: `per_layer_errors` of some layers."""
    ref = onnx.ModelProto.FromString(ref_bytes)
    quant = onnx.ModelProto.FromString(quant_bytes)
    return per_layer_errors(ref, quant, samples, layers=set(names))


def per_layer_errors_ray(
    ref: onnx.ModelProto,
    quant: onnx.ModelProto,
    samples: Sequence[dict[str, np.ndarray]],
    layers: Sequence[str] | None = None,
    on_layer: Callable[[str], None] | None = None,
    address: str | None = None,
    on_total: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """`per_layer_errors` with the layers split over Ray tasks (`runtime.ray_tasks`): the
    same rows in the same order; the models and samples go through the object store."""
    from graphkit.runtime.ray_tasks import connect, run_tasks

    picked = [
        n.name or ""
        for _, n in layer_nodes(to_ir(quant).graph)
        if layers is None or (n.name or "") in layers
    ]
    if not picked:
        raise GraphkitError("the quantized model has no Q/DQ layers to evaluate one at a time")
    if on_total is not None:
        on_total(len(picked))
    count = max(1, min(len(picked), connect(address)))

    def done(_i: int, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if on_layer is not None:
                on_layer(row["node"])

    parts = run_tasks(
        _layer_group,
        [(picked[i::count],) for i in range(count)],
        shared={
            "ref_bytes": ref.SerializeToString(),
            "quant_bytes": quant.SerializeToString(),
            "samples": list(samples),
        },
        on_done=done,
        address=address,
    )
    by_node = {row["node"]: row for part in parts for row in part}
    return [by_node[name] for name in picked]


def sensitivity_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most damaging layer first (lowest output SQNR; exact layers last)."""
    return sorted(
        rows, key=lambda r: math.inf if r["output_sqnr_db"] is None else r["output_sqnr_db"]
    )


def iter_layers(quant: onnx.ModelProto) -> Iterator[str]:
    for _, n in layer_nodes(to_ir(quant).graph):
        yield n.name or ""
