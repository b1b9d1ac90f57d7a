"""Uniform "run this input, give me these tensors" over onnxruntime and ncnn.

The diff and the evaluator only need three things from a backend: the tensors it can
expose (with layer type and whether the layer is quantized), its output names, and a run
that returns the requested tensors. Sessions are built once and reused for every image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphkit.errors import GraphkitError
from graphkit.evaluators.graphinfo import TensorInfo, float_tensors, graph_outputs
from graphkit.model import load_model
from graphkit.runtime import ort as ort_rt


class OnnxExecutor:
    """An ONNX model in onnxruntime (CPU). Q/DQ models run as onnxruntime runs them."""

    kind = "onnx"

    def __init__(self, model: str | Path | onnx.ModelProto, threads: int | None = None):
        self.path = str(model) if not isinstance(model, onnx.ModelProto) else "<in-memory>"
        self.model = load_model(model) if not isinstance(model, onnx.ModelProto) else model
        self.threads = threads
        self._info: dict[str, TensorInfo] | None = None
        self._sessions: dict[tuple[str, ...], Any] = {}

    @property
    def label(self) -> str:
        return self.path

    def tensor_info(self) -> dict[str, TensorInfo]:
        if self._info is None:
            self._info = float_tensors(self.model)
        return self._info

    def outputs(self) -> list[str]:
        return graph_outputs(self.model)

    def inputs(self) -> list[str]:
        return ort_rt.graph_input_names(self.model)

    def _session(self, names: tuple[str, ...]):
        sess = self._sessions.get(names)
        if sess is None:
            if list(names) == self.outputs():
                sess = ort_rt.make_session(self.model, threads=self.threads)
            elif set(names) <= set(self.outputs()):
                # some of the graph outputs (a decoder reading 2 of posenet's 4): prune the
                # rest, keep the graph optimizations (they never remove a graph output)
                target = ort_rt.with_outputs(self.model, list(names), prune=True)
                sess = ort_rt.make_session(target, threads=self.threads)
            else:
                # Keep intermediate names intact: no fusion may swallow a requested tensor.
                target = ort_rt.with_outputs(self.model, list(names), prune=True)
                sess = ort_rt.make_session(target, threads=self.threads, optimize=False)
            self._sessions[names] = sess
        return sess

    def drop_sessions(self, keep: tuple[str, ...] = ()) -> None:
        """Free cached sessions except the one for `keep` (per-layer mode makes many)."""
        self._sessions = {k: v for k, v in self._sessions.items() if k == keep}

    def run(
        self, feeds: dict[str, np.ndarray], names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names_t = tuple(names) if names is not None else tuple(self.outputs())
        sess = self._session(names_t)
        try:
            values = sess.run(list(names_t), feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GraphkitError(f"onnxruntime failed to run {self.label}: {msg}") from None
        return dict(zip(names_t, values))


class NcnnExecutor:
    """An ncnn param/bin pair (fp32 or int8) run by graphkit.backends.ncnn.runtime.

    Blobs are named by the param file; a blob counts as quantized when the layer producing
    it has an int8 scale term (Convolution, ConvolutionDepthWise, InnerProduct).
    """

    kind = "ncnn"

    def __init__(self, param: str | Path, threads: int | None = None):
        import graphkit.backends.ncnn.runtime as ncnn_rt

        self.path = str(param)
        self.param = ncnn_rt.read_param(param)
        int8 = any(lay.int8_term for lay in self.param.layers)
        self.net = ncnn_rt.NcnnNet(
            param, Path(param).with_suffix(".bin"), int8=int8, threads=threads or 1
        )
        self.tail, self.tail_blobs = _tail_beside(Path(param))
        self.onnx_outputs = _outputs_beside(Path(param))
        self.tail_outputs = self.tail.outputs() if self.tail is not None else []
        self.tail_shapes = (
            {i: ort_rt.input_shape(vi, dynamic=0) for i, vi in _inputs(self.tail.model).items()}
            if self.tail is not None
            else {}
        )
        # layers fused with their reader's requantize (8=101/102) write int8 codes: read
        # back in float by dividing by their top scale
        self.requantized: dict[str, float] = {}
        if any(lay.int8_term > 100 for lay in self.param.layers):
            blobs = ncnn_rt.read_bin(self.param, Path(param).with_suffix(".bin").read_bytes())
            for lay in self.param.layers:
                if lay.int8_term > 100:
                    top = next(b for b in blobs[lay.name] if b.role == "top_scales")
                    self.requantized[lay.tops[0]] = float(top.data[0])

    @property
    def label(self) -> str:
        return self.path

    def tensor_info(self) -> dict[str, TensorInfo]:
        info = {}
        for i, lay in enumerate(self.param.layers):
            if lay.type in ("Input", "MemoryData"):
                continue
            for top in lay.tops:
                info[top] = TensorInfo(top, lay.name, lay.type, i, bool(lay.int8_term))
        return info

    def outputs(self) -> list[str]:
        if self.tail is None:
            return list(self.net.outputs)
        fed = set(self.tail_blobs.values())
        return self.tail_outputs + [b for b in self.net.outputs if b not in fed]

    def inputs(self) -> list[str]:
        return list(self.net.inputs)

    def run(
        self, feeds: dict[str, np.ndarray], names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        given = feeds
        if set(feeds) != set(self.inputs()) and len(feeds) == len(self.inputs()) == 1:
            feeds = {self.inputs()[0]: next(iter(feeds.values()))}
        names = names or self.outputs()
        tail_names = [n for n in names if n in self.tail_outputs]
        blobs = [n for n in names if n not in tail_names]
        if tail_names:
            blobs += [b for b in self.tail_blobs.values() if b in self.net.outputs]
        got = self.net.run(feeds, list(dict.fromkeys(blobs)))
        for name, scale in self.requantized.items():
            if name in got:
                got[name] = got[name] / np.float32(scale)
        if tail_names:
            assert self.tail is not None
            tail_feeds = {
                t: _shaped(got[b], self.tail_shapes.get(t)) if b in got else given[b]
                for t, b in self.tail_blobs.items()
            }
            got.update(self.tail.run(tail_feeds, tail_names))
        return {n: got[n] for n in names}


def _inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    return {vi.name: vi for vi in model.graph.input}


def _shaped(blob: np.ndarray, shape: list[int] | None) -> np.ndarray:
    """An ncnn blob (no batch dim) in the shape the ONNX tail declares for it; pnnx keeps
    the element order of the ONNX tensor, so a reshape is all it takes."""
    if shape and 0 not in shape and int(np.prod(shape)) == blob.size:
        return blob.reshape(shape)
    return blob[None] if blob.ndim + 1 == len(shape or []) else blob


def _outputs_beside(param: Path) -> dict[str, str]:
    """{ONNX output name: ncnn blob} from the model.outputs.json graphkit's ncnn export
    writes beside its params ({} without one, or when it is not that file)."""
    import json

    from graphkit.backends.ncnn.exporter import OUTPUTS_FILE

    path = param.with_name(OUTPUTS_FILE)
    try:
        found = json.loads(path.read_text())["outputs"] if path.is_file() else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v) for k, v in found.items()}


def _tail_beside(param: Path) -> tuple[OnnxExecutor | None, dict[str, str]]:
    """model.tail.onnx beside model[.int8].param: the float post-processing the export
    split off (`graphkit.backends.ncnn.split`), with its input -> ncnn blob map."""
    from graphkit.backends.ncnn.split import blobs_of

    path = param.with_name(param.name.split(".")[0] + ".tail.onnx")
    if not path.is_file():
        return None, {}
    tail = load_model(path)
    return OnnxExecutor(tail), blobs_of(tail)


def open_executor(path: str | Path, backend: str | None = None, threads: int | None = None):
    """An executor for an ONNX file or an ncnn .param (backend picked from the suffix)."""
    p = Path(path)
    if not p.exists():
        raise GraphkitError(f"model file {p} does not exist")
    kind = backend or ("ncnn" if p.suffix == ".param" else "ort")
    if kind == "ncnn":
        if p.suffix != ".param":
            raise GraphkitError(
                f"the ncnn backend needs a .param file (with its .bin beside), got {p}"
            )
        if not p.with_suffix(".bin").exists():
            raise GraphkitError(f"{p} has no {p.with_suffix('.bin').name} beside it")
        return NcnnExecutor(p, threads)
    if kind != "ort":
        raise GraphkitError(f"unknown backend '{kind}'; use ort or ncnn")
    if p.suffix == ".param":
        raise GraphkitError(f"{p} is an ncnn model; run it with --backend ncnn")
    return OnnxExecutor(p, threads)
