"""Decoders on synthetic outputs whose right answer is known by construction."""

import numpy as np
import pytest

from graphkit.errors import GraphkitError
from graphkit.pose.decoders import (
    build_decoder,
    decode_heatmap,
    decode_heatmap_offset,
    decode_regression_yx,
    group_by_tag,
    heatmap_nms,
)


def gaussian_maps(h, w, centers, sigma=1.5):
    """(h, w, K) maps with one Gaussian bump per joint at float (x, y) centres."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in centers], axis=-1
    ).astype(np.float32)


def test_heatmap_peak_maps_to_input_pixels_with_quarter_shift_toward_higher_neighbour():
    # peaks at x=10.3 (right neighbour higher -> +0.25) and y=20.0 (symmetric -> no shift)
    hm = gaussian_maps(64, 48, [(10.3, 20.0), (5.0, 7.8)])
    nchw = hm.transpose(2, 0, 1)[None]
    kp = decode_heatmap(nchw, (256, 192), "NCHW", refine=True)
    assert kp[0, 0] == pytest.approx(10.25 * 4)
    assert kp[0, 1] == pytest.approx(20.0 * 4)
    assert kp[1, 0] == pytest.approx(5.0 * 4)
    assert kp[1, 1] == pytest.approx(7.75 * 4)
    assert kp[0, 2] == pytest.approx(hm[20, 10, 0])


def test_heatmap_nhwc_and_nchw_give_the_same_answer():
    hm = gaussian_maps(32, 32, [(3.6, 30.0), (16.0, 1.2), (0.0, 0.0)])
    a = decode_heatmap(hm[None], (128, 128), "NHWC")
    b = decode_heatmap(hm.transpose(2, 0, 1)[None], (128, 128), "NCHW")
    np.testing.assert_allclose(a, b)


def test_fullres_heatmap_without_refinement_is_plain_argmax():
    hm = gaussian_maps(368, 368, [(100.4, 200.0)] * 16)
    d = build_decoder(
        {"type": "heatmap-fullres", "output": "o", "layout": "NHWC", "joint_map": {2: 6, 13: 11}}
    )
    assert d.num_joints == 2 + 12  # highest mapped index + 1
    (inst,) = d({"o": hm[None, :, :, :14]}, (368, 368))
    assert inst.keypoints[6, :2].tolist() == [100.0, 200.0]
    assert inst.keypoints[11, :2].tolist() == [100.0, 200.0]
    assert d.predicted.sum() == 2 and inst.keypoints[0].tolist() == [0, 0, 0]


def test_efficientpose_joint_map_predicts_twelve_body_joints():
    jm = {2: 6, 3: 8, 4: 10, 6: 5, 7: 7, 8: 9, 10: 12, 11: 14, 12: 16, 13: 11, 14: 13, 15: 15}
    d = build_decoder({"type": "heatmap-fullres", "output": "o", "joint_map": jm, "num_joints": 16})
    assert d.predicted.tolist() == [False] * 5 + [True] * 12
    centres = [(float(i), float(i)) for i in range(16)]
    (inst,) = d({"o": gaussian_maps(20, 20, centres)[None]}, (20, 20))
    for m, c in jm.items():
        assert inst.keypoints[c, 0] == m


def test_heatmap_offset_adds_offsets_with_y_channels_first_and_sigmoid_score():
    k, g = 17, 25
    logits = np.full((g, g, k), -5.0, np.float32)
    off = np.zeros((g, g, 2 * k), np.float32)
    rng = np.random.default_rng(0)
    cells = rng.integers(0, g, size=(k, 2))
    for j, (cy, cx) in enumerate(cells):
        logits[cy, cx, j] = 2.0
        off[cy, cx, j] = 3.5  # y offset
        off[cy, cx, k + j] = -1.25  # x offset
    kp = decode_heatmap_offset(logits[None], off[None], 16, "NHWC")
    np.testing.assert_allclose(kp[:, 0], cells[:, 1] * 16 - 1.25)
    np.testing.assert_allclose(kp[:, 1], cells[:, 0] * 16 + 3.5)
    np.testing.assert_allclose(kp[:, 2], 1 / (1 + np.exp(-2.0)))


def test_heatmap_offset_rejects_offsets_of_the_wrong_size():
    with pytest.raises(GraphkitError, match="offset"):
        decode_heatmap_offset(np.zeros((1, 5, 5, 17)), np.zeros((1, 5, 5, 17)), 16)


def test_regression_yx_scales_normalized_coordinates_to_the_input():
    out = np.zeros((1, 1, 17, 3), np.float32)
    out[0, 0, :, 0] = 0.25  # y
    out[0, 0, :, 1] = 0.5  # x
    out[0, 0, :, 2] = 0.9
    kp = decode_regression_yx(out, (192, 160))
    assert kp[0].tolist() == pytest.approx([79.5, 47.5, 0.9])  # pixel-centre indices


def test_regression_xy_scales_normalized_coordinates_to_the_input():
    """mmpose RegressionLabel: x * W, y * H; DeepPose has no score (1), RLE's score is
    1 - sigmoid(sigma) averaged over the axes."""
    from graphkit.pose.decoders import decode_regression_xy

    deep = np.zeros((1, 17, 2), np.float32)
    deep[0, 3] = [0.25, 0.5]
    kp = decode_regression_xy(deep, (256, 192))
    assert kp[3].tolist() == pytest.approx([48.0, 128.0, 1.0])
    rle = np.zeros((1, 17, 4), np.float32)
    rle[0, 3] = [0.25, 0.5, 0.0, np.log(3.0)]  # sigmoid: 0.5 and 0.75
    kp = decode_regression_xy(rle, (256, 192))
    assert kp[3].tolist() == pytest.approx([48.0, 128.0, (0.5 + 0.25) / 2])
    (inst,) = build_decoder({"type": "regression-xy", "output": "o"})({"o": rle}, (256, 192))
    assert inst.keypoints[3][:2].tolist() == pytest.approx([48.0, 128.0])
    with pytest.raises(GraphkitError, match=r"\(x, y\)"):
        decode_regression_xy(np.zeros((1, 17, 3)), (256, 192))


def test_instance_score_is_the_mean_of_keypoint_scores_above_threshold():
    out = np.zeros((1, 1, 17, 3), np.float32)
    out[0, 0, :, 2] = 0.1
    out[0, 0, :4, 2] = [0.5, 0.7, 0.9, 0.3]
    (inst,) = build_decoder({"type": "regression-yx", "output": "y"})({"y": out}, (192, 192))
    assert inst.score == pytest.approx(0.6)


def test_nms_keeps_only_local_maxima():
    hm = gaussian_maps(30, 30, [(5, 5)]) + gaussian_maps(30, 30, [(20, 22)]) * 0.5
    peaks = heatmap_nms(hm, 5)
    ys, xs, _ = np.nonzero(peaks)
    assert sorted(zip(xs.tolist(), ys.tolist())) == [(5, 5), (20, 22)]


def test_associative_embedding_groups_two_people_by_tag():
    k = 17
    rng = np.random.default_rng(1)
    h = w = 64
    pos_a = rng.uniform(4, 28, size=(k, 2)).round()
    pos_b = pos_a + [32, 30]
    hm = np.maximum(gaussian_maps(h, w, pos_a, 1.0), 0.8 * gaussian_maps(h, w, pos_b, 1.0))
    # tag maps: person A near 1.0, person B near -1.0 (with a little per-joint noise)
    tags = np.zeros((h, w, k), np.float32)
    for j in range(k):
        xa, ya = pos_a[j].astype(int)
        xb, yb = pos_b[j].astype(int)
        tags[ya, xa, j] = 1.0 + rng.normal(0, 0.05)
        tags[yb, xb, j] = -1.0 + rng.normal(0, 0.05)
    people = group_by_tag(hm, tags, tag_threshold=1.0, refine=False)
    assert len(people) == 2
    people.sort(key=lambda p: p[:, 0].mean())
    np.testing.assert_allclose(people[0][:, :2], pos_a)
    np.testing.assert_allclose(people[1][:, :2], pos_b)


def test_associative_embedding_splits_a_person_when_tags_are_far_apart():
    k = 17
    pos = np.array([[5 + 3 * j, 10] for j in range(k)], dtype=float)
    hm = gaussian_maps(40, 60, pos, 1.0)
    tags = np.zeros((40, 60, k), np.float32)
    for j in range(k):
        tags[10, int(pos[j, 0]), j] = 0.0 if j in (0, 1, 2, 3, 4, 5, 6, 11, 12) else 5.0
    people = group_by_tag(hm, tags, tag_threshold=1.0, refine=False)
    assert len(people) == 2
    counts = sorted(int((p[:, 2] > 0).sum()) for p in people)
    assert counts == [8, 9]


def test_simcc_takes_each_axis_argmax_over_the_split_ratio():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, (1, 17, 384))
    y = rng.normal(0, 0.1, (1, 17, 512))
    x[0, :, 101], y[0, :, 300] = 0.9, 0.5  # joint positions (50.5, 150) in input pixels
    y[0, 3, :] -= 2.0  # joint 3: mean of the maxima below 0 -> no position, as mmpose
    (inst,) = build_decoder({"type": "simcc", "x": "sx", "y": "sy"})({"sx": x, "sy": y}, (256, 192))
    kp = inst.keypoints
    assert np.allclose(kp[0], [50.5, 150.0, 0.7])
    assert np.allclose(kp[3, :2], -1.0) and kp[3, 2] < 0
    (inst,) = build_decoder({"type": "simcc", "x": "sx", "y": "sy", "split_ratio": 1.0})(
        {"sx": x, "sy": y}, (256, 192)
    )
    assert np.allclose(inst.keypoints[0, :2], [101, 300])


def test_simcc_needs_both_outputs_and_a_positive_ratio():
    with pytest.raises(GraphkitError, match="'y'"):
        build_decoder({"type": "simcc", "x": "sx"})
    with pytest.raises(GraphkitError, match="split_ratio"):
        build_decoder({"type": "simcc", "x": "a", "y": "b", "split_ratio": 0})
    d = build_decoder({"type": "simcc", "x": "a", "y": "b"})
    with pytest.raises(GraphkitError, match="disagree on the joints"):
        d({"a": np.zeros((1, 17, 8)), "b": np.zeros((1, 16, 8))}, (4, 4))


def test_ae_decoder_from_config_scales_to_input_and_maps_to_coco():
    k = 17
    pos = np.array([[2 + j, 3 + j] for j in range(k)], dtype=float)
    maps = np.concatenate([gaussian_maps(32, 32, pos, 1.0), np.zeros((32, 32, k))], axis=-1)
    d = build_decoder({"type": "associative-embedding", "output": "o"})
    people = d({"o": maps.transpose(2, 0, 1)[None]}, (128, 128))
    assert len(people) == 1
    np.testing.assert_allclose(people[0].keypoints[:, 0], (pos[:, 0]) * 4, atol=1.01)
    assert people[0].score > 0.9


@pytest.mark.parametrize(
    "cfg, words",
    [
        (None, "decode"),
        ({"type": "bogus"}, "unknown decode type"),
        ({"type": "heatmap"}, "'output'"),
        ({"type": "heatmap-offset", "heatmap": "a", "offset": "b"}, "'stride'"),
        ({"type": "heatmap", "output": "o", "joint_map": {0: 20}}, "joint_map"),
    ],
)
def test_bad_decode_sections_get_one_sentence(cfg, words):
    with pytest.raises(GraphkitError, match=words):
        build_decoder(cfg)


def test_decoder_names_a_missing_output():
    d = build_decoder({"type": "regression-yx", "output": "nope"})
    with pytest.raises(GraphkitError, match="no output 'nope'"):
        d({"other": np.zeros((1, 1, 17, 3))}, (192, 192))


def _mirror_equivariant(out, layout="NCHW"):
    """What a flip-equivariant network returns for the mirrored input: flip_back is its
    own inverse (mirror twice, swap twice)."""
    from graphkit.pose.decoders import flip_back

    return flip_back(out, layout)


def test_flip_back_is_its_own_inverse_and_swaps_left_and_right_joints():
    from graphkit.pose.decoders import flip_back

    rng = np.random.default_rng(0)
    maps = rng.random((1, 34, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(flip_back(flip_back(maps, "NCHW"), "NCHW"), maps)
    back = flip_back(maps, "NCHW")
    np.testing.assert_array_equal(back[0, 1], maps[0, 2, :, ::-1])  # left eye <- right eye
    np.testing.assert_array_equal(back[0, 17 + 5], maps[0, 17 + 6, :, ::-1])  # tags too
    np.testing.assert_array_equal(back[0, 0], maps[0, 0, :, ::-1])  # the nose stays
    nhwc = np.moveaxis(maps, 1, -1)
    np.testing.assert_array_equal(flip_back(nhwc, "NHWC"), np.moveaxis(back, 1, -1))


def test_ae_flip_test_averages_heatmaps_and_appends_the_flipped_tags():
    from graphkit.pose.decoders import build_decoder

    dec = build_decoder({"type": "associative-embedding", "output": "o", "flip_test": True})
    rng = np.random.default_rng(1)
    out = rng.random((1, 34, 8, 8)).astype(np.float32)
    both = dec.flip({"o": out}, {"o": _mirror_equivariant(out)})["o"]
    assert both.shape == (1, 51, 8, 8)
    np.testing.assert_allclose(both[:, :17], out[:, :17], rtol=1e-6)  # same heatmaps
    np.testing.assert_array_equal(both[:, 17:34], out[:, 17:])
    np.testing.assert_array_equal(both[:, 34:], out[:, 17:])  # the second tag dimension
    assert dec({"o": both}, (32, 32)) is not None  # decodes with 2-D tags


def test_heatmap_flip_test_shifts_the_mirrored_map_one_pixel_as_mmpose_does():
    from graphkit.pose.decoders import build_decoder

    rng = np.random.default_rng(2)
    out = rng.random((1, 17, 8, 6)).astype(np.float32)
    plain = build_decoder(
        {"type": "heatmap", "output": "h", "flip_test": True, "flip_shift": False}
    )
    np.testing.assert_allclose(
        plain.flip({"h": out}, {"h": _mirror_equivariant(out)})["h"], out, rtol=1e-6
    )
    shifted = build_decoder({"type": "heatmap", "output": "h", "flip_test": True})
    got = shifted.flip({"h": out}, {"h": _mirror_equivariant(out)})["h"]
    np.testing.assert_allclose(got[..., 1:], (out[..., 1:] + out[..., :-1]) / 2, rtol=1e-6)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"type": "regression-yx", "output": "o", "flip_test": True}, "not regression-yx"),
        ({"type": "heatmap", "output": "o", "flip_test": "yes"}, "true or false"),
        (
            {"type": "heatmap-fullres", "output": "o", "flip_test": True, "joint_map": {0: 0}},
            "flip_test is for heatmap",
        ),
        (
            {"type": "heatmap", "output": "o", "flip_test": True, "joint_map": {0: 5, 1: 6}},
            "17 joints in COCO order",
        ),
    ],
)
def test_flip_test_settings_that_cannot_work_are_refused(cfg, message):
    from graphkit.pose.decoders import build_decoder

    with pytest.raises(GraphkitError, match=message):
        build_decoder(cfg)
