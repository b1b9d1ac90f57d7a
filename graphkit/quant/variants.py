"""Q/DQ models of one plan that differ only in which layers are float, made by rewiring.

The default recipe scores dozens of Q/DQ models of one plan: one per weighted layer for
the sensitivity ranking, one per float-fallback step, one for bias correction. Built
through onnx_ir each costs more than running it on the held-out crops (~60 ms of Python
per model on movenet-lightning). `QdqVariants` builds the model with every layer int8
once; each candidate is then a protobuf copy of it in which:

1. each float layer reads what it reads in the float model (its activation, not the
   DequantizeLinear; its true float weights and bias, under a fresh name where the int8
   model holds other values under the same name, e.g. rounded weights);
2. Q/DQ nodes nobody reads any more are dropped, then initializers nobody reads.

The result computes what `insert_qdq(restore_weights(base, model, keep), table, keep)`
computes (tested: the same outputs); only the names of the Q/DQ nodes may differ.
Candidates that are only run (`scoring_candidates`) hold stubs of their weights instead:
onnxruntime gets the bytes from OrtValues made once, so a candidate of a 114 MB HRNet
copies and serializes kilobytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from graphkit.quant.qdq import ensure_opset, insert_qdq
from graphkit.quant.table import CalibrationTable
from graphkit.quant.weights import QUANTIZED_OPS
from graphkit.runtime.ort import memory_stub
from graphkit.weights import lazy_tensors

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# tensors of fewer elements stay in the candidates (shapes, scales, zero points)
STUB_MIN_ELEMENTS = 1024


class QdqVariants:
    """`variants(keep)`: the Q/DQ model of `table` with the layers in `keep` (and the
    table's own keep_float) float. Int8 layers take their weights from `base` (e.g. the
    weights `optimize_weights` rounded; default: `model`'s), float layers from `model`."""

    def __init__(
        self, model: onnx.ModelProto, table: CalibrationTable, base: onnx.ModelProto | None = None
    ):
        reference = ensure_opset(model)
        full = insert_qdq(base if base is not None else model, table)
        self.always = set(table.keep_float)
        self.initializers = {t.name: t for t in full.graph.initializer}
        self.skeleton = onnx.ModelProto()
        self.skeleton.CopyFrom(full)
        del self.skeleton.graph.initializer[:]
        taken = set(self.initializers) | {o for n in full.graph.node for o in n.output}
        taken |= {i.name for i in full.graph.input}
        floats = {t.name: t for t in reference.graph.initializer}
        # per weighted layer: the inputs it reads in the float model, and the float
        # initializers it needs that the int8 model lacks or holds with other values
        self.float_inputs: dict[str, tuple[list[str], list[onnx.TensorProto]]] = {}
        for node in reference.graph.node:
            if node.op_type not in QUANTIZED_OPS or not node.name:
                continue
            names, extra = [], []
            for name in node.input:
                tensor = floats.get(name)
                if tensor is None or _same(self.initializers.get(name), tensor):
                    names.append(name)
                    continue
                fresh = name
                if fresh in taken:
                    fresh = _fresh(f"{name}_float", taken)
                copy = onnx.TensorProto()
                copy.CopyFrom(tensor)
                copy.name = fresh
                names.append(fresh)
                extra.append(copy)
            self.float_inputs[node.name] = (names, extra)
        self._memory: dict[str, ort.OrtValue] | None = None
        self._stubs: dict[str, onnx.TensorProto] = {}

    def memory(self) -> dict[str, ort.OrtValue]:
        """Every tensor a candidate may hold, as OrtValues (built once): what
        `make_session(candidate, memory=...)` needs for `__call__(keep, stubs=True)`."""
        if self._memory is None:
            tensors = [*self.initializers.values()]
            tensors += [t for _, extra in self.float_inputs.values() for t in extra]
            tensors = [t for t in tensors if _stubbed(t)]
            self._memory = {
                t.name: ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(t)) for t in tensors
            }
        return self._memory

    def __call__(self, keep: Iterable[str] = (), stubs: bool = False) -> onnx.ModelProto:
        """stubs=True: the initializers are `memory_stub`s (no bytes), for scoring
        sessions made with `memory()`: nothing to copy or serialize per candidate."""
        restore = (set(keep) | self.always) & set(self.float_inputs)
        out = onnx.ModelProto()
        out.CopyFrom(self.skeleton)
        graph = out.graph
        extra: dict[str, onnx.TensorProto] = {}
        for node in graph.node:
            if node.name in restore:
                names, tensors = self.float_inputs[node.name]
                del node.input[:]
                node.input.extend(names)
                extra.update((t.name, t) for t in tensors)
        # dead Q/DQ nodes, last to first, so a Q whose DQ is dropped is dropped too
        used = {o.name for o in graph.output}
        dead = []
        for i in range(len(graph.node) - 1, -1, -1):
            node = graph.node[i]
            if node.op_type in QDQ_OPS and not any(o in used for o in node.output):
                dead.append(i)
                continue
            used.update(node.input)
        for i in dead:  # descending: earlier indices stay valid
            del graph.node[i]
        tensors = [t for n, t in self.initializers.items() if n in used]
        tensors += [t for n, t in extra.items() if n in used]
        graph.initializer.extend([self._stub(t) for t in tensors] if stubs else tensors)
        values = used | {o for n in graph.node for o in n.output}
        kept_info = [v for v in graph.value_info if v.name in values]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
        return out

    def _stub(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """Weights become stubs; small tensors stay (onnxruntime's shape inference reads
        Resize scales and Reshape shapes, which cannot be external)."""
        if tensor.name not in self._stubs:
            self._stubs[tensor.name] = memory_stub(tensor) if _stubbed(tensor) else tensor
        return self._stubs[tensor.name]


def _stubbed(tensor: onnx.TensorProto) -> bool:
    """Whether scoring candidates hold `tensor` as a stub (its bytes in `memory()`)."""
    return math.prod(tensor.dims) >= STUB_MIN_ELEMENTS


def scoring_candidates(
    variants: Callable[[Sequence[str]], onnx.ModelProto],
) -> tuple[Callable[[Sequence[str]], onnx.ModelProto], dict[str, ort.OrtValue] | None]:
    """(keep -> candidate, memory): candidates only to be run, with weight stubs and the
    weights once as OrtValues where `variants` is a `QdqVariants` (a 293-Conv HRNet's
    candidates otherwise copy and serialize 114 MB each); else `variants` and None."""
    if isinstance(variants, QdqVariants):
        return partial(variants, stubs=True), variants.memory()
    return variants, None


def qdq_variants(
    model: onnx.ModelProto, table: CalibrationTable, base: onnx.ModelProto | None = None
) -> Callable[[Sequence[str]], onnx.ModelProto]:
    """keep -> the Q/DQ model of `table` with `keep` float (as `QdqVariants`); rebuilt
    through onnx_ir for every call where weights are left on disk, which `QdqVariants`
    neither compares nor copies."""
    if not lazy_tensors(model) and (base is None or not lazy_tensors(base)):
        return QdqVariants(model, table, base)
    if base is None:
        return lambda keep: insert_qdq(model, table, keep_float=keep)
    from graphkit.quant.refine import RoundedCandidates

    rounded = RoundedCandidates(base, model)
    return lambda keep: rounded(table, sorted(set(keep) | set(table.keep_float)), keep)


def _same(a: onnx.TensorProto | None, b: onnx.TensorProto) -> bool:
    if a is None:
        return False
    if a.data_type != b.data_type or list(a.dims) != list(b.dims):
        return False
    return bool(np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)))


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


__all__ = ["QdqVariants", "qdq_variants", "scoring_candidates"]
