"""One-layer-at-a-time quantization: each layer's own contribution to the output error.

For every layer that reads dequantized inputs in the Q/DQ model, a model is built from the
FP32 reference with only that layer's Q/DQ pairs copied in (same scales, same int8
weights), everything else float. Running it against the reference over the data gives the
error that layer alone causes at the model outputs: the ranking used to pick layers to
keep in float. Deriving the models from the quantized model itself (instead of
re-quantizing) guarantees the per-layer numbers describe exactly the model being shipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx

from graphkit.errors import GraphkitError
from graphkit.evaluators.executors import OnnxExecutor
from graphkit.metrics import RunningDiff, finite_or_none


def quantized_layers(quant: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Non-Q/DQ nodes of a Q/DQ model that read at least one DequantizeLinear output."""
    producer = {o: n for n in quant.graph.node for o in n.output}
    out = []
    for node in quant.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(
            producer.get(t) is not None and producer[t].op_type == "DequantizeLinear"
            for t in node.input
        ):
            out.append(node)
    return out


def input_chain(
    producer: dict[str, onnx.NodeProto], tensor: str
) -> tuple[list[onnx.NodeProto], str] | None:
    """The [QuantizeLinear,] DequantizeLinear nodes that make a layer's input `tensor`, and
    the tensor they start from (the float activation, or the integer weight); None when
    `tensor` is not a DequantizeLinear output."""
    dq = producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    chain, src = [dq], dq.input[0]
    q = producer.get(src)
    if q is not None and q.op_type == "QuantizeLinear":
        chain.insert(0, q)
        src = q.input[0]
    return chain, src


def counterpart(ref: onnx.ModelProto, layer: onnx.NodeProto) -> onnx.NodeProto | None:
    """The reference node a quantized layer came from: same name, else same outputs."""
    for n in ref.graph.node:
        if layer.name and n.name == layer.name and n.op_type == layer.op_type:
            return n
    return next((n for n in ref.graph.node if list(n.output) == list(layer.output)), None)


def single_layer_model(
    ref: onnx.ModelProto, quant: onnx.ModelProto, layer: onnx.NodeProto
) -> onnx.ModelProto:
    """The reference with only `layer`'s input Q/DQ (from `quant`) inserted."""
    producer = {o: n for n in quant.graph.node for o in n.output}
    q_inits = {i.name: i for i in quant.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(ref)
    target = counterpart(model, layer)
    if target is None or len(target.input) < len(layer.input):
        raise GraphkitError(f"layer '{layer.name}' has no counterpart in the reference model")
    have = {i.name for i in model.graph.initializer}
    tensors = {t for n in model.graph.node for t in list(n.input) + list(n.output)}
    tensors |= {i.name for i in model.graph.input} | have
    new_nodes: list[onnx.NodeProto] = []

    def copy_inits(node: onnx.NodeProto) -> None:
        for t in node.input:
            if t in q_inits and t not in have:
                model.graph.initializer.append(q_inits[t])
                have.add(t)

    for slot, t in enumerate(layer.input):
        found = input_chain(producer, t)
        if found is None:
            continue
        chain, src = found
        dq = chain[-1]
        if src not in tensors and src not in q_inits:
            raise GraphkitError(
                f"layer '{layer.name}' quantizes tensor '{src}' that the reference does not have"
            )
        renamed: dict[str, str] = {}
        for n in chain:
            copy_inits(n)
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = f"{n.name}__single_layer"
            for k, t_in in enumerate(c.input):
                c.input[k] = renamed.get(t_in, t_in)
            for k, t_out in enumerate(c.output):
                # the quantizer may reuse a name the reference has (bias DQ -> 'b2')
                renamed[t_out] = c.output[k] = f"{t_out}__single_layer"
            new_nodes.append(c)
        target.input[slot] = renamed[dq.output[0]]
    # Insert the Q/DQ nodes right before the target so the graph stays topologically sorted.
    nodes = list(model.graph.node)
    pos = next(
        i for i, n in enumerate(nodes) if n is target or list(n.output) == list(target.output)
    )
    del model.graph.node[:]
    model.graph.node.extend(nodes[:pos] + new_nodes + nodes[pos:])
    ref_op = {o.domain: o.version for o in model.opset_import}
    for o in quant.opset_import:
        if o.domain in ("", "ai.onnx") and o.version > ref_op.get(o.domain, 0):
            for mine in model.opset_import:
                if mine.domain == o.domain:
                    mine.version = o.version
    return model


def with_float_twin(model: onnx.ModelProto, source: onnx.NodeProto, own: str) -> str:
    """Add a float copy of the layer (its reference inputs, `source`) and make its output and
    the quantized layer's `own` output graph outputs; returns the copy's output name.

    One optimized run of the single-layer model then gives the layer's own error: no second
    run of the reference per layer, and no unoptimized session for an inner tensor."""
    twin = onnx.NodeProto()
    twin.CopyFrom(source)
    twin.name = f"{source.name}__float_twin"
    for k, t in enumerate(twin.output):
        twin.output[k] = f"{t}__float_twin" if t else t
    model.graph.node.append(twin)  # after every producer of its inputs: order stays valid
    out = twin.output[list(source.output).index(own)]
    for name in (own, out):
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    return out


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

    `samples` is a list (it is replayed once per layer); reference outputs are computed
    once and kept, so memory is the model outputs of len(samples) images.
    """
    ref_exec = OnnxExecutor(ref)
    outs = ref_exec.outputs()
    picked = [n for n in quantized_layers(quant) if layers is None or n.name in layers]
    if not picked:
        raise GraphkitError("the quantized model has no Q/DQ layers to evaluate one at a time")
    if on_total is not None:
        on_total(len(picked))
    ref_outputs = [ref_exec.run(f, outs) for f in samples]
    rows = []
    for layer in picked:
        try:
            model = single_layer_model(ref, quant, layer)
        except GraphkitError as exc:
            rows.append(
                {
                    "node": layer.name or layer.output[0],
                    "op_type": layer.op_type,
                    "output": layer.output[0],
                    "output_sqnr_db": None,
                    "output_cosine": None,
                    "output_rel_l2": None,
                    "layer_sqnr_db": None,
                    "skipped": str(exc),
                }
            )
            continue
        source = counterpart(ref, layer)
        own = [o for o in source.output if o and o not in outs][:1] if source is not None else []
        if own and source is not None:
            twin = with_float_twin(model, source, own[0])
        layer_exec = OnnxExecutor(model)
        names = outs + (own + [twin] if own else [])
        out_diffs = {o: RunningDiff() for o in outs}
        own_diff = RunningDiff()
        for feeds, ref_out in zip(samples, ref_outputs):
            got = layer_exec.run(feeds, names)
            for o in outs:
                out_diffs[o].update(ref_out[o], got[o], o)
            if own:
                own_diff.update(got[twin], got[own[0]], own[0])
        worst = min(out_diffs.values(), key=lambda d: d.sqnr_db)
        rows.append(
            {
                "node": layer.name or layer.output[0],
                "op_type": layer.op_type,
                "output": layer.output[0],
                "output_sqnr_db": finite_or_none(worst.sqnr_db),
                "output_cosine": finite_or_none(worst.cosine),
                "output_rel_l2": finite_or_none(worst.rel_l2),
                "layer_sqnr_db": finite_or_none(own_diff.sqnr_db) if own else None,
            }
        )
        if on_layer is not None:
            on_layer(layer.name)
    return rows


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

    picked = [n.name for n in quantized_layers(quant) if layers is None or n.name in layers]
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
    for n in quantized_layers(quant):
        yield n.name
