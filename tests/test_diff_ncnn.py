"""ONNX against ncnn (at the outputs) and ncnn against ncnn (blob by blob)."""

import onnx
import pytest
from test_diff_models import pair  # noqa: F401  (fixture: ref.onnx, q.onnx, data.yaml)

from graphkit.errors import GraphkitError
from graphkit.evaluators.diff import match_tensors, pnnx_order, run_diff
from graphkit.evaluators.executors import NcnnExecutor, OnnxExecutor, open_executor

pytest.importorskip("ncnn")


@pytest.fixture(scope="module")
def ncnn_model(pair, pnnx_installed):  # noqa: F811
    from graphkit.backends.ncnn.convert import convert

    return convert(onnx.load(pair / "ref.onnx"), pair / "ncnn", "ref")


def test_pnnx_outputs_pair_by_number_not_by_listing_order():
    assert pnnx_order(["out1", "out0", "out10", "out2"]) == ["out0", "out1", "out2", "out10"]
    assert pnnx_order(["heatmap", "out0"]) == ["heatmap", "out0"]


def test_onnx_against_ncnn_fp32_agrees_at_the_output(pair, ncnn_model):  # noqa: F811
    rep = run_diff(str(pair / "ref.onnx"), str(ncnn_model.param), str(pair / "data.yaml"), limit=3)
    assert rep.mode == "onnx-vs-ncnn" and [r.name for r in rep.rows] == ["y"]
    assert rep.rows[0].quant_name == "out0"
    assert rep.rows[0].diff.sqnr_db > 60  # same fp32 maths, different kernels
    assert any("outputs" in n for n in rep.notes)


def test_ncnn_against_itself_matches_every_blob_exactly(pair, ncnn_model):  # noqa: F811
    a = NcnnExecutor(ncnn_model.param)
    rows = match_tensors(a, NcnnExecutor(ncnn_model.param))
    assert len(rows) >= 3 and {r.op_type for r in rows} >= {"Convolution"}
    rep = run_diff(str(ncnn_model.param), str(ncnn_model.param), str(pair / "data.yaml"), limit=2)
    assert all(r.diff.max_abs_err == 0.0 for r in rep.rows)


def test_backend_choice_errors_are_one_sentence(pair, ncnn_model, tmp_path):  # noqa: F811
    assert isinstance(open_executor(pair / "ref.onnx"), OnnxExecutor)
    with pytest.raises(GraphkitError, match="--backend ncnn"):
        open_executor(ncnn_model.param, "ort")
    with pytest.raises(GraphkitError, match=".param"):
        open_executor(pair / "ref.onnx", "ncnn")
    lonely = tmp_path / "x.param"
    lonely.write_text(ncnn_model.param.read_text())
    with pytest.raises(GraphkitError, match="x.bin"):
        open_executor(lonely)
