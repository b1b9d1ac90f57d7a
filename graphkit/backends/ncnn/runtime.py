"""ncnn models: read/write .param and .bin ourselves, run them with the `ncnn` bindings.

.param (text): magic 7767517, "<layer count> <blob count>", then per layer
`Type name nbottom ntop bottoms... tops... key=value...`; array values use key -23300-k
with "len,v1,v2...". .bin: each layer's blobs in load order; a "tagged" blob starts with a
4-byte tag (0 = fp32, 0x01306B47 = fp16, 0x000D4B38 = int8, padded to 4 bytes), "raw"
blobs (bias, scales) are plain fp32. The layout per layer type follows each ncnn layer's
load_model; the whole file must be consumed exactly, which catches unknown weighted types.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphkit.errors import GraphkitError

MAGIC = "7767517"
# the layer types whose param 8 is int8_scale_term
INT8_TERM_TYPES = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
TAG_FP32 = 0
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str] = field(default_factory=dict)  # key -> raw text (arrays keep "n,a,b")

    def get(self, key: int, default: float = 0) -> float:
        v = self.params.get(key)
        if v is None:
            return default
        if "," in v or v.startswith('"'):
            raise GraphkitError(f"layer {self.name}: param {key} is {v}, not a number")
        return float(v) if any(c in v for c in ".eE") else int(v)

    @property
    def int8_term(self) -> int:
        """int8_scale_term (param 8) of the layer types that have one (0: float, 1/2: int8,
        101/102: int8 whose output is requantized); 0 for others, whose param 8 is
        something else (a Gemm's constantN)."""
        return int(self.get(8) or 0) if self.type in INT8_TERM_TYPES else 0

    def count(self, key: int, default: int = 0) -> int:
        """An integer param (an element count), or one sentence if the file has a float."""
        v = self.get(key, default)
        if not isinstance(v, int):
            raise GraphkitError(f"layer {self.name}: param {key} is {v}, not an integer")
        return v

    def line(self) -> str:
        kv = " ".join(f"{_array_key(k) if _is_array(v) else k}={v}" for k, v in self.params.items())
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        return " ".join(x for x in [head, *self.bottoms, *self.tops, kv] if x)


def _is_array(value: str) -> bool:
    """An array param ("n,a,b"), not a number or a quoted string (pnnx writes Reshape
    shapes as 6="0w,-1", which keeps its key)."""
    return "," in value and not value.startswith('"')


def _array_key(key: int) -> int:
    """ncnn writes array param k under -23300 - k (its own inverse)."""
    return -23300 - key


@dataclass
class Param:
    layers: list[Layer]
    blob_count: int

    def text(self) -> str:
        return (
            "\n".join(
                [MAGIC, f"{len(self.layers)} {self.blob_count}"]
                + [lay.line() for lay in self.layers]
            )
            + "\n"
        )

    def layer(self, name: str) -> Layer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise GraphkitError(f"the ncnn model has no layer named '{name}'")


def parse_param(text: str, source: str = "param") -> Param:
    """Parse an ncnn .param text, or raise one sentence saying where it is wrong."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != MAGIC:
        raise GraphkitError(f"{source} is not an ncnn param file (magic {MAGIC} missing)")
    n = 2
    try:
        layer_count, blob_count = (int(x) for x in lines[1].split())
        layers = []
        for n, ln in enumerate(lines[2 : 2 + layer_count], start=3):
            tok = ln.split()
            nb, nt = int(tok[2]), int(tok[3])
            bottoms, tops = tok[4 : 4 + nb], tok[4 + nb : 4 + nb + nt]
            params = {}
            for kv in tok[4 + nb + nt :]:
                k, v = kv.split("=", 1)
                key = int(k)
                params[_array_key(key) if key <= _array_key(0) else key] = v
            layers.append(Layer(tok[0], tok[1], bottoms, tops, params))
    except (ValueError, IndexError):
        raise GraphkitError(f"{source} line {n} is not a valid ncnn layer line") from None
    if len(layers) != layer_count:
        raise GraphkitError(f"{source} declares {layer_count} layers but has {len(layers)}")
    return Param(layers, blob_count)


def read_param(path: str | Path) -> Param:
    p = Path(path)
    if not p.is_file():
        raise GraphkitError(f"ncnn param file {p} does not exist")
    return parse_param(p.read_text(), str(p))


# --- .bin layout -----------------------------------------------------------------------


def blob_layout(layer: Layer) -> list[tuple[str, str, int]]:
    """(role, 'tagged'|'raw', element count) of each blob `layer` reads from the .bin."""
    t, g, n = layer.type, layer.get, layer.count
    out: list[tuple[str, str, int]] = []
    if t in (
        "Convolution",
        "ConvolutionDepthWise",
        "Deconvolution",
        "DeconvolutionDepthWise",
        "Convolution1D",
        "ConvolutionDepthWise1D",
        "Convolution3D",
        "Deconvolution1D",
        "Deconvolution3D",
    ):
        dynamic_key = 28 if t.startswith("Deconvolution") else 19
        if g(dynamic_key):
            return []
        out.append(("weight", "tagged", n(6)))
        if g(5):
            out.append(("bias", "raw", n(0)))
        term = g(8)
        if t == "Convolution" and term:
            out += [("weight_scales", "raw", n(0)), ("bottom_scales", "raw", 1)]
        if t == "ConvolutionDepthWise" and term:
            out.append(("weight_scales", "raw", n(7, 1) if term in (1, 101) else 1))
            out.append(("bottom_scales", "raw", 1))
        if t in ("Convolution", "ConvolutionDepthWise") and term > 100:
            out.append(("top_scales", "raw", 1))
    elif t == "InnerProduct":
        out.append(("weight", "tagged", n(2)))
        if g(1):
            out.append(("bias", "raw", n(0)))
        if g(8):
            out += [("weight_scales", "raw", n(0)), ("bottom_scales", "raw", 1)]
    elif t == "Gemm":  # ncnn src/layer/gemm.cpp load_model; 7, 8, 9 = M, N, K
        m_, n_, k_ = n(7), n(8), n(9)
        if g(4):
            out.append(("A", "tagged", m_ * k_))
        if g(5):
            out.append(("B", "tagged", n_ * k_))
        broadcast = int(g(10))
        if g(6) and broadcast != -1:
            sizes = {0: 1, 1: m_, 2: m_, 3: n_ * m_, 4: n_}
            out.append(("C", "tagged", sizes.get(broadcast, 0)))
        if g(18) and g(18) < 400:  # per-tensor int8 scales (block quantization not read)
            if g(4):
                out.append(("A_scales", "raw", m_))
            if g(5):
                out.append(("B_scale", "raw", 1))
    elif t == "MemoryData":
        dims = [g(0), g(1), g(11), g(2)]
        out.append(("data", "raw", int(np.prod([d for d in dims if d]) or 0)))
    elif t == "BatchNorm":
        out += [(r, "raw", n(0)) for r in ("slope", "mean", "var", "bias")]
    elif t == "Scale":
        if g(0) != -233:
            out.append(("scale", "raw", n(0)))
        if g(1):
            out.append(("bias", "raw", n(0)))
    elif t == "PReLU":
        out.append(("slope", "raw", n(0)))
    elif t in ("LayerNorm", "InstanceNorm") and g(2):
        out += [("gamma", "raw", n(0)), ("beta", "raw", n(0))]
    elif t == "GroupNorm" and g(3):
        out += [("gamma", "raw", n(1)), ("beta", "raw", n(1))]
    elif t == "Embed":
        out.append(("weight", "tagged", n(3)))
        if g(2):
            out.append(("bias", "raw", n(0)))
    return out


@dataclass
class Blob:
    role: str
    data: np.ndarray  # float32, float16 or int8, flat


def _read_tagged(buf: bytes, pos: int, n: int, where: str) -> tuple[np.ndarray, int]:
    (tag,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    if tag == TAG_FP16:
        return np.frombuffer(buf, np.float16, n, pos).copy(), pos + (n * 2 + 3) // 4 * 4
    if tag == TAG_INT8:
        return np.frombuffer(buf, np.int8, n, pos).copy(), pos + (n + 3) // 4 * 4
    if tag == TAG_FP32:
        return np.frombuffer(buf, np.float32, n, pos).copy(), pos + n * 4
    raise GraphkitError(f"{where}: unsupported ncnn weight tag 0x{tag:08x}")


def read_bin(param: Param, data: bytes, source: str = "bin") -> dict[str, list[Blob]]:
    """Split a .bin into each layer's blobs (per the layer's layout)."""
    pos = 0
    out: dict[str, list[Blob]] = {}
    try:
        for layer in param.layers:
            blobs = []
            for role, kind, n in blob_layout(layer):
                where = f"{source} layer {layer.name}"
                if kind == "tagged":
                    arr, pos = _read_tagged(data, pos, n, where)
                else:
                    arr = np.frombuffer(data, np.float32, n, pos).copy()
                    pos += 4 * n
                blobs.append(Blob(role, arr))
            if blobs:
                out[layer.name] = blobs
    except (ValueError, struct.error):
        raise GraphkitError(
            f"{source} is shorter than its param file says (truncated or mismatched)"
        ) from None
    if pos != len(data):
        raise GraphkitError(
            f"{source} has {len(data) - pos} bytes the param file does not account for "
            "(a layer type whose weights graphkit does not know, or a mismatched pair)"
        )
    return out


def write_bin(param: Param, blobs: dict[str, list[Blob]]) -> bytes:
    """Serialize blobs in layer order: tagged blobs get their dtype's tag and 4-byte padding."""
    parts: list[bytes] = []
    for layer in param.layers:
        layout = blob_layout(layer)
        got = blobs.get(layer.name, [])
        if [r for r, _, _ in layout] != [b.role for b in got]:
            raise GraphkitError(
                f"layer {layer.name}: blobs {[b.role for b in got]} do not match its params"
            )
        for (role, kind, n), blob in zip(layout, got):
            if blob.data.size != n:
                raise GraphkitError(
                    f"layer {layer.name}: {role} has {blob.data.size} values, params say {n}"
                )
            if kind == "raw":
                parts.append(blob.data.astype("<f4").tobytes())
                continue
            tag = {
                np.dtype(np.float32): TAG_FP32,
                np.dtype(np.float16): TAG_FP16,
                np.dtype(np.int8): TAG_INT8,
            }[blob.data.dtype]
            raw = blob.data.astype(blob.data.dtype.newbyteorder("<")).tobytes()
            parts.append(struct.pack("<I", tag) + raw + b"\0" * (-len(raw) % 4))
    return b"".join(parts)


# --- execution --------------------------------------------------------------------------


def _ncnn():
    try:
        import ncnn
    except ImportError:
        raise GraphkitError(
            "the ncnn Python bindings are not installed (pip install ncnn)"
        ) from None
    return ncnn


class NcnnNet:
    """An ncnn network loaded from param/bin files, run on the CPU."""

    def __init__(self, param: str | Path, bin: str | Path, int8: bool = False, threads: int = 1):
        ncnn = _ncnn()
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads
        self.net.opt.use_int8_inference = int8
        # fp32 reference must be fp32 everywhere (packing/winograd stay as ncnn chooses)
        for attr in (
            "use_fp16_storage",
            "use_fp16_arithmetic",
            "use_fp16_packed",
            "use_bf16_storage",
        ):
            if hasattr(self.net.opt, attr):
                setattr(self.net.opt, attr, False)
        if self.net.load_param(str(param)) != 0:
            raise GraphkitError(f"ncnn cannot load {param} (a layer type it does not know?)")
        if self.net.load_model(str(bin)) != 0:
            raise GraphkitError(f"ncnn cannot load the weights {bin}")
        self.inputs = list(self.net.input_names())
        self.outputs = list(self.net.output_names())

    def run(self, feeds: dict[str, np.ndarray], blobs: Iterable[str]) -> dict[str, np.ndarray]:
        """Feed ncnn input blobs (arrays with the batch dim) and extract the named blobs."""
        ncnn = _ncnn()
        ex = self.net.create_extractor()
        blobs = list(blobs)
        if len(blobs) > 1:
            ex.set_light_mode(False)  # light mode frees consumed blobs before we extract them
        keep = []  # ncnn.Mat borrows numpy memory: keep arrays and mats alive until extracted
        for name, arr in feeds.items():
            a = np.asarray(arr)
            if a.ndim > 1 and a.shape[0] == 1:
                a = a[0]
            a = np.ascontiguousarray(a, dtype=np.float32)
            # a Mat that owns its data: one wrapping numpy memory has no reference count,
            # and ncnn dereferences it when the first layer works in place (a scalar
            # BinaryOp right after the input crashed the process)
            mat = ncnn.Mat(a).clone()
            keep.append((a, mat))
            ex.input(name, mat)
        out = {}
        for name in blobs:
            ret, mat = ex.extract(name)
            if ret != 0 or mat.empty():
                raise GraphkitError(f"ncnn could not compute blob '{name}'")
            out[name] = np.array(mat, copy=True)
        del keep
        return out


def iter_blobs(
    net: NcnnNet,
    samples: Iterable[dict[str, np.ndarray]],
    blobs: list[str],
    input_map: dict[str, str] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Per sample, {blob: array} for the named blobs (ONNX feeds renamed by input_map)."""
    for feeds in samples:
        if input_map:
            feeds = {input_map.get(k, k): v for k, v in feeds.items()}
        yield net.run(feeds, blobs)
