"""Build a small pose-like ONNX model in code, write a pipeline, and apply it.

Nothing is downloaded: the model is made with onnx.helper and random weights. It has what
real exported pose nets carry: a Conv+BatchNorm+ReLU stem, an explicit Pad before a
Conv, a residual Add, a Resize upsample, a heatmap head, and exporter junk (Identity,
Dropout, a constant subgraph, a Transpose pair that cancels, a dynamic batch dim).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphkit.model import atomic_write_text, save_model
from graphkit.pipeline import Pipeline, StepReport, load_pipeline, run_pipeline

# what `run_demo` writes into its folder
FILES = ("demo-pose.onnx", "demo-pipeline.yaml", "demo-pose.clean.onnx")

DEMO_PIPELINE = """\
# Written by `graphkit demo`: fix the batch, then graphkit's default clean-up.
passes:
  - fix-shapes: {batch: 1}
  - cleanup
  - fold-constants
  - eliminate-nops
  - dedupe
  - cancel-transposes
  - fuse-pad
  - fuse-bn
  - fuse-conv-affine
  - cleanup
"""


def build_pose_model(seed: int = 0, joints: int = 17) -> onnx.ModelProto:
    """A 64x48-input, 32x24-heatmap pose-like network with exporter junk (opset 17)."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def conv_bn_relu(x: str, cin: int, cout: int, k: int, stride: int, pad: int, tag: str) -> str:
        w = const(f"{tag}.w", rng.normal(0, 0.3, (cout, cin, k, k)).astype(np.float32))
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w],
                [f"{tag}.conv"],
                name=f"{tag}/conv",
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        bn = [
            const(f"{tag}.gamma", rng.uniform(0.5, 1.5, cout).astype(np.float32)),
            const(f"{tag}.beta", rng.normal(0, 0.1, cout).astype(np.float32)),
            const(f"{tag}.mean", rng.normal(0, 0.1, cout).astype(np.float32)),
            const(f"{tag}.var", rng.uniform(0.5, 2.0, cout).astype(np.float32)),
        ]
        nodes.append(
            helper.make_node(
                "BatchNormalization", [f"{tag}.conv", *bn], [f"{tag}.bn"], name=f"{tag}/bn"
            )
        )
        nodes.append(helper.make_node("Relu", [f"{tag}.bn"], [f"{tag}:0"], name=f"{tag}/relu"))
        return f"{tag}:0"

    x = conv_bn_relu("image", 3, 16, 3, 2, 1, "stem")  # 32x24
    nodes.append(helper.make_node("Identity", [x], ["stem/identity:0"], name="stem/identity"))
    # explicit zero Pad then an unpadded Conv, as some exporters write "SAME" padding
    nodes.append(
        helper.make_node(
            "Pad",
            ["stem/identity:0", const("pad.pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))],
            ["pad:0"],
            name="block/pad",
            mode="constant",
        )
    )
    y = conv_bn_relu("pad:0", 16, 16, 3, 1, 0, "block1")
    # residual: 1x1 conv then Add with the stem
    w = const("block2.w", rng.normal(0, 0.3, (16, 16, 1, 1)).astype(np.float32))
    nodes.append(
        helper.make_node("Conv", [y, w], ["block2:0"], name="block2/conv", kernel_shape=[1, 1])
    )
    nodes.append(
        helper.make_node(
            "Add", ["block2:0", "stem/identity:0"], ["residual:0"], name="residual/add"
        )
    )
    nodes.append(helper.make_node("Dropout", ["residual:0"], ["dropout:0"], name="dropout"))
    # a constant subgraph an exporter left behind: scale = 2 * 0.5, applied per channel
    nodes.append(
        helper.make_node(
            "Constant",
            [],
            ["two"],
            value=numpy_helper.from_array(np.full((1, 16, 1, 1), 2.0, np.float32)),
        )
    )
    nodes.append(
        helper.make_node(
            "Mul", ["two", const("half", np.array(0.5, np.float32))], ["scale"], name="const/mul"
        )
    )
    nodes.append(helper.make_node("Mul", ["dropout:0", "scale"], ["scaled:0"], name="scale/mul"))
    # a layout round trip that cancels
    nodes.append(
        helper.make_node("Transpose", ["scaled:0"], ["nhwc:0"], name="to_nhwc", perm=[0, 2, 3, 1])
    )
    nodes.append(
        helper.make_node("Transpose", ["nhwc:0"], ["nchw:0"], name="to_nchw", perm=[0, 3, 1, 2])
    )
    # upsample x2, then the heatmap head with a bias Add after it
    scales = const("up.scales", np.array([1, 1, 2, 2], np.float32))
    nodes.append(
        helper.make_node(
            "Resize", ["nchw:0", "", scales], ["up:0"], name="upsample", mode="nearest"
        )
    )
    head_w = const("head.w", rng.normal(0, 0.3, (joints, 16, 1, 1)).astype(np.float32))
    nodes.append(
        helper.make_node(
            "Conv", ["up:0", head_w], ["head:0"], name="head/conv", kernel_shape=[1, 1]
        )
    )
    bias = const("head.bias", rng.normal(0, 0.1, (1, joints, 1, 1)).astype(np.float32))
    nodes.append(helper.make_node("Add", ["head:0", bias], ["head_biased:0"], name="head/bias"))
    nodes.append(
        helper.make_node("Identity", ["head_biased:0"], ["heatmaps"], name="output/identity")
    )
    # dead branch: computed but never used
    nodes.append(helper.make_node("Sigmoid", ["up:0"], ["unused:0"], name="dead/sigmoid"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "unused.weight"))

    graph = helper.make_graph(
        nodes,
        "demo_pose",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 48])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", joints, 64, 48])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="graphkit-demo"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@dataclass
class DemoResult:
    model_path: Path
    pipeline_path: Path
    output_path: Path
    nodes_before: int
    nodes_after: int
    reports: list[StepReport]


def run_demo(out_dir: str | Path, on_step=None) -> DemoResult:
    """Write demo-pose.onnx and demo-pipeline.yaml to out_dir, apply it, verified."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_pose_model()
    model_path = save_model(model, out / "demo-pose.onnx")
    pipeline_path = atomic_write_text(out / "demo-pipeline.yaml", DEMO_PIPELINE)
    pipeline: Pipeline = load_pipeline(pipeline_path)
    result, reports = run_pipeline(model, pipeline, verify=True, on_step=on_step)
    output_path = save_model(result, out / "demo-pose.clean.onnx")
    return DemoResult(
        model_path,
        pipeline_path,
        output_path,
        len(model.graph.node),
        len(result.graph.node),
        reports,
    )
