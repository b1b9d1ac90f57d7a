"""Ascend ATC / AMCT: record file, quant config, gears, Q/DQ ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_export_fixtures import golden_table, two_conv

from graphkit.backends.atc import exporter as atc
from graphkit.errors import GraphkitError
from graphkit.quant.table import ActivationEntry, CalibrationTable, WeightEntry

GOLDEN = Path(__file__).parent / "golden"


def test_record_matches_golden_file():
    # conv2 kept float: only conv1 gets a record (scale_d 63.5/127, scale_w per channel)
    text = atc.record_text(golden_table(), two_conv(), keep_float=("conv2",))
    assert text == (GOLDEN / "amct_record.txt").read_text()


def test_record_round_trips_to_a_table():
    model, table = two_conv(), golden_table()
    back = atc.table_from_record(atc.record_text(table, model), model)
    assert {k: v.amax for k, v in back.activations.items()} == pytest.approx(
        {"x": 63.5, "r1": 127.0}
    )
    assert back.weights["w1"].amax == pytest.approx([31.75, 15.875])
    assert back.weights["w2"].amax == pytest.approx([1.0, 2.0])


names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(names, st.floats(1e-6, 1e6), st.lists(st.floats(1e-6, 1e3), min_size=2, max_size=2))
def test_any_node_name_and_scale_survive_the_record(name, amax, wamax):
    model = two_conv()
    model.graph.node[0].name = name
    if name in ("conv2", "relu1"):
        return
    table = CalibrationTable(
        method="minmax",
        activations={"x": ActivationEntry(amax)},
        weights={"w1": WeightEntry(wamax, 0, name, "Conv")},
    )
    parsed = atc.parse_record(atc.record_text(table, model))
    assert list(parsed) == [name]
    assert parsed[name]["scale_d"][0] == pytest.approx(amax / 127, rel=1e-12)
    assert parsed[name]["scale_w"] == pytest.approx([a / 127 for a in wamax], rel=1e-12)
    assert parsed[name]["offset_w"] == [0.0, 0.0] and parsed[name]["offset_d"] == [0.0]


def test_quant_config_disables_keep_float_layers():
    cfg = atc.quant_config(golden_table(), two_conv(), keep_float=("conv2",))
    assert cfg["version"] == 1 and cfg["conv1"]["quant_enable"] is True
    assert cfg["conv2"]["quant_enable"] is False
    assert cfg["conv1"]["weight_quant_params"]["channel_wise"] is True
    json.dumps(cfg)


def test_gears_cover_every_aspect_ratio_with_fixed_short_side():
    sizes = [(480, 640), (480, 640), (427, 640), (640, 480), (500, 375), (333, 500), (640, 640)]
    gears = atc.gears(sizes, 256, count=4)
    assert all(256 in g for g in gears)
    assert all(max(g) % 32 == 0 for g in gears)
    for h, w in sizes:  # every image, resized to short side 256, fits a gear of its orientation
        need = 256 * max(h, w) / min(h, w)
        same_orientation = [g for g in gears if (g[1] >= g[0]) == (w >= h)]
        assert any(max(g) >= need for g in same_orientation), (h, w, gears)
    assert len(gears) <= 4 + 1


def test_gear_count_is_bounded():
    with pytest.raises(GraphkitError):
        atc.gears([(10, 20)], 256, count=101)
    with pytest.raises(GraphkitError):
        atc.gears([], 256)


def test_variable_size_model_needs_data_then_writes_gears(tmp_path):
    model, table = two_conv(dynamic=True), golden_table()
    with pytest.raises(GraphkitError, match="gears"):
        atc.export(table, model, tmp_path)
    assert not (tmp_path / "atc" / "record.txt").exists()  # nothing half-written
    files = atc.export(table, model, tmp_path, image_sizes=[(480, 640), (640, 480)])
    gears = (tmp_path / "atc" / "gears.txt").read_text().split()
    assert gears and all(len(g.split(",")) == 2 for g in gears)
    cmd = " ".join(f.command for f in files)
    assert '--input_shape="x:1,3,-1,-1"' in cmd and "--dynamic_image_size=" in cmd


def test_amct_qdq_is_symmetric_per_channel_on_weights_only(tmp_path):
    model, table = two_conv(), golden_table()
    atc.export(table, model, tmp_path)
    q = onnx.load(tmp_path / "atc" / "model.qdq.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    weight_side = {"w1", "w2"} | {
        n.output[0]
        for n in q.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] in ("w1", "w2")
    }
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert not np.any(inits[n.input[2]]) and inits[n.input[2]].dtype == np.int8
            assert (inits[n.input[1]].size > 1) == (n.input[0] in weight_side)
    # weights stay float with a Q/DQ pair (the QAT form AMCT converts)
    assert {"w1", "w2"} <= set(inits)


def test_a_fixed_height_keeps_every_gear_at_that_height():
    sizes = [(480, 640), (640, 480), (500, 375), (512, 1024)]
    gears = atc.gears(sizes, 512, count=8, fixed="h")
    assert gears and all(h == 512 for h, _ in gears)
    for h, w in sizes:  # each image at height 512 fits some gear's width
        assert any(gw >= 512 * w / h for _, gw in gears), (h, w, gears)


def test_variable_size_gears_use_the_asked_short_side(tmp_path):
    model, table = two_conv(dynamic=True), golden_table()
    atc.export(table, model, tmp_path, image_sizes=[(480, 640)], gear_short_side=512)
    gears = (tmp_path / "atc" / "gears.txt").read_text().split()
    assert gears == ["512,704"]  # 512 * 640 / 480 = 682.7, rounded up to 32
