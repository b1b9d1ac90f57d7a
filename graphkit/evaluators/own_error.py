"""Each quantized layer's own error: the layer run alone on the FP32 model's inputs.

The per-tensor diff ranks tensors by accumulated error, so its worst rows are the float
Adds downstream of the damage. Here every layer that reads dequantized inputs in the Q/DQ
model is cut out with the Q/DQ nodes in front of it and fed the reference model's float
tensors: its output against the reference's is the error that layer adds by itself. It
costs one extra reference run per sample (to collect the float inputs) and one run of
each layer, not of the network per layer (that is `--per-layer`, which measures the
effect at the model outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphkit.evaluators.executors import OnnxExecutor
from graphkit.evaluators.per_layer import Counterparts, input_chain, layer_nodes
from graphkit.irgraph import copy_node, name_of, to_ir, to_proto
from graphkit.metrics import RunningDiff, finite_or_none
from graphkit.runtime.ort import make_session

Feeds = dict[str, np.ndarray]


def _read(values: dict[str, ir.Value], name: str) -> ir.Value:
    """The value named `name`; a name nothing defines stays dangling, as in the protobuf."""
    value = values.get(name)
    return value if value is not None else ir.Value(name=name)


class LayerAlone:
    """One quantized layer (a node of the Q/DQ model `quant`) with its input Q/DQ chains,
    run on given float tensors."""

    def __init__(self, quant: ir.Model, layer: ir.Node):
        inits = quant.graph.initializers
        self.layer = layer
        self.nodes: list[ir.Node] = []
        self.inputs: list[str] = []
        for value in layer.inputs:
            t = name_of(value) if value is not None else ""
            if not t or t in inits:
                continue
            found = input_chain(value)
            if found is None:
                self.inputs.append(t)
                continue
            chain, src = found
            self.nodes.extend(chain)
            if name_of(src) not in inits:
                self.inputs.append(name_of(src))
        self.nodes.append(layer)
        # a tensor read in two inputs (Mul(x, x)) has one chain: copied once, not per input
        self.nodes = list({id(n): n for n in self.nodes}.values())
        self.inputs = list(dict.fromkeys(self.inputs))
        needed = {name_of(v) for n in self.nodes for v in n.inputs if v is not None}
        self._inits = [inits[t] for t in sorted(needed & set(inits))]
        self._opsets = dict(quant.opset_imports)
        self._ir = quant.ir_version
        self._session: Any = None

    def _model(self, values: Feeds) -> onnx.ModelProto:
        """The layer and its Q/DQ chains as a model of their own (copies: `quant` stays)."""
        by_name: dict[str, ir.Value] = {}
        inputs = []
        for t in self.inputs:  # shape left free: samples may differ in size
            dtype = ir.DataType.from_numpy(values[t].dtype)
            by_name[t] = ir.Value(name=t, type=ir.TensorType(dtype))
            inputs.append(by_name[t])
        inits = []
        for v in self._inits:
            by_name[name_of(v)] = ir.Value(name=v.name, type=v.type, const_value=v.const_value)
            if v.shape is not None:
                by_name[name_of(v)].shape = v.shape.copy()
            inits.append(by_name[name_of(v)])
        nodes = []
        for n in self.nodes:
            reads = [None if v is None else _read(by_name, name_of(v)) for v in n.inputs]
            c = copy_node(n, reads, n.name or "", [name_of(v) for v in n.outputs])
            by_name.update((name_of(v), v) for v in c.outputs)
            nodes.append(c)
        graph = ir.Graph(
            inputs,
            [nodes[-1].outputs[0]],
            nodes=nodes,
            initializers=inits,
            opset_imports=self._opsets,
            name="layer",
        )
        return to_proto(ir.Model(graph, ir_version=self._ir))

    def run(self, values: Feeds) -> np.ndarray:
        """The layer's first output from the float `values` of its inputs."""
        if self._session is None:
            self._session = make_session(self._model(values), optimize=False)
        feeds = {t: values[t] for t in self.inputs}
        out = name_of(self.layer.outputs[0])
        return self._session.run([out], feeds)[0]


def own_errors(
    ref: onnx.ModelProto,
    quant: onnx.ModelProto,
    samples: Iterable[Feeds],
    on_sample: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Per quantized layer (graph order): SQNR, cosine and max |error| of its output run
    alone on the reference's float inputs, against the reference's output."""
    ref_graph, quant_ir = to_ir(ref).graph, to_ir(quant)
    graph_inputs = {name_of(v) for v in ref_graph.inputs}
    ref_tensors = {name_of(v) for n in ref_graph for v in n.outputs} | graph_inputs
    counterpart = Counterparts(ref_graph)
    rows: list[dict[str, Any]] = []
    alone: list[tuple[LayerAlone, str, RunningDiff]] = []
    for _, layer in layer_nodes(quant_ir.graph):
        one = LayerAlone(quant_ir, layer)
        # the quantizer may rename a layer's output (onnxruntime: 'y' -> 'y_QuantizeLinear_Input')
        source = counterpart(layer)
        ref_out = name_of((source if source is not None else layer).outputs[0])
        missing = [t for t in [*one.inputs, ref_out] if t not in ref_tensors]
        row: dict[str, Any] = {
            "node": layer.name or name_of(layer.outputs[0]),
            "op_type": layer.op_type,
        }
        rows.append(row)
        if missing:
            row["skipped"] = f"the reference model has no tensor '{missing[0]}'"
            continue
        alone.append((one, ref_out, RunningDiff()))
        row["_diff"] = alone[-1][2]
    if alone:
        names = sorted({t for one, out, _ in alone for t in [*one.inputs, out]})
        ask = [t for t in names if t not in graph_inputs]
        executor = OnnxExecutor(ref)
        for feeds in samples:
            values = {**feeds, **executor.run(feeds, ask)}
            for one, out, diff in alone:
                diff.update(values[out], one.run(values), out)
            if on_sample is not None:
                on_sample()
    for row in rows:
        diff = row.pop("_diff", None)
        if diff is not None:
            row.update(
                sqnr_db=finite_or_none(diff.sqnr_db),
                cosine=finite_or_none(diff.cosine),
                max_abs_err=finite_or_none(diff.max_abs_err),
            )
    return rows


def worst_own_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lowest own SQNR first; exact layers (None) and skipped ones last."""
    return sorted(rows, key=lambda r: (r.get("sqnr_db") is None, r.get("sqnr_db") or 0.0))


__all__ = ["LayerAlone", "own_errors", "worst_own_first"]
