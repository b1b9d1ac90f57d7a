"""The example specs on the real assets: counts, model compatibility, value ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphkit.data import check_against_model, count_samples, iter_samples, load_input_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "models"
MODELS = ["efficientpose", "posenet", "movenet-lightning"]


def gt_persons(ann: Path) -> int:
    """Independent count: annotations with keypoints that are not crowds."""
    anns = json.loads(ann.read_text())["annotations"]
    return sum(1 for a in anns if a["num_keypoints"] > 0 and not a["iscrowd"])


@pytest.fixture(autouse=True)
def _assets_env(assets, monkeypatch):
    monkeypatch.setenv("GRAPHKIT_ASSETS", str(assets))


@pytest.mark.parametrize("name", MODELS)
def test_example_spec_matches_its_model(assets, name):
    spec = load_input_spec(EXAMPLES / f"{name}.yaml")
    model = onnx.load(str(assets / "models" / f"{name}.onnx"), load_external_data=False)
    check_against_model(spec, model)
    outputs = {o.name for o in model.graph.output}
    named = [v for k, v in spec.decode.items() if k in ("output", "heatmap", "offset")]
    assert named and set(named) <= outputs  # decode names real outputs


def test_train_and_val_crop_counts(assets):
    spec = load_input_spec(EXAMPLES / "efficientpose.yaml")
    ann_dir = assets / "coco-mini" / "annotations"
    train = count_samples(spec)
    val = count_samples(
        spec.with_source(
            ann=ann_dir / "person_keypoints_val2017.json", images=assets / "coco-mini" / "val2017"
        )
    )
    assert (train, val) == (86, 68)
    assert train == gt_persons(ann_dir / "person_keypoints_train2017.json")
    assert val == gt_persons(ann_dir / "person_keypoints_val2017.json")


def test_detections_source_on_mmpose_data(assets):
    spec = load_input_spec(EXAMPLES / "posenet.yaml").with_source(
        ann=assets / "mmpose-coco" / "test_coco.json",
        images=assets / "mmpose-coco",
        dets=assets / "mmpose-coco" / "test_coco_det_AP_H_56.json",
        score_thr=0.5,
    )
    dets = json.loads((assets / "mmpose-coco" / "test_coco_det_AP_H_56.json").read_text())
    expect = sum(1 for d in dets if d["score"] >= 0.5 and d.get("category_id", 1) == 1)
    samples = list(iter_samples(spec.with_source(limit=3)))
    assert count_samples(spec) == expect
    assert all(s.meta["det_score"] >= 0.5 for s in samples)


@pytest.mark.parametrize(
    "name, dtype, lo, hi",
    [
        ("efficientpose", np.float32, -1.0, 1.0),
        ("movenet-lightning", np.int32, 0, 255),
    ],
)
def test_real_crops_have_the_model_range(name, dtype, lo, hi):
    spec = load_input_spec(EXAMPLES / f"{name}.yaml").with_source(limit=4)
    for s in iter_samples(spec):
        x = s.feeds[spec.input.name]
        assert x.dtype == dtype and x.min() >= lo and x.max() <= hi
        assert x.max() - x.min() > (hi - lo) / 4  # a real photo, not padding


def test_ground_truth_keypoints_land_inside_their_crops(assets):
    """crop_to_image is right on real data: labeled joints map into the 1.25x crop."""
    from graphkit.data import apply_affine, invert_affine

    ann = assets / "coco-mini" / "annotations" / "person_keypoints_val2017.json"
    kps = {a["id"]: a["keypoints"] for a in json.loads(ann.read_text())["annotations"]}
    spec = load_input_spec(EXAMPLES / "movenet-lightning.yaml").with_source(
        ann=ann, images=assets / "coco-mini" / "val2017", limit=20
    )
    inside = total = 0
    for s in iter_samples(spec):
        k = np.asarray(kps[s.meta["ann_id"]], float).reshape(17, 3)
        k = k[k[:, 2] > 0]
        crop = apply_affine(k[:, :2], invert_affine(s.meta["crop_to_image"]))
        h, w = s.meta["input_size"]
        inside += int(((crop >= 0) & (crop < [w, h])).all(axis=1).sum())
        total += len(k)
        # mmpose geometry: box centre -> crop centre, longer box side -> input side / 1.25
        # (up to the 1 px the box loses when clipped to the last pixel of the image)
        tol = w / s.meta["crop_scale"][0] + 1e-6
        x, y, bw, bh = s.meta["bbox"]
        corners = apply_affine([[x, y], [x + bw, y + bh]], invert_affine(s.meta["crop_to_image"]))
        assert np.allclose(corners.mean(axis=0), [w / 2, h / 2], atol=tol)
        assert np.isclose((corners[1] - corners[0]).max(), w / 1.25, atol=tol)
    assert total > 100 and inside / total > 0.97
