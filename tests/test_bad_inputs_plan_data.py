"""Bad plans, data and evaluation inputs: one sentence, exit code 2, nothing written.

The plan's integer weights, versions, threshold range and held-out record are checked
at load; `table show` prints names from the plan without reading them as markup and
never writes its --json over the plan; data with NaN / inf / object arrays is refused
with the file and array named; a calibration that measured nothing writes no plan; the
ncnn path checks --bins as the ONNX path does; evaluation boxes and decode sections are
checked key by key.
"""

from __future__ import annotations

import base64
import json
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_bad_inputs import (  # noqa: F401
    digest,
    edit_plan,
    first_act,
    first_weight,
    good,
    run_in,
)
from test_data_samples import coco, topdown  # noqa: F401

from graphkit.cli import main
from graphkit.errors import GraphkitError, InputError
from graphkit.quant.table import QuantPlan

EXPORT = ["export", "plan.json", "model.onnx", "--target", "onnx", "--out-dir", "out"]
SHOW = ["table", "show", "plan.json"]
CALIBRATE = ["calibrate", "model.onnx", "--data", "spec.yaml", "-o", "new.json"]


def refused(
    good: Path,  # noqa: F811
    tmp_path: Path,
    capsys,
    monkeypatch,
    breaks: Callable[[Path], None],
    argv: list[str],
) -> str:
    """The one-line error of `argv` on a copy of the good workspace broken by `breaks`,
    after checking exit code 2, no traceback and no file written or changed."""
    ws = tmp_path / "ws"
    shutil.copytree(good, ws)
    breaks(ws)
    before = digest(ws)
    code, out, err = run_in(ws, argv, capsys, monkeypatch)
    assert code == 2, (code, err)
    assert "Traceback" not in out + err
    assert err.strip().count("\n") == 0, err
    assert err.startswith("graphkit: error:"), err
    assert digest(ws) == before  # nothing written, nothing changed
    return " ".join(err.split())


def packed(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


def with_int8(text: str, shape: list[int] | None = None) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        w = first_weight(d)
        w["int8"] = text
        w["shape"] = [8, 3, 3, 3] if shape is None else shape  # w1 of the planted model

    return change


# ---------------------------------------------------------------------------- the plan
@pytest.mark.parametrize(
    "change, expect",
    [
        (with_int8("@@@not base64@@@"), "weights.w1.int8 is not base64"),
        (with_int8("aGVsbG8="), "weights.w1.int8 is not zlib-compressed"),
        (with_int8(packed(b"\x01" * 7)), "weights.w1.int8 holds 7 integers but its shape"),
        (
            with_int8(packed(b"\x01" * 216), [1, 2, 3]),
            "weights.w1.int8 holds more than 6 integers but its shape [1, 2, 3]",
        ),
        (
            with_int8(base64.b64encode(zlib.compress(b"\x01" * 216)[:-4]).decode()),
            "weights.w1.int8 is cut short",
        ),
        (lambda d: d.update(schema_version=True), "schema version True"),
        (lambda d: first_act(d).update(amax=1e300), "amax: must be at most 1e+30"),
        (lambda d: first_weight(d).update(amax=[1e31] * 8), "amax.0: must be at most 1e+30"),
        (lambda d: d.update(activations={}), "has no activation ranges"),
        (
            lambda d: d.update(
                equalization=[{"producer": "a", "consumers": ["b"], "scales": [0.0]}]
            ),
            "equalization.0.scales.0",
        ),
        (
            lambda d: d.update(
                equalization=[{"producer": "nope", "consumers": ["b"], "scales": [1.0]}]
            ),
            "equalization names node 'nope', not in the model",
        ),
    ],
    ids=[
        "int8-not-base64",
        "int8-not-zlib",
        "int8-wrong-byte-count",
        "int8-not-matching-shape",
        "int8-truncated-zlib",
        "schema-version-boolean",
        "activation-amax-overflows",
        "weight-amax-overflows",
        "no-activations",
        "equalization-scale-zero",
        "equalization-unknown-node",
    ],
)
def test_export_refuses_a_broken_plan_at_load_naming_the_entry(
    good,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
    change,
    expect,
):
    err = refused(good, tmp_path, capsys, monkeypatch, edit_plan(change), EXPORT)
    assert expect in err


# ---------------------------------------------------------------------------- table show
@pytest.mark.parametrize(
    "change, flags, expect",
    [
        (lambda d: first_weight(d).update(amax=[]), ["--weights"], "weights.w1.amax"),
        (lambda d: first_act(d).update(consumers=[["Conv"]]), ["--wide"], "consumers.0"),
        (lambda d: first_act(d).update(consumers=[["Conv", "a", "b"]]), ["--wide"], "consumers.0"),
        (lambda d: d.update(recipe={"final": {"x": 1}}), [], "'recipe.final.sqnr_db' is missing"),
        (
            lambda d: d.update(recipe={"final": {"sqnr_db": 1.0}, "methods": {"mse": {}}}),
            [],
            "'recipe.methods.mse.sqnr_db' is missing",
        ),
        (lambda d: d.update(recipe={"final": [1]}), [], "recipe.final:"),
        (
            lambda d: d.update(recipe={"final": {"sqnr_db": 1.0}, "held_out": "x"}),
            [],
            "recipe.held_out:",
        ),
        (
            lambda d: d.update(recipe={"final": {"sqnr_db": 1.0, "agreement": "hi"}}),
            [],
            "recipe.final.agreement:",
        ),
    ],
    ids=[
        "weight-amax-empty",
        "consumer-not-a-pair",
        "consumer-a-triple",
        "final-without-sqnr",
        "method-score-empty",
        "final-a-list",
        "held-out-a-string",
        "agreement-a-string",
    ],
)
def test_table_show_refuses_malformed_plan_parts_in_one_sentence(
    good,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
    change,
    flags,
    expect,
):
    err = refused(good, tmp_path, capsys, monkeypatch, edit_plan(change), SHOW + flags)
    assert expect in err


@pytest.mark.parametrize("target", ["plan.json", "./plan.json"])
def test_table_show_json_refuses_to_overwrite_the_plan_it_reads(
    good,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
    target,
):
    err = refused(good, tmp_path, capsys, monkeypatch, lambda ws: None, SHOW + ["--json", target])
    assert f"--json {target} is an input" in err


def test_table_show_prints_markup_in_plan_names_literally(
    good,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
):
    ws = tmp_path / "ws"
    shutil.copytree(good, ws)

    def change(d: dict) -> None:
        d.update(method="[bold]x[/bold][/]", model_path="[/]")
        first_act(d)["consumers"] = [["[b]", "[/]"]]  # rendered (folded), never parsed
        d["keep_float"] = ["[/]keep"]
        d["recipe"] = {"final": {"sqnr_db": 30.0}, "methods": {"[/]m": {"sqnr_db": 30.0}}}

    edit_plan(change)(ws)
    code, out, err = run_in(ws, SHOW + ["--wide"], capsys, monkeypatch)
    assert code == 0, err
    assert "[bold]x[/bold][/]" in out and "model [/]" in out
    assert "[/]keep" in out and "[/]m 30.0 dB" in out


def test_held_out_summary_skips_a_malformed_recipe_built_in_code(good):  # noqa: F811
    from graphkit.quant.table import held_out_summary

    plan = QuantPlan.load(good / "plan.json")
    for recipe in ({"final": [1]}, {"final": {"x": 1}}, {"final": {"sqnr_db": "a"}}):
        plan.recipe = recipe
        assert held_out_summary(plan) is None
    plan.recipe = {"final": {"sqnr_db": 20.0, "agreement": 0.9}, "held_out": "x"}
    assert (
        held_out_summary(plan)
        == "held-out (? crops): mean head SQNR 20.0 dB (worst head 20.0), agreement 0.900"
    )
    plan.recipe["final"]["agreement_half95"] = 0.04
    assert held_out_summary(plan).endswith("agreement 0.900 ±0.040 (95 %)")


# ---------------------------------------------------------------------------- data
def bad_npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    """The workspace's spec reading data.npz beside it, which holds `arrays`."""

    def run(ws: Path) -> None:
        np.savez(ws / "data.npz", **arrays)
        spec = yaml.safe_load((ws / "spec.yaml").read_text())
        spec["source"]["path"] = "data.npz"  # relative to the spec
        (ws / "spec.yaml").write_text(yaml.safe_dump(spec))

    return run


@pytest.mark.parametrize(
    "breaks, expect",
    [
        (
            bad_npz(x=np.full((4, 3, 12, 12), np.nan, np.float32)),
            "data.npz array 'x' (row 0) holds NaN values",
        ),
        (
            bad_npz(x=np.full((4, 3, 12, 12), np.inf, np.float32)),
            "data.npz array 'x' (row 0) holds infinite values",
        ),
        (
            bad_npz(x=np.array([{"a": 1}, None], dtype=object)),
            "data.npz: array 'x' holds Python objects (dtype object)",
        ),
    ],
    ids=["nan", "inf", "object-array"],
)
def test_calibrate_refuses_unusable_npz_data_naming_file_and_array(
    good,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
    breaks,
    expect,
):
    err = refused(good, tmp_path, capsys, monkeypatch, breaks, CALIBRATE)
    assert expect in err


def test_npy_with_nan_in_one_row_is_refused_naming_the_row(tmp_path):
    from graphkit.data import iter_samples, load_input_spec

    x = np.zeros((3, 3, 4, 4), np.float32)
    x[2, 0, 0, 0] = np.nan
    np.save(tmp_path / "a.npy", x)
    spec = load_input_spec(
        {
            "input": {"name": "x", "size": [4, 4], "layout": "NCHW"},
            "source": {"type": "npy", "path": str(tmp_path / "a.npy")},
        }
    )
    with pytest.raises(GraphkitError, match=r"a\.npy \(row 2\) holds NaN values"):
        list(iter_samples(spec))


def test_calibration_that_measured_no_activation_refuses_to_build_a_plan():
    from quant_planted import make_model

    from graphkit.quant.calibrate import build_table
    from graphkit.quant.observers import TensorStats

    nothing_seen = {"x": TensorStats(), "r1": TensorStats()}  # count 0: only NaN / inf
    with pytest.raises(GraphkitError, match="calibration found no activation ranges"):
        build_table(make_model(), nothing_seen, "minmax")


# ---------------------------------------------------------------------------- ncnn --bins
@pytest.mark.parametrize("bins", [3, 100, 1 << 20, "2048", True])
def test_ncnn_calibration_checks_bins_as_the_onnx_path_does(tmp_path, bins):
    from graphkit.backends.ncnn.native import calibrate_ncnn_model

    # refused before any file is read (the model does not even exist)
    with pytest.raises(InputError, match="--bins .* must be a power of two from 8 to 65536"):
        calibrate_ncnn_model(
            tmp_path / "none.param", tmp_path / "spec.yaml", settings={"bins": bins}
        )


def test_ncnn_calibration_with_few_bins_works_like_the_onnx_path(tmp_path, pnnx_installed):
    from test_export_fixtures import feeds, tiny_cnn

    from graphkit.backends.ncnn.convert import convert

    nm = convert(tiny_cnn(), tmp_path / "conv")
    np.savez(tmp_path / "data.npz", x=np.concatenate([d["x"] for d in feeds(4)]))
    spec = {
        "input": {"name": "x", "layout": "NCHW", "size": [16, 16]},
        "source": {"type": "npz", "path": str(tmp_path / "data.npz")},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    argv = ["calibrate", str(nm.param), "--data", str(tmp_path / "spec.yaml")]
    argv += ["--out-dir", str(tmp_path / "int8"), "--bins", "64"]
    assert main(argv) == 0  # kl-ncnn's 2048 bins are re-binned from 64, not a 64-bin curve
    assert (tmp_path / "int8" / "model.table").is_file()


# ---------------------------------------------------------------------------- evaluation
def test_annotation_bbox_with_nan_is_refused_naming_the_annotation(coco):  # noqa: F811
    from graphkit.data import count_samples
    from graphkit.evaluators.coco import load_annotations

    ann = json.loads((coco / "ann.json").read_text())
    ann["annotations"][1]["bbox"] = [float("nan"), 1, 2, 3]
    (coco / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(GraphkitError, match=r"annotation 101 in .*ann\.json has a bbox with NaN"):
        count_samples(topdown(coco))
    with pytest.raises(GraphkitError, match=r"annotation 1 in .*ann\.json has a bbox .* with NaN"):
        load_annotations(coco / "ann.json")


@pytest.mark.parametrize(
    "field, value", [("bbox", [float("inf"), 1, 2, 3]), ("score", float("nan"))]
)
def test_detection_with_nan_or_inf_is_refused_naming_the_detection(coco, field, value):  # noqa: F811
    from graphkit.data import count_samples

    det = {"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "score": 0.9, field: value}
    (coco / "dets.json").write_text(json.dumps([det]))
    with pytest.raises(GraphkitError, match=r"detection 0 in .*dets\.json"):
        count_samples(topdown(coco, dets="dets.json"))


OFFSET = {"type": "heatmap-offset", "heatmap": "h", "offset": "o", "stride": 16, "layout": "NHWC"}


@pytest.mark.parametrize(
    "cfg, expect",
    [
        ({**OFFSET, "stride": 0}, "decode.stride: input should be greater than 0"),
        ({**OFFSET, "stride": "16"}, "decode.stride: input should be a valid number"),
        ({**OFFSET, "colour": 1}, "unknown key 'decode.colour'"),
        ({**OFFSET, "refine": True}, "unknown key 'decode.refine'"),  # a heatmap key
        ({**OFFSET, "layout": "XY"}, "decode.layout: must be NCHW or NHWC"),
        ({"type": "heatmap", "output": "o", "score_threshold": "high"}, "decode.score_threshold"),
        ({"type": "associative-embedding", "output": "o", "nms_kernel": 0}, "decode.nms_kernel"),
        ({"type": "regression-yx", "output": 5}, "decode.output: input should be a valid string"),
    ],
    ids=[
        "stride-zero",
        "stride-string",
        "unknown-key",
        "key-of-another-type",
        "layout",
        "threshold-string",
        "nms-kernel-zero",
        "output-not-a-name",
    ],
)
def test_decode_section_is_checked_key_by_key_per_type(cfg, expect):
    from graphkit.pose.decoders import build_decoder

    with pytest.raises(InputError, match="the model config") as info:
        build_decoder(cfg)
    assert expect in str(info.value)
    assert "\n" not in str(info.value)


def test_eval_refuses_a_decode_stride_of_zero_in_one_sentence(tmp_path, capsys, monkeypatch):
    import cv2
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx"
    )
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "1.png"), np.zeros((8, 8, 3), np.uint8))
    person = {"id": 1, "image_id": 1, "bbox": [0, 0, 8, 8], "area": 64.0, "iscrowd": 0}
    person.update(category_id=1, num_keypoints=17, keypoints=[4, 4, 2] * 17)
    image = {"id": 1, "file_name": "1.png", "width": 8, "height": 8}
    (tmp_path / "ann.json").write_text(json.dumps({"images": [image], "annotations": [person]}))
    config = {
        "input": {"name": "x", "size": [8, 8], "layout": "NHWC"},
        "source": {"type": "coco-topdown", "ann": "ann.json", "images": "imgs"},
        "decode": {**OFFSET, "heatmap": "y", "offset": "y", "stride": 0},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    before = digest(tmp_path)
    code, out, err = run_in(
        tmp_path, ["eval", "m.onnx", "--model-config", "cfg.yaml"], capsys, monkeypatch
    )
    assert code == 2, err
    assert "Traceback" not in out + err and err.strip().count("\n") == 0, err
    assert "decode.stride: input should be greater than 0" in err, err
    assert digest(tmp_path) == before


@pytest.mark.parametrize(
    "record, line",
    [
        (
            {"budget": 7, "tried": 9, "steps": [{"layer": "a"}] * 2, "stopped": "[/]budget spent"},
            "float search: kept 2 of at most 7 layers, tried 9; stopped: [/]budget spent",
        ),
        (
            {"budget": 7, "tried": 3, "steps": []},
            "float search: kept 0 of at most 7 layers, tried 3",
        ),
        ({"budget": "seven", "tried": 3}, None),  # not what quantize() writes: no line
    ],
    ids=["stopped", "older-plan", "malformed"],
)
def test_table_show_says_how_the_float_search_ended(
    good,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
    record,
    line,
):
    ws = tmp_path / "ws"
    shutil.copytree(good, ws)
    edit_plan(lambda d: d.update(recipe={"float": record}))(ws)
    code, out, err = run_in(ws, SHOW, capsys, monkeypatch)
    assert code == 0, err
    shown = [x for x in out.splitlines() if x.startswith("float search")]
    assert shown == ([line] if line else [])


def test_table_show_gives_a_uint8_entry_the_step_it_was_measured_with(good, tmp_path, capsys):  # noqa: F811
    plan = QuantPlan.load(good / "plan.json")
    entry = next(iter(plan.activations.values()))
    entry.amax, entry.min, entry.max, entry.unsigned = 2.55, 0.0, 2.55, True
    plan.save(tmp_path / "plan.json")
    assert main(["table", "show", str(tmp_path / "plan.json")]) == 0
    rows = capsys.readouterr().out.splitlines()
    row = next(line for line in rows if "│" in line and "uint8" in line)  # its table row
    # amax / 255 (uint8, and the shifted int8 of the signed-only backends), not amax / 127
    assert "0.01 " in row and "0.0200787" not in row
