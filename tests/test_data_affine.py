"""Affine helpers: crops and resizes map points to the model input and back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from graphkit.data.affine import (
    apply_affine,
    box_to_center_scale,
    get_affine,
    invert_affine,
    resize_affine,
)


def test_image_point_maps_into_crop_and_back():
    M = get_affine(center=(120.0, 80.0), scale_wh=(50.0, 50.0), out_size=(200, 200))
    pts = np.array([[120.0, 80.0], [100.0, 60.0], [137.3, 91.9]])
    crop = apply_affine(pts, M)
    assert np.allclose(crop[0], [100.0, 100.0])  # box centre -> output centre
    assert np.allclose(crop[1], [20.0, 20.0])  # 20 px up-left at scale 4
    assert np.allclose(apply_affine(crop, invert_affine(M)), pts)


def test_affine_with_different_output_width_and_height():
    M = get_affine(center=(10.0, 20.0), scale_wh=(30.0, 40.0), out_size=(192, 256))
    corners = apply_affine([[10 - 15, 20 - 20], [10 + 15, 20 + 20]], M)
    assert np.allclose(corners, [[0, 0], [192, 256]])


def test_apply_affine_keeps_score_column():
    M = get_affine((0.0, 0.0), (10.0, 10.0), (20, 20))
    out = apply_affine(np.array([[[1.0, 2.0, 0.7]]]), M)
    assert out.shape == (1, 1, 3)
    assert out[0, 0, 2] == pytest.approx(0.7)


@pytest.mark.parametrize(
    "bbox, aspect, expect_wh",
    [
        ((0, 0, 100, 200), 1.0, (250.0, 250.0)),  # tall box -> square on its height
        ((0, 0, 300, 100), 1.0, (375.0, 375.0)),  # wide box -> square on its width
        ((0, 0, 300, 100), 0.75, (375.0, 500.0)),  # 3:4 input: height grows to w / 0.75
    ],
)
def test_box_grows_to_input_aspect_then_padding(bbox, aspect, expect_wh):
    center, scale = box_to_center_scale(bbox, aspect, padding=1.25)
    assert np.allclose(center, [bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2])
    assert np.allclose(scale, expect_wh)


def test_letterbox_keeps_aspect_and_centres_the_image():
    # 200x100 image into 100x100: scale 0.5, 25 px bands above and below.
    M = resize_affine((200, 100), (100, 100), letterbox=True)
    # pixel-centre convention: the image's outer edges (-0.5, 199.5) map to (-0.5, 99.5)
    edges = apply_affine([[-0.5, -0.5], [199.5, 99.5]], M)
    assert np.allclose(edges, [[-0.5, 24.5], [99.5, 74.5]])
    assert np.allclose(apply_affine(edges, invert_affine(M)), [[-0.5, -0.5], [199.5, 99.5]])


def test_stretch_resize_fills_both_axes():
    M = resize_affine((200, 100), (100, 100), letterbox=False)
    assert np.allclose(apply_affine([[199.5, 99.5]], M), [[99.5, 99.5]])
    assert M[0, 0] == pytest.approx(0.5) and M[1, 1] == pytest.approx(1.0)
