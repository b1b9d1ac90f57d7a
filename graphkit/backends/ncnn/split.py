"""Split off the float post-processing that ncnn cannot run (in-graph keypoint decoding).

TensorFlow exports such as MoveNet decode keypoints inside the graph (ArgMax, GatherND,
casts): pnnx leaves those as layers ncnn does not have. Deployments run the network in
ncnn and the decoding on the CPU in float, so the export does the same: the *tail* is every
node from which no weighted layer (Conv, ConvTranspose, Gemm, MatMul) can be reached; the
head model (everything else) goes to ncnn, the tail is written as `model.tail.onnx`, whose
metadata maps each of its inputs to the ncnn blob that feeds it. `NcnnExecutor` runs both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import onnx

from graphkit.irgraph import name_of, reads, to_ir
from graphkit.passes.outputs import extract

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
BLOBS_KEY = "graphkit.ncnn_blobs"


@dataclass
class Split:
    head: onnx.ModelProto
    tail: onnx.ModelProto
    cut: list[str]  # the tensors the head hands to the tail


def split_tail(model: onnx.ModelProto) -> Split | None:
    """Head and tail of `model`, or None when nothing follows its last weighted layers."""
    g = to_ir(model).graph
    nodes = list(g)
    readers: dict[int, list[int]] = {}  # value -> positions of the nodes reading it
    for pos, node in enumerate(nodes):
        for v in reads(node):
            readers.setdefault(id(v), []).append(pos)
    body: set[int] = set()
    for pos in reversed(range(len(nodes))):  # graphs are topologically sorted
        node = nodes[pos]
        if node.op_type in WEIGHTED or any(
            j in body for o in node.outputs for j in readers.get(id(o), [])
        ):
            body.add(pos)
    tail = [pos for pos in range(len(nodes)) if pos not in body]
    if not body or not tail:
        return None
    made_by_body = {name_of(o) for pos in body for o in nodes[pos].outputs}
    graph_inputs = {name_of(v) for v in g.inputs if not v.is_initializer()}
    cut = list(
        dict.fromkeys(
            name_of(v)
            for pos in tail
            for v in reads(nodes[pos])
            if name_of(v) in made_by_body or name_of(v) in graph_inputs
        )
    )
    outputs = [name_of(o) for o in g.outputs]
    tail_outputs = [o for o in outputs if o not in made_by_body and o not in graph_inputs]
    if not cut or not tail_outputs:
        return None
    head_outputs = [t for t in cut if t in made_by_body]
    head_outputs += [o for o in outputs if o in made_by_body and o not in head_outputs]
    head = extract(_copy(model), outputs=head_outputs).model
    tail_model = extract(_copy(model), inputs=cut, outputs=tail_outputs).model
    return Split(head, tail_model, cut)


def mark_blobs(tail: onnx.ModelProto, blobs: dict[str, str]) -> None:
    """Record which ncnn blob feeds each tail input (graph inputs keep their own name)."""
    del tail.metadata_props[:]
    tail.metadata_props.add(key=BLOBS_KEY, value=json.dumps(blobs, sort_keys=True))


def blobs_of(tail: onnx.ModelProto) -> dict[str, str]:
    for prop in tail.metadata_props:
        if prop.key == BLOBS_KEY:
            return dict(json.loads(prop.value))
    return {}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(model)
    return c
