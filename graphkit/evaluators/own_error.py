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
from onnx import helper

from graphkit.evaluators.executors import OnnxExecutor
from graphkit.evaluators.per_layer import counterpart, input_chain, quantized_layers
from graphkit.metrics import RunningDiff, finite_or_none
from graphkit.runtime.ort import make_session

Feeds = dict[str, np.ndarray]


class LayerAlone:
    """One quantized layer with its input Q/DQ chains, run on given float tensors."""

    def __init__(self, quant: onnx.ModelProto, layer: onnx.NodeProto):
        producer = {o: n for n in quant.graph.node for o in n.output}
        inits = {i.name: i for i in quant.graph.initializer}
        self.layer = layer
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[str] = []
        for t in layer.input:
            if not t or t in inits:
                continue
            found = input_chain(producer, t)
            if found is None:
                self.inputs.append(t)
                continue
            chain, src = found
            self.nodes.extend(chain)
            if src not in inits:
                self.inputs.append(src)
        self.nodes.append(layer)
        self.inputs = list(dict.fromkeys(self.inputs))
        needed = {t for n in self.nodes for t in n.input}
        self._inits = [inits[t] for t in sorted(needed & set(inits))]
        self._opsets = list(quant.opset_import)
        self._ir = quant.ir_version
        self._session: Any = None

    def run(self, values: Feeds) -> np.ndarray:
        """The layer's first output from the float `values` of its inputs."""
        if self._session is None:
            graph = helper.make_graph(
                self.nodes,
                "layer",
                [  # shape left free: samples may differ in size
                    helper.make_tensor_value_info(
                        t, helper.np_dtype_to_tensor_dtype(values[t].dtype), None
                    )
                    for t in self.inputs
                ],
                [helper.make_empty_tensor_value_info(self.layer.output[0])],
                self._inits,
            )
            model = helper.make_model(graph, opset_imports=self._opsets, ir_version=self._ir)
            self._session = make_session(model, optimize=False)
        feeds = {t: values[t] for t in self.inputs}
        return self._session.run([self.layer.output[0]], feeds)[0]


def own_errors(
    ref: onnx.ModelProto,
    quant: onnx.ModelProto,
    samples: Iterable[Feeds],
    on_sample: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Per quantized layer (graph order): SQNR, cosine and max |error| of its output run
    alone on the reference's float inputs, against the reference's output."""
    ref_tensors = {t for n in ref.graph.node for t in n.output} | {i.name for i in ref.graph.input}
    rows: list[dict[str, Any]] = []
    alone: list[tuple[LayerAlone, str, RunningDiff]] = []
    for layer in quantized_layers(quant):
        one = LayerAlone(quant, layer)
        # the quantizer may rename a layer's output (onnxruntime: 'y' -> 'y_QuantizeLinear_Input')
        source = counterpart(ref, layer)
        ref_out = source.output[0] if source is not None else layer.output[0]
        missing = [t for t in [*one.inputs, ref_out] if t not in ref_tensors]
        row = {"node": layer.name or layer.output[0], "op_type": layer.op_type}
        rows.append(row)
        if missing:
            row["skipped"] = f"the reference model has no tensor '{missing[0]}'"
            continue
        alone.append((one, ref_out, RunningDiff()))
        row["_diff"] = alone[-1][2]
    if alone:
        names = sorted({t for one, out, _ in alone for t in [*one.inputs, out]})
        graph_inputs = {i.name for i in ref.graph.input}
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
