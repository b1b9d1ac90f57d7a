"""Does this machine's onnxruntime run uint8 x int8 convolutions exactly?

On x86 CPUs with AVX2 but no VNNI, onnxruntime's fused QLinearConv multiplies uint8
activations by int8 weights with VPMADDUBSW, which adds each pair of products in 16 bits
and saturates at 32767: two products of 255 x 127 (64770) do not fit. A uint8 activation
with zero point 0 uses the whole 0..255 range, so the outputs of a Relu stored unsigned
hit it often (measured: a small Conv chain lost 15 dB, 33.1 -> 17.8). Signed activations
reach the kernel shifted by 128 (values near 128 times 127 fit), and CPUs with VNNI
(AVX-VNNI, AVX512-VNNI) or ARM add in 32 bits: there the uint8 plan is exact.

`uint8_conv_exact()` runs one Conv whose pairs of products are 255 x 127 in
onnxruntime's optimized session (fused into QLinearConv) and compares it with the
unfused Q/DQ reference. `qdq_level()` is the optimization level that runs a Q/DQ model
with the arithmetic it writes on this CPU: the recipe measures its candidates there, so
a plan does not depend on the kernels of the machine that calibrates it.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphkit.errors import InputError

CHANNELS = 8


def _probe_model() -> onnx.ModelProto:
    """x (1, 8, 4, 4) as uint8 (scale 1/255, zero point 0) -> 1x1 Conv with int8 weights
    (scale 1/127), 127 on the first two input channels, 0 on the others -> int8 output
    (scale 1/20): exact, each output is 2 x 255 x 127 steps = 2.0; saturated at 32767,
    about 1.0."""
    weights = np.zeros((4, CHANNELS, 1, 1), np.int8)
    weights[:, :2] = 127
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
        numpy_helper.from_array(weights, "w_q"),
        numpy_helper.from_array(np.full(4, 1 / 127, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(1 / 20, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "y_zp"),
    ]
    # the output Q/DQ makes onnxruntime fuse the Conv into one integer QLinearConv
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zp"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "y_scale", "y_zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "uint8_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, level: ort.GraphOptimizationLevel) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.ones((1, CHANNELS, 4, 4), np.float32)})[0]


def probe() -> tuple[float, float]:
    """(fused output, reference output) of the probe: 2.0 and 2.0 where exact."""
    model = _probe_model()
    fused = _run(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    reference = _run(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return float(fused.max()), float(reference.max())


def _agrees(fused: float, reference: float) -> bool:
    return abs(fused - reference) <= 1e-3 * max(1.0, abs(reference))


# "exact" or "saturating" replaces the probe's answer: to make on one machine the plan
# that `graphkit calibrate` makes on the other kind of CPU
OVERRIDE = "GRAPHKIT_INT8_KERNELS"


@functools.cache
def uint8_conv_exact() -> bool:
    """True where onnxruntime's fused uint8 x int8 Conv gives the Q/DQ reference result
    (module doc); False where it saturates (AVX2 without VNNI), or as OVERRIDE says."""
    forced = os.environ.get(OVERRIDE, "").strip().lower()
    if forced in ("exact", "saturating"):
        return forced == "exact"
    if forced:
        raise InputError(f"{OVERRIDE} must be exact or saturating, got {forced!r}")
    return _agrees(*probe())


def qdq_level() -> ort.GraphOptimizationLevel:
    """Every fusion where the integer kernels are exact; BASIC (constant folding, no
    QLinear fusion: DequantizeLinear, the float op, QuantizeLinear, as written) where they
    saturate. The fused kernels are what a user runs, but a plan measured through them
    would fit one CPU's overflow instead of the model."""
    if uint8_conv_exact():
        return ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


__all__ = ["OVERRIDE", "probe", "qdq_level", "uint8_conv_exact"]

if __name__ == "__main__":  # python -m graphkit.runtime.int8_kernels
    got, want = probe()
    verdict = "exact" if _agrees(got, want) else "saturating"
    print(
        f"onnxruntime {ort.__version__} uint8 x int8 Conv: {got:g} (reference {want:g}): {verdict}"
    )
