"""Weights left on disk (`load_model(lazy=True)`): passes, verification and saving give
what they give on a fully loaded model, without reading what they do not need."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from onnx import helper, numpy_helper
from tiny import model_of

from graphkit import weights
from graphkit.errors import GraphkitError
from graphkit.model import load_model, model_hash, save_model
from graphkit.pipeline import parse_pipeline, run_pipeline
from graphkit.runtime import ort as ort_rt
from tests.graphgen import conv_nets

PASSES = [
    "cleanup",
    "fold-constants",
    "fuse-bn",
    "fuse-conv-affine",
    "fuse-pad",
    "eliminate-nops",
    "cancel-transposes",
    "matmul-to-gemm",
    "dedupe",
]


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    """Every tensor in path.data, as exporters of big models write them."""
    onnx.save(
        model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0
    )
    return path


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def outputs(model: onnx.ModelProto, seed: int = 5) -> dict[str, np.ndarray]:
    return ort_rt.run(model, ort_rt.sample_inputs(model, seed=seed))


@settings(max_examples=12, deadline=None)
@given(net=conv_nets())
def test_passes_on_lazy_weights_give_the_fully_loaded_result(tmp_path_factory, net):
    tmp = tmp_path_factory.mktemp("lazy")
    src = save_external(net, tmp / "net.onnx")
    data_before = sha(tmp / "net.onnx.data")
    pipeline = parse_pipeline(PASSES)
    eager, _ = run_pipeline(load_model(src), pipeline)
    lazy, _ = run_pipeline(load_model(src, lazy=True), pipeline)
    assert [n.op_type for n in lazy.graph.node] == [n.op_type for n in eager.graph.node]
    out = save_model(lazy, tmp / "clean.onnx")
    saved = load_model(out)
    # the same weights, bit for bit, whether they stayed on disk or not
    want = {t.name: numpy_helper.to_array(t) for t in eager.graph.initializer}
    assert {t.name: weights.tensor_array(t).tobytes() for t in lazy.graph.initializer} == {
        k: v.tobytes() for k, v in want.items()
    }
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in saved.graph.initializer} == {
        k: v.tobytes() for k, v in want.items()
    }
    # outputs agree up to kernel choice (a lazy session does not pre-pack its weights)
    expected = outputs(eager)
    for got in (outputs(lazy), outputs(saved)):
        for name, value in got.items():
            np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)
    assert sha(tmp / "net.onnx.data") == data_before  # the source is only read


def conv_model(seed: int = 0, twin: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w.copy(), "w2")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2" if twin else "w"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    return model_of(
        nodes, [("x", [1, 3, 6, 6])], [("y", [1, 8, 6, 6])], inits if twin else inits[:1], opset=17
    )


def test_a_lazy_tensor_reads_its_own_file_not_a_same_named_one_in_the_working_directory(
    tmp_path, monkeypatch
):
    (tmp_path / "m").mkdir()
    src = save_external(conv_model(), tmp_path / "m" / "net.onnx")
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "net.onnx.data").write_bytes(
        b"\x7f" * (tmp_path / "m" / "net.onnx.data").stat().st_size
    )
    monkeypatch.chdir(decoy)
    lazy = load_model(src, lazy=True)
    eager = load_model(src)
    t = next(i for i in lazy.graph.initializer if i.name == "w")
    assert weights.is_lazy(t) and not t.HasField("raw_data")
    np.testing.assert_array_equal(
        weights.tensor_array(t), numpy_helper.to_array(eager.graph.initializer[0])
    )
    assert model_hash(lazy) == model_hash(eager)
    np.testing.assert_array_equal(outputs(lazy)["y"], outputs(eager)["y"])


def test_dedupe_merges_identical_lazy_weights_by_their_bytes(tmp_path):
    src = save_external(conv_model(twin=True), tmp_path / "net.onnx")
    model, reports = run_pipeline(load_model(src, lazy=True), parse_pipeline(["dedupe"]))
    assert [i.name for i in model.graph.initializer] == ["w"]
    assert reports[0].changed


def test_saving_a_lazy_model_copies_the_bytes_and_keeps_the_source(tmp_path):
    src = save_external(conv_model(), tmp_path / "net.onnx")
    before = sha(tmp_path / "net.onnx.data")
    lazy = load_model(src, lazy=True)
    out = save_model(lazy, tmp_path / "copy.onnx")
    assert (tmp_path / "copy.onnx.data").exists() and sha(tmp_path / "net.onnx.data") == before
    again = load_model(out)
    assert not any(weights.is_lazy(t) for t in again.graph.initializer)
    np.testing.assert_array_equal(outputs(again)["y"], outputs(load_model(src))["y"])
    assert weights.is_lazy(lazy.graph.initializer[0])  # the caller's model is unchanged


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "is truncated: tensor 'w' needs bytes"),
        ("delete", "refers to external data that is missing"),
        ("escape", "points outside the model's folder"),
    ],
)
def test_broken_external_data_is_one_sentence_at_load(tmp_path, damage, message):
    src = save_external(conv_model(), tmp_path / "net.onnx")
    data = tmp_path / "net.onnx.data"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "delete":
        data.unlink()
    else:
        model = onnx.load(str(src), load_external_data=False)
        for e in model.graph.initializer[0].external_data:
            if e.key == "location":
                e.value = "../net.onnx.data"
        src.write_bytes(model.SerializeToString())
    with pytest.raises(GraphkitError, match=message):
        load_model(src, lazy=True)
