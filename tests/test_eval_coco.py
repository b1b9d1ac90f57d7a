"""COCO keypoint AP plumbing: GT fed back scores 1.0, and matches pycocotools run by hand."""

import contextlib
import io
import json

import numpy as np
import pytest

from graphkit.errors import GraphkitError
from graphkit.evaluators.coco import (
    COCO_SIGMAS,
    agreement,
    check_annotations,
    keypoint_ap,
    load_annotations,
    make_result,
    mask_unpredicted,
    oks,
    rescore,
)


def synthetic_gt(n_images=3, per_image=3, seed=0):
    rng = np.random.default_rng(seed)
    images, anns = [], []
    aid = 1
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i:012d}.jpg"})
        for _ in range(per_image):
            x, y = rng.uniform(0, 300), rng.uniform(0, 200)
            w, h = rng.uniform(60, 300), rng.uniform(100, 260)
            kp = np.zeros((17, 3))
            kp[:, 0] = rng.uniform(x, x + w, 17)
            kp[:, 1] = rng.uniform(y, y + h, 17)
            kp[:, 2] = rng.choice([0, 1, 2], 17, p=[0.2, 0.2, 0.6])
            kp[kp[:, 2] == 0, :2] = 0
            anns.append(
                {
                    "id": aid,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": w * h * 0.6,
                    "iscrowd": 0,
                    "keypoints": kp.round(1).ravel().tolist(),
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                }
            )
            aid += 1
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}],
    }


def gt_as_results(gt, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    res = []
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"], float).reshape(17, 3)
        kp[:, :2] += rng.normal(0, noise, (17, 2)) if noise else 0
        kp[:, 2] = 1.0
        res.append(make_result(a["image_id"], kp, float(rng.uniform(0.3, 1.0))))
    return res


def test_ground_truth_fed_back_as_predictions_scores_ap_one():
    gt = synthetic_gt()
    stats = keypoint_ap(gt, gt_as_results(gt))
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AR"] == pytest.approx(1.0)
    assert set(stats) >= {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50"}


def test_ap_equals_pycocotools_run_directly(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = synthetic_gt(4, 4, seed=3)
    res = gt_as_results(gt, noise=6.0, seed=5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(cg, cg.loadRes(str(tmp_path / "res.json")), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = keypoint_ap(gt, res)
    assert 0.05 < ours["AP"] < 0.99  # the noise makes it a real test
    assert ours["AP"] == pytest.approx(ev.stats[0])
    assert ours["AP50"] == pytest.approx(ev.stats[1])
    assert ours["AR"] == pytest.approx(ev.stats[5])


def test_evaluation_leaves_the_callers_annotations_and_results_untouched():
    gt = synthetic_gt(3, 3, seed=2)
    res = gt_as_results(gt, noise=4.0, seed=1)
    gt_before, res_before = json.dumps(gt, sort_keys=True), json.dumps(res, sort_keys=True)
    first = keypoint_ap(gt, res)
    assert json.dumps(gt, sort_keys=True) == gt_before
    assert json.dumps(res, sort_keys=True) == res_before
    assert keypoint_ap(gt, res) == first  # and a second run sees the same data


def test_image_ids_restrict_the_evaluation():
    gt = synthetic_gt(3, 2)
    res = [r for r in gt_as_results(gt) if r["image_id"] == 1]
    assert keypoint_ap(gt, res)["AR"] < 0.5
    assert keypoint_ap(gt, res, image_ids=[1])["AP"] == pytest.approx(1.0)


def test_no_results_give_zero_not_an_error():
    assert keypoint_ap(synthetic_gt(), [])["AP"] == 0.0


def test_unpredicted_joints_become_unlabeled_and_do_not_count():
    gt = synthetic_gt(2, 2)
    predicted = np.array([False] * 5 + [True] * 12)
    masked = mask_unpredicted(gt, predicted)
    for a, b in zip(gt["annotations"], masked["annotations"]):
        kp = np.asarray(b["keypoints"]).reshape(17, 3)
        assert (kp[:5] == 0).all()
        assert b["num_keypoints"] == int((kp[:, 2] > 0).sum())
        assert a["keypoints"][15:] == b["keypoints"][15:]
    # predictions with garbage face joints still score 1.0 against the masked truth
    res = gt_as_results(gt)
    for r in res:
        r["keypoints"][:15] = [0.0] * 15
    assert keypoint_ap(masked, res)["AP"] == pytest.approx(1.0)
    assert keypoint_ap(gt, res)["AP"] < 1.0


def test_rescore_is_mean_above_threshold_times_box_score():
    assert rescore(np.array([0.1, 0.5, 0.9]), 0.5) == pytest.approx(0.35)
    assert rescore(np.array([0.1, 0.1]), 1.0) == 0.0


def test_oks_matches_the_formula_by_hand():
    a = np.zeros((17, 3))
    b = np.zeros((17, 3))
    b[5, 0] = 3.0  # one joint 3 px away
    area = 400.0
    k = 2 * COCO_SIGMAS[5]
    expected = (16 + np.exp(-9 / (2 * area * k * k))) / 17
    assert oks(a, b, area) == pytest.approx(expected)


def test_agreement_is_one_for_identical_predictions_and_drops_with_noise():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 100, (5, 17, 3))
    areas = [1000.0] * 5
    assert agreement(p, p, areas) == pytest.approx(1.0)
    q = p.copy()
    q[:, :5, :2] += 50  # face joints far off
    joints = [False] * 5 + [True] * 12
    assert agreement(p, q, areas, joints) == pytest.approx(1.0)
    assert agreement(p, q, areas) < 0.8
    with pytest.raises(GraphkitError, match="matching"):
        agreement(p, q[:3], areas)


def test_annotation_file_without_keypoints_is_refused(tmp_path):
    gt = synthetic_gt()
    for a in gt["annotations"]:
        del a["keypoints"]
    f = tmp_path / "instances.json"
    f.write_text(json.dumps(gt))
    with pytest.raises(GraphkitError, match="no keypoint annotations"):
        load_annotations(f)
    with pytest.raises(GraphkitError, match="not a COCO annotation"):
        check_annotations([1, 2])
    with pytest.raises(GraphkitError, match="does not exist"):
        load_annotations(tmp_path / "missing.json")
