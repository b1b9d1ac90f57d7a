"""Token Linears in ncnn: pnnx's Gemm rewritten as the InnerProduct ncnn runs in int8.

pnnx writes a MatMul of token rows by a constant (a transformer's Linear, RTMPose's SimCC
classifiers) as an ncnn `Gemm` with B constant. ncnn's int8 Gemm has a single scale for
all of B, where the plan has one per output channel, so such a layer could only stay
float. The same product is an `InnerProduct` on a 2-D blob: ncnn's InnerProduct treats
each row of a blob of width num_input as one input (innerproduct.cpp, `dims == 2`) and
has per-channel weight scales and a per-tensor input scale, as the plan does. So a Gemm
computing rows x B^T (+ a bias per output) on a 2-D input becomes one:

    Gemm   2=0 3=1 4=0 5=1 [6=1 10=4] 8=N 9=K   blobs B (N x K), [C (N)]
    InnerProduct 0=N 1=bias 2=N*K                blobs weight (N x K), [bias (N)]

B with transB=1 is stored N rows of K (gemm.cpp load_model), the InnerProduct weight
layout; transB=0 (K rows of N) is transposed. Anything else (alpha or beta not 1, a
constant or transposed A, a bias per row, a transposed output, an input that is not 2-D
of width K) stays a Gemm, float.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import graphkit.backends.ncnn.runtime as nc


def linear_gemm(layer: nc.Layer, input_shape: tuple[int, ...] | None) -> bool:
    """A Gemm that is an InnerProduct: rows of its 2-D input by a constant B, alpha =
    beta = 1, no bias or one per output, nothing transposed but B."""
    if layer.type != "Gemm" or len(layer.bottoms) != 1 or len(layer.tops) != 1:
        return False
    k = layer.get(9)
    plain = {0: 1.0, 1: 1.0, 2: 0, 4: 0, 5: 1, 11: 0, 12: 0, 13: 0, 14: 0, 18: 0}
    if any(layer.get(key, 1.0 if key < 2 else 0) != want for key, want in plain.items()):
        return False
    bias = layer.get(6) and layer.get(10, 0) != -1
    if bias and layer.get(10, 0) != 4:
        return False
    return input_shape is not None and len(input_shape) == 2 and input_shape[1] == k


def as_inner_product(
    param: nc.Param, blobs: dict[str, list[nc.Blob]], input_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[nc.Param, dict[str, list[nc.Blob]], list[str]]:
    """(param, blobs, names): every Gemm that `linear_gemm` accepts, given the shape of
    its input blob as ncnn computes it, made an InnerProduct of the same name and blobs;
    the others unchanged."""
    layers, out, done = [], dict(blobs), []
    for layer in param.layers:
        if not linear_gemm(layer, input_shapes.get(layer.bottoms[0] if layer.bottoms else "")):
            layers.append(layer)
            continue
        n, k = int(layer.get(8)), int(layer.get(9))
        parts = {b.role: b.data for b in blobs[layer.name]}
        weight = parts["B"].reshape(n, k) if layer.get(3) else parts["B"].reshape(k, n).T
        new = [nc.Blob("weight", np.ascontiguousarray(weight).reshape(-1))]
        if "C" in parts:
            new.append(nc.Blob("bias", np.asarray(parts["C"], np.float32)))
        params = {0: str(n), 1: str(int("C" in parts)), 2: str(n * k)}
        layers.append(nc.Layer("InnerProduct", layer.name, layer.bottoms, layer.tops, params))
        out[layer.name] = new
        done.append(layer.name)
    return nc.Param(layers, param.blob_count), out, done


def gemm_input_shapes(
    net: nc.NcnnNet, param: nc.Param, inputs: Mapping[str, list[int]]
) -> dict[str, tuple[int, ...]]:
    """The shape ncnn gives the input blob of each Gemm (batch dropped, as ncnn holds it),
    from one run on zeros of the model's input shapes: pnnx's params do not say whether a
    Gemm reads a 2-D blob."""
    bottoms = sorted({lay.bottoms[0] for lay in param.layers if lay.type == "Gemm" and lay.bottoms})
    if not bottoms:
        return {}
    feeds = {blob: np.zeros(shape, np.float32) for blob, shape in inputs.items()}
    return {b: tuple(a.shape) for b, a in net.run(feeds, bottoms).items()}
