"""`graphkit eval` end to end: synthetic model and images (fast), one real model (slow)."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from graphkit.cli import main
from graphkit.errors import GraphkitError
from graphkit.evaluators.evaluate import agreement_of, evaluate


def regression_model(path, size=32, seed=0):
    """NHWC float image -> 1x1x17x3 (y, x, score) in [0, 1], depending on the pixels."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.02, (size * size * 3, 51)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Sigmoid", ["mm"], ["sig"]),
            helper.make_node("Reshape", ["sig", "shape"], ["kp"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, size, size, 3])],
        [helper.make_tensor_value_info("kp", TensorProto.FLOAT, [1, 1, 17, 3])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1, 1, 17, 3]), "shape"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.fixture()
def dataset(tmp_path):
    """4 images with 2-3 annotated persons each, a matching model and model config."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    images, anns = [], []
    for i in range(1, 5):
        name = f"{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(
            tmp_path / "img" / name
        )
        images.append({"id": i, "file_name": name, "width": 160, "height": 120})
        for _ in range(2 + i % 2):
            x, y, w, h = (
                rng.uniform(0, 60),
                rng.uniform(0, 40),
                rng.uniform(30, 90),
                rng.uniform(40, 70),
            )
            kp = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2)], 1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "num_keypoints": 17,
                    "keypoints": kp.ravel().tolist(),
                }
            )
    ann = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    regression_model(str(tmp_path / "model.onnx"))
    cfg = {
        "input": {"name": "image", "size": [32, 32], "layout": "NHWC", "std": 255.0},
        "source": {"type": "coco-topdown", "ann": "ann.json", "images": "img"},
        "decode": {"type": "regression-yx", "output": "kp"},
    }
    import yaml

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_eval_returns_every_stat_and_predictions_in_image_pixels(dataset):
    r = evaluate(dataset / "model.onnx", dataset / "cfg.yaml")
    assert set(r["stats"]) >= {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50"}
    assert r["samples"] == 10 and len(r["predictions"]) == 10
    kp = np.array([p["keypoints"] for p in r["predictions"]])
    assert kp.shape == (10, 17, 3)
    assert kp[..., 0].max() <= 200 and kp[..., 0].min() >= -40  # mapped back near the boxes


def test_workers_give_exactly_the_single_process_result(dataset, tmp_path):
    one = evaluate(dataset / "model.onnx", dataset / "cfg.yaml", results_path=tmp_path / "a.json")
    two = evaluate(
        dataset / "model.onnx", dataset / "cfg.yaml", workers=2, results_path=tmp_path / "b.json"
    )
    assert one["stats"] == two["stats"]
    assert one["predictions"] == two["predictions"]
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert agreement_of(one, two) == pytest.approx(1.0)


def test_limit_evaluates_only_the_first_boxes(dataset):
    r = evaluate(dataset / "model.onnx", dataset / "cfg.yaml", limit=3)
    assert r["samples"] == 3 and {p["index"] for p in r["predictions"]} == {0, 1, 2}


def test_annotation_file_without_keypoints_gives_one_sentence(dataset, capsys):
    ann = json.loads((dataset / "ann.json").read_text())
    for a in ann["annotations"]:
        a.pop("keypoints")
        a.pop("num_keypoints")
    (dataset / "boxes.json").write_text(json.dumps(ann))
    code = main(
        [
            "eval",
            str(dataset / "model.onnx"),
            "--model-config",
            str(dataset / "cfg.yaml"),
            "--ann",
            str(dataset / "boxes.json"),
        ]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "no keypoint annotations" in err and "Traceback" not in err


def test_missing_images_give_one_sentence(dataset, capsys):
    (dataset / "img" / "000000000002.jpg").unlink()
    out = dataset / "out.json"
    code = main(
        [
            "eval",
            str(dataset / "model.onnx"),
            "--model-config",
            str(dataset / "cfg.yaml"),
            "--json",
            str(out),
        ]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "does not exist" in err and "000000000002.jpg" in err.replace(" ", "")
    assert not out.exists()


def test_model_config_not_matching_the_model_is_refused(dataset):
    import yaml

    cfg = yaml.safe_load((dataset / "cfg.yaml").read_text())
    cfg["decode"]["output"] = "heatmaps"
    (dataset / "wrong.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(GraphkitError, match="decodes output 'heatmaps'"):
        evaluate(dataset / "model.onnx", dataset / "wrong.yaml")
    cfg = yaml.safe_load((dataset / "cfg.yaml").read_text())
    cfg["input"]["size"] = [64, 64]
    (dataset / "size.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(GraphkitError, match="shape"):
        evaluate(dataset / "model.onnx", dataset / "size.yaml")


def test_cli_writes_json_and_coco_results(dataset):
    out, res = dataset / "e.json", dataset / "r.json"
    code = main(
        [
            "eval",
            str(dataset / "model.onnx"),
            "--model-config",
            str(dataset / "cfg.yaml"),
            "--json",
            str(out),
            "--results",
            str(res),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    results = json.loads(res.read_text())
    assert len(results) == report["samples"] == 10
    assert all(r["category_id"] == 1 and len(r["keypoints"]) == 51 for r in results)


@pytest.mark.slow
def test_real_movenet_on_a_few_val_persons_scores_and_agrees_with_itself(assets):
    ann = assets / "coco-mini/annotations/person_keypoints_val2017.json"
    r = evaluate(
        assets / "models/movenet-lightning.onnx",
        "examples/models/movenet-lightning.yaml",
        ann=str(ann),
        images=str(assets / "coco-mini/val2017"),
        limit=8,
    )
    assert r["samples"] == 8
    assert r["stats"]["AP"] > 0.2  # a working decoder + mapping; random keypoints give ~0
    assert agreement_of(r, r) == pytest.approx(1.0)


@pytest.mark.slow
def test_real_posenet_on_ncnn_scores_like_onnxruntime(assets, tmp_path, pnnx_installed):
    pytest.importorskip("ncnn")
    from graphkit.backends.ncnn.convert import convert

    nm = convert(onnx.load(assets / "models/posenet.onnx"), tmp_path, "posenet")
    kw = {
        "ann": str(assets / "coco-mini/annotations/person_keypoints_val2017.json"),
        "images": str(assets / "coco-mini/val2017"),
        "limit": 6,
    }
    ort_r = evaluate(assets / "models/posenet.onnx", "examples/models/posenet.yaml", **kw)
    ncnn_r = evaluate(nm.param, "examples/models/posenet.yaml", **kw)
    assert ncnn_r["backend"] == "ncnn"
    assert agreement_of(ort_r, ncnn_r) > 0.99  # same fp32 network, other kernels
    assert abs(ort_r["stats"]["AP"] - ncnn_r["stats"]["AP"]) < 0.02


def ae_model(path, maps):
    """A 'network' whose output is the fixed maps (1, 34, h, w), whatever the image."""
    g = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["m"], keepdims=1),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["maps", "z"], ["out"]),
        ],
        "ae",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(maps.shape))],
        [
            numpy_helper.from_array(maps.astype(np.float32), "maps"),
            numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)


def test_bottom_up_associative_embedding_maps_people_back_through_the_letterbox(tmp_path):
    import yaml

    from graphkit.data.affine import apply_affine, invert_affine, resize_affine

    hm_size, k = 16, 17
    # person A in the left half, B in the right: same joints 9 cells apart (beyond NMS),
    # rows 2..10, inside the letterboxed image (heatmap rows 2..13)
    base = np.array([[j % 4 * 2, 2 + j // 4 * 2] for j in range(k)])
    cells = [base, base + [9, 0]]
    yy, xx = np.mgrid[0:hm_size, 0:hm_size]
    maps = np.zeros((34, hm_size, hm_size))
    for p, (cell, tag) in enumerate(zip(cells, (0.0, 3.0))):
        for j, (x, y) in enumerate(cell):
            bump = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 0.5) * (1.0 - 0.1 * p)
            maps[j] = np.maximum(maps[j], bump)
            maps[k + j][y, x] = tag
    ae_model(str(tmp_path / "ae.onnx"), maps[None])
    # a 128x96 image letterboxed into 64x64: keypoints go back through the inverse affine
    (tmp_path / "img").mkdir()
    Image.new("RGB", (128, 96)).save(tmp_path / "img" / "000000000007.jpg")
    back = invert_affine(resize_affine((128, 96), (64, 64), letterbox=True))
    anns = []
    for p, cell in enumerate(cells):
        kp = apply_affine(cell * 4.0, back)
        x0, y0 = kp.min(0)
        w, h = kp.max(0) - kp.min(0)
        anns.append(
            {
                "id": p + 1,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [x0, y0, w, h],
                "area": float(w * h),
                "num_keypoints": k,
                "keypoints": np.concatenate([kp, np.full((k, 1), 2)], 1).ravel().tolist(),
            }
        )
    gt = {
        "images": [{"id": 7, "file_name": "000000000007.jpg", "width": 128, "height": 96}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(gt))
    cfg = {
        "input": {"name": "image", "size": [64, 64], "layout": "NCHW", "std": 255.0},
        "source": {"type": "images", "images": "img", "ann": "ann.json"},
        "decode": {"type": "associative-embedding", "output": "out", "tag_threshold": 1.0},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = evaluate(tmp_path / "ae.onnx", tmp_path / "cfg.yaml")
    assert len(r["predictions"]) == 2 and r["oks_nms"]
    assert r["stats"]["AP"] == pytest.approx(1.0)


def test_eval_scores_the_configs_eval_split_and_warns_on_the_calibration_source(
    dataset, capsys, tmp_path
):
    import shutil

    import yaml

    from graphkit.evaluators.evaluate import evaluation_split, prepare_spec

    argv = ["eval", str(dataset / "model.onnx"), "--model-config"]
    assert main([*argv, str(dataset / "cfg.yaml"), "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "warning: scoring" in " ".join(out.split()) and "calibration data" in out
    assert json.loads((tmp_path / "a.json").read_text())["warning"]
    # an eval: section names another split: it is scored, without the warning
    shutil.copy(dataset / "ann.json", dataset / "held_out.json")
    cfg = yaml.safe_load((dataset / "cfg.yaml").read_text())
    cfg["eval"] = {"ann": str(dataset / "held_out.json"), "images": str(dataset / "img")}
    (dataset / "with_eval.yaml").write_text(yaml.safe_dump(cfg))
    spec = prepare_spec(dataset / "with_eval.yaml")
    assert spec.source.ann == str(dataset / "held_out.json")
    assert evaluation_split(dataset / "with_eval.yaml", spec) is None
    assert main([*argv, str(dataset / "with_eval.yaml")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning" not in out and "held_out.json" in out.replace(" ", "")


def test_bottom_up_agreement_matches_persons_by_oks_and_counts_the_unmatched():
    from graphkit.evaluators.evaluate import agreement_details

    rng = np.random.default_rng(0)

    def person(cx, cy, index, instance):
        kp = np.c_[
            rng.uniform(cx - 40, cx + 40, 17), rng.uniform(cy - 80, cy + 80, 17), np.ones(17)
        ]
        return {"index": index, "instance": instance, "keypoints": kp.tolist(), "area": 640 * 480}

    ref = [person(100, 200, 0, 0), person(400, 200, 0, 1), person(250, 240, 1, 0)]
    # the other model lists the two persons of image 0 the other way round, finds an extra
    # one, and moves the second person of image 0 by 3 pixels
    moved = dict(ref[1], keypoints=(np.asarray(ref[1]["keypoints"]) + [3, 0, 0]).tolist())
    other = [dict(moved, instance=0), dict(ref[0], instance=1), person(600, 100, 0, 2), ref[2]]
    joints = [True] * 17
    d = agreement_details(
        {"predictions": ref, "predicted_joints": joints},
        {"predictions": other, "predicted_joints": joints},
    )
    assert d["pairs"] == 3 and d["unmatched"] == 1 and d["unmatched_reference"] == 0
    assert d["matching"].startswith("greedy")
    # two identical persons and one moved by 3 px
    assert 0.9 < d["agreement"] < 1.0
    from graphkit.pose.oks import oks

    # pairing instance k with instance k (the old way) pairs people 300 px apart
    naive = oks(ref[0]["keypoints"], other[0]["keypoints"], 640 * 480)
    assert naive < 0.5 < d["agreement"]


def test_a_decoder_reading_some_outputs_runs_the_model_as_onnxruntime_optimizes_it():
    """Q/DQ models must run with onnxruntime's int8 kernels (optimized session) whether the
    decoder reads every output or only some (posenet: 2 of 4); only intermediate tensors
    need the unoptimized session."""
    import onnxruntime as ort

    from graphkit.evaluators.executors import OnnxExecutor

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("a", "b")]
    model = helper.make_model(
        helper.make_graph(nodes, "two", [x], outs), opset_imports=[helper.make_opsetid("", 13)]
    )
    ex = OnnxExecutor(model)
    feeds = {"x": np.array([[-1, 2, -3, 4]], np.float32)}
    assert ex.run(feeds, ["a"])["a"].tolist() == [[0, 2, 0, 4]]
    level = ex._sessions[("a",)].get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # an intermediate tensor (not a graph output) still gets the unoptimized session
    chain = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inner = OnnxExecutor(
        helper.make_model(
            helper.make_graph(chain, "inner", [x], [y]),
            opset_imports=[helper.make_opsetid("", 13)],
        )
    )
    assert inner.run(feeds, ["r"])["r"].tolist() == [[0, 2, 0, 4]]
    level = inner._sessions[("r",)].get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_agreement_reports_a_95_percent_interval_that_narrows_with_more_persons():
    from graphkit.evaluators.evaluate import agreement_details
    from graphkit.pose.oks import oks

    rng = np.random.default_rng(1)
    joints = [True] * 17

    def pair(n):
        ref, other = [], []
        for i in range(n):
            kp = np.c_[rng.uniform(0, 200, (17, 2)), np.ones(17)]
            moved = kp + np.c_[rng.normal(0, 4, (17, 2)), np.zeros(17)]
            ref.append({"index": i, "instance": 0, "keypoints": kp.tolist(), "area": 1e4})
            other.append({"index": i, "instance": 0, "keypoints": moved.tolist(), "area": 1e4})
        d = agreement_details(
            {"predictions": ref, "predicted_joints": joints},
            {"predictions": other, "predicted_joints": joints},
        )
        scores = [oks(a["keypoints"], b["keypoints"], 1e4) for a, b in zip(ref, other)]
        return d, scores

    small, scores = pair(20)
    low, high = small["interval95"]
    assert low < small["agreement"] < high
    # mean +- 1.96 standard errors of the per-person similarities
    se = np.std(scores, ddof=1) / np.sqrt(len(scores))
    assert small["standard_error"] == pytest.approx(se)
    assert high - low == pytest.approx(2 * 1.96 * se)
    large, _ = pair(500)
    assert large["interval95"][1] - large["interval95"][0] < (high - low) / 3
    # identical keypoints: agreement 1 with no spread
    ident = [
        {"index": i, "instance": 0, "keypoints": [[i, 1.0, 1.0]] * 17, "area": 1e4}
        for i in range(3)
    ]
    same = agreement_details(
        {"predictions": ident, "predicted_joints": joints},
        {"predictions": ident, "predicted_joints": joints},
    )
    assert same["interval95"] == [1.0, 1.0]


def test_paired_difference_of_two_models_is_tighter_than_either_interval():
    from graphkit.evaluators.evaluate import agreement_details, paired_difference

    rng = np.random.default_rng(2)
    joints = [True] * 17
    people = [np.c_[rng.uniform(0, 200, (17, 2)), np.ones(17)] for _ in range(60)]
    # how hard each person is varies a lot; the second model moves each joint 10 % less
    spread = rng.uniform(1, 12, len(people))

    def model(scale):
        moved = [
            p + np.c_[scale * s * rng.standard_normal((17, 2)), np.zeros(17)]
            for p, s in zip(people, spread)
        ]
        preds = [
            {"index": i, "instance": 0, "keypoints": k.tolist(), "area": 1e4}
            for i, k in enumerate(moved)
        ]
        return {"predictions": preds, "predicted_joints": joints}

    ref = model(0.0)
    first, second = agreement_details(ref, model(1.0)), agreement_details(ref, model(0.9))
    diff, half = paired_difference(first, second)
    assert diff == pytest.approx(second["agreement"] - first["agreement"])
    assert half < (first["interval95"][1] - first["interval95"][0]) / 2
    bottom_up = dict(first, matching="greedy by OKS within each image")
    with pytest.raises(GraphkitError, match="one person per crop"):
        paired_difference(bottom_up, second)


def test_eval_compares_two_models_against_one_reference_person_by_person(dataset, capsys):
    """--compare-with: this model's agreement minus an earlier one's, paired per person."""
    ref, a_json, b_json = (dataset / f"{n}.json" for n in ("ref", "a", "b"))
    cfg = ["--model-config", str(dataset / "cfg.yaml")]
    assert main(["eval", str(dataset / "model.onnx"), *cfg, "--json", str(ref)]) == 0
    # two "quantized" models: the reference's weights moved by a little and by more
    base = onnx.load(dataset / "model.onnx")
    w = numpy_helper.to_array(base.graph.initializer[0])
    for name, eps in (("a", 0.3), ("b", 0.05)):
        moved = w * (1 + eps * np.random.default_rng(5).standard_normal(w.shape))
        base.graph.initializer[0].CopyFrom(numpy_helper.from_array(moved.astype(np.float32), "w"))
        onnx.save(base, dataset / f"{name}.onnx")

    def argv(name, out):
        return ["eval", str(dataset / f"{name}.onnx"), *cfg, "--json", str(out)]

    assert main([*argv("a", a_json), "--agreement-with", str(ref)]) == 0
    capsys.readouterr()
    assert (
        main([*argv("b", b_json), "--agreement-with", str(ref), "--compare-with", str(a_json)]) == 0
    )
    out = " ".join(capsys.readouterr().out.split())
    a, b = json.loads(a_json.read_text()), json.loads(b_json.read_text())
    c = b["compared_with"]
    assert c["agreement"] == pytest.approx(a["agreement"])
    assert c["difference"] == pytest.approx(b["agreement"] - a["agreement"])
    assert c["difference"] > 0 and c["half95"] > 0  # less noise, closer to the reference
    assert f"{c['difference']:+.4f}" in out and "paired over 10 persons" in out
    # without a reference there is nothing to pair against; a missing file is named
    assert main([*argv("b", b_json), "--compare-with", str(a_json)]) == 2
    assert "--compare-with needs --agreement-with" in capsys.readouterr().err
    # bottom-up results (several persons per image) cannot be paired crop by crop
    whole = json.loads(a_json.read_text())
    whole["predictions"][1]["index"] = whole["predictions"][0]["index"]
    (dataset / "whole.json").write_text(json.dumps(whole))
    bottom_up = [*argv("b", b_json), "--agreement-with", str(ref)]
    assert main([*bottom_up, "--compare-with", str(dataset / "whole.json")]) == 2
    assert "top-down" in capsys.readouterr().err
    # a reference of other crops is refused before any evaluation (here: --limit)
    assert main([*bottom_up, "--limit", "4"]) == 2
    assert "was not evaluated on these crops" in " ".join(capsys.readouterr().err.split())
    # another dataset's results are refused before any evaluation
    fewer = json.loads(a_json.read_text())
    fewer["predictions"] = fewer["predictions"][:4]
    (dataset / "fewer.json").write_text(json.dumps(fewer))
    assert main([*bottom_up, "--compare-with", str(dataset / "fewer.json")]) == 2
    assert "was not evaluated on the crops of" in " ".join(capsys.readouterr().err.split())
    missing = dataset / "none.json"
    assert (
        main([*argv("b", b_json), "--agreement-with", str(ref), "--compare-with", str(missing)])
        == 2
    )
    assert "--compare-with" in capsys.readouterr().err
