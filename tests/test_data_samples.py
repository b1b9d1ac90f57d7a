"""Samples from synthetic data: crops, preprocessing, ordering, sharding and errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphkit.data import (
    apply_affine,
    check_against_model,
    count_samples,
    iter_samples,
    load_input_spec,
    shard,
)
from graphkit.errors import GraphkitError

KP = [10, 10, 2] * 17


def write_img(path, h, w, bgr=(10, 20, 30)) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bgr
    cv2.imwrite(str(path), img)
    return img


@pytest.fixture
def coco(tmp_path):
    """3 images; 5 usable persons, plus a crowd and a keypoint-less annotation to skip."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    images, anns = [], []
    for i, (h, w) in enumerate([(60, 80), (100, 50), (40, 40)]):
        img = write_img(imgs / f"{i + 1:03d}.png", h, w)
        # a white 4x4 marker so crops can be checked geometrically
        img[20:24, 20:24] = 255
        cv2.imwrite(str(imgs / f"{i + 1:03d}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i + 1:03d}.png", "width": w, "height": h})
    boxes = [
        (1, [10, 10, 20, 30]),
        (1, [30, 5, 40, 40]),
        (2, [5, 5, 30, 80]),
        (3, [0, 0, 40, 40]),
        (3, [15, 15, 10, 10]),
    ]
    for n, (iid, box) in enumerate(boxes):
        anns.append(
            {
                "id": 100 + n,
                "image_id": iid,
                "bbox": box,
                "area": float(box[2] * box[3]),
                "num_keypoints": 17,
                "keypoints": KP,
                "iscrowd": 0,
                "category_id": 1,
            }
        )
    anns.append(
        {
            "id": 200,
            "image_id": 1,
            "bbox": [0, 0, 10, 10],
            "area": 1.0,
            "num_keypoints": 0,
            "keypoints": [0] * 51,
            "iscrowd": 0,
            "category_id": 1,
        }
    )
    anns.append(
        {
            "id": 201,
            "image_id": 2,
            "bbox": [0, 0, 10, 10],
            "area": 1.0,
            "num_keypoints": 3,
            "keypoints": KP,
            "iscrowd": 1,
            "category_id": 1,
        }
    )
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1}]}))
    return tmp_path


def topdown(root, **src):
    inp = {"name": "x", "size": [32, 32], "mean": [127.5] * 3, "std": [127.5] * 3}
    inp.update(src.pop("input", {}))
    source = {"type": "coco-topdown", "ann": "ann.json", "images": "imgs"}
    source.update(src)
    return load_input_spec({"input": inp, "source": source}, base_dir=root)


def test_coco_topdown_keeps_keypoint_persons_only(coco):
    spec = topdown(coco)
    samples = list(iter_samples(spec))
    assert count_samples(spec) == len(samples) == 5
    assert [s.meta["ann_id"] for s in samples] == [100, 101, 102, 103, 104]
    s = samples[0]
    assert s.feeds["x"].shape == (1, 32, 32, 3) and s.feeds["x"].dtype == np.float32
    assert s.meta["bbox"] == [10.0, 10.0, 20.0, 30.0]
    assert s.meta["area"] == 600.0 and s.meta["input_size"] == (32, 32)
    assert s.meta["image_path"].endswith("001.png") and s.meta["image_id"] == 1


def test_crop_puts_image_content_where_crop_to_image_says(coco):
    # image 3 (40x40) cropped on its full box: marker at image pixels 20..23
    s = list(iter_samples(topdown(coco, input={"mean": None, "std": None})))[3]
    crop = s.feeds["x"][0, :, :, 0]
    ys, xs = np.nonzero(crop > 200)
    centre_in_image = apply_affine([[xs.mean(), ys.mean()]], s.meta["crop_to_image"])[0]
    assert np.allclose(centre_in_image, [21.5, 21.5], atol=1.0)
    # the box is padded by 1.25: the crop's border is padding (pad_value 0)
    assert crop[0, 0] == 0 and crop[16, 16] > 0


def test_box_centre_maps_to_crop_centre(coco):
    s = next(iter_samples(topdown(coco)))
    centre = apply_affine([[16.0, 16.0]], s.meta["crop_to_image"])[0]
    assert np.allclose(centre, [10 + 20 / 2, 10 + 30 / 2])


@pytest.mark.parametrize(
    "inp, expect",
    [
        ({"color": "RGB"}, [(30 - 127.5) / 127.5, (20 - 127.5) / 127.5, (10 - 127.5) / 127.5]),
        ({"color": "BGR"}, [(10 - 127.5) / 127.5, (20 - 127.5) / 127.5, (30 - 127.5) / 127.5]),
        ({"mean": [0, 10, 20], "std": None, "scale": 0.5}, [15.0, 5.0, -5.0]),
        ({"mean": None, "std": None}, [30.0, 20.0, 10.0]),
    ],
)
def test_known_pixels_give_known_values(tmp_path, inp, expect):
    write_img(tmp_path / "a.png", 16, 16, bgr=(10, 20, 30))
    cfg = {"name": "x", "size": [16, 16], "mean": [127.5] * 3, "std": [127.5] * 3, **inp}
    spec = load_input_spec({"input": cfg, "source": {"type": "images", "images": str(tmp_path)}})
    x = next(iter_samples(spec)).feeds["x"]
    assert x.shape == (1, 16, 16, 3)
    assert np.allclose(x[0], np.array(expect, np.float32), atol=1e-6)


def test_nchw_int32_and_uint8_layouts(tmp_path):
    write_img(tmp_path / "a.png", 8, 8, bgr=(10, 20, 30))
    for dtype, np_dtype in (("int32", np.int32), ("uint8", np.uint8)):
        cfg = {"name": "x", "size": [8, 8], "layout": "NCHW", "dtype": dtype}
        spec = load_input_spec(
            {"input": cfg, "source": {"type": "images", "images": str(tmp_path)}}
        )
        x = next(iter_samples(spec)).feeds["x"]
        assert x.shape == (1, 3, 8, 8) and x.dtype == np_dtype and x.flags.c_contiguous
        assert [int(x[0, c, 3, 3]) for c in range(3)] == [30, 20, 10]


def test_letterbox_pads_with_pad_value_and_maps_back(tmp_path):
    img = write_img(tmp_path / "wide.png", 50, 100, bgr=(0, 0, 0))
    img[10:14, 60:64] = 255
    cv2.imwrite(str(tmp_path / "wide.png"), img)
    cfg = {"name": "x", "size": [100, 100], "dtype": "uint8", "pad_value": 114}
    spec = load_input_spec({"input": cfg, "source": {"type": "images", "images": str(tmp_path)}})
    s = next(iter_samples(spec))
    x = s.feeds["x"][0, :, :, 0]
    assert x[5, 50] == 114 and x[95, 50] == 114  # bands above and below
    assert x[50, 5] == 0  # image content
    ys, xs = np.nonzero(x > 200)
    back = apply_affine([[xs.mean(), ys.mean()]], s.meta["crop_to_image"])[0]
    assert np.allclose(back, [61.5, 11.5], atol=0.5)
    assert s.meta["bbox"] is None and s.meta["area"] == 5000.0


def test_stretch_resize_has_no_padding(tmp_path):
    write_img(tmp_path / "wide.png", 50, 100, bgr=(40, 40, 40))
    cfg = {"name": "x", "size": [20, 20], "dtype": "uint8", "pad_value": 114}
    src = {"type": "images", "images": str(tmp_path), "resize": "stretch"}
    x = next(iter_samples(load_input_spec({"input": cfg, "source": src}))).feeds["x"]
    assert (x == 40).all()


def test_shuffle_is_seeded_and_limit_takes_its_head(coco):
    ids = lambda spec: [s.meta["ann_id"] for s in iter_samples(spec)]
    a, b = ids(topdown(coco, shuffle=True, seed=3)), ids(topdown(coco, shuffle=True, seed=3))
    assert a == b and sorted(a) == [100, 101, 102, 103, 104]
    orders = {tuple(ids(topdown(coco, shuffle=True, seed=s))) for s in range(6)}
    assert len(orders) > 1  # the seed matters
    limited = topdown(coco, shuffle=True, seed=3, limit=2)
    assert ids(limited) == a[:2] and count_samples(limited) == 2


def test_shards_are_disjoint_and_cover_the_whole(coco):
    spec = topdown(coco, shuffle=True, seed=1, limit=4)
    whole = [s.meta["index"] for s in iter_samples(spec)]
    parts = [[s.meta["index"] for s in iter_samples(shard(spec, i, 3))] for i in range(3)]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == sorted(whole) and len(flat) == len(set(flat)) == 4
    assert sum(count_samples(shard(spec, i, 3)) for i in range(3)) == 4
    nested = [
        s.meta["index"] for j in range(2) for s in iter_samples(shard(shard(spec, 0, 3), j, 2))
    ]
    assert sorted(nested) == sorted(parts[0])


def test_detections_with_score_threshold(coco):
    dets = [
        {"image_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9, "category_id": 1},
        {"image_id": 2, "bbox": [0, 0, 20, 20], "score": 0.3, "category_id": 1},
        {"image_id": 3, "bbox": [0, 0, 20, 20], "score": 0.95, "category_id": 2},
        {"image_id": 3, "bbox": [5, 5, 20, 20], "score": 0.6},
    ]
    (coco / "dets.json").write_text(json.dumps(dets))
    samples = list(iter_samples(topdown(coco, dets="dets.json", score_thr=0.5)))
    assert [s.meta["det_score"] for s in samples] == [0.9, 0.6]
    assert all("ann_id" not in s.meta for s in samples)
    assert count_samples(topdown(coco, dets="dets.json", score_thr=0.2)) == 3


def test_box_partly_outside_is_clipped_fully_outside_is_rejected(coco):
    ann = json.loads((coco / "ann.json").read_text())
    ann["annotations"][0]["bbox"] = [-10, -10, 30, 30]  # keeps 20x20 inside
    (coco / "ann.json").write_text(json.dumps(ann))
    first = next(iter_samples(topdown(coco)))
    centre = apply_affine([[16.0, 16.0]], first.meta["crop_to_image"])[0]
    assert np.allclose(centre, [10.0, 10.0])
    ann["annotations"][0]["bbox"] = [500, 500, 30, 30]
    (coco / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(GraphkitError, match="annotation 100 in .* has box .* no area inside"):
        count_samples(topdown(coco))


def test_data_errors_are_one_sentence(coco):
    with pytest.raises(GraphkitError, match="annotation file .*missing.json does not exist"):
        count_samples(topdown(coco, ann="missing.json"))
    (coco / "nokp.json").write_text(
        json.dumps({"images": [], "annotations": [{"id": 1, "bbox": [0, 0, 1, 1]}]})
    )
    with pytest.raises(GraphkitError, match="no keypoint annotations"):
        count_samples(topdown(coco, ann="nokp.json"))
    (coco / "empty.json").write_text(
        json.dumps({"images": [], "annotations": [{"keypoints": [], "num_keypoints": 0}]})
    )
    with pytest.raises(GraphkitError, match="has no samples"):
        list(iter_samples(topdown(coco, ann="empty.json")))
    with pytest.raises(GraphkitError, match="images folder .* does not exist"):
        count_samples(topdown(coco, images="nowhere"))
    (coco / "imgs" / "002.png").write_bytes(b"not a png")
    with pytest.raises(GraphkitError, match=r"cannot read image .*002\.png"):
        list(iter_samples(topdown(coco)))
    (coco / "imgs" / "003.png").unlink()
    with pytest.raises(GraphkitError, match=r"image .*003\.png \(image id 3\) does not exist"):
        count_samples(topdown(coco))


def array_spec(path, kind, **inp):
    cfg = {"name": "x", "size": [4, 4], **inp}
    return load_input_spec({"input": cfg, "source": {"type": kind, "path": str(path)}})


def test_npy_folder_and_stacked_file(tmp_path):
    rng = np.random.default_rng(0)
    arrs = rng.standard_normal((3, 4, 4, 3)).astype(np.float32)
    folder = tmp_path / "f"
    folder.mkdir()
    for i, a in enumerate(arrs):
        np.save(folder / f"{i}.npy", a if i % 2 else a[None])  # with and without batch dim
    got = [s.feeds["x"] for s in iter_samples(array_spec(folder, "npy"))]
    assert len(got) == 3 and all(g.shape == (1, 4, 4, 3) for g in got)
    assert np.array_equal(np.concatenate(got), arrs)
    np.save(tmp_path / "all.npy", arrs.astype(np.float64))  # float64 casts to float32
    spec = array_spec(tmp_path / "all.npy", "npy")
    got = [s.feeds["x"] for s in iter_samples(spec)]
    assert count_samples(spec) == 3 and got[2].dtype == np.float32
    assert np.allclose(got[2][0], arrs[2])


def test_npz_one_file_many_arrays_and_stacked(tmp_path):
    arrs = np.arange(2 * 3 * 4 * 4, dtype=np.int32).reshape(2, 3, 4, 4)
    np.savez(tmp_path / "many.npz", a=arrs[0], b=arrs[1])
    spec = array_spec(tmp_path / "many.npz", "npz", layout="NCHW", dtype="int32")
    got = [s.feeds["x"] for s in iter_samples(spec)]
    assert np.array_equal(np.concatenate(got), arrs)
    np.savez(tmp_path / "stacked.npz", x=arrs, extra=np.ones((2, 5), np.float32))
    spec = array_spec(tmp_path / "stacked.npz", "npz", layout="NCHW", dtype="int32")
    samples = list(iter_samples(spec))
    assert len(samples) == 2 and np.array_equal(samples[1].feeds["x"][0], arrs[1])
    assert samples[1].feeds["extra"].shape == (1, 5)


def test_array_shape_and_dtype_are_checked(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(GraphkitError, match="has shape 1x5x5x3 but .* want 1x4x4x3"):
        list(iter_samples(array_spec(tmp_path / "bad.npy", "npy")))
    np.save(tmp_path / "f.npy", np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(GraphkitError, match="holds float32 values but input.dtype is int32"):
        list(iter_samples(array_spec(tmp_path / "f.npy", "npy", dtype="int32")))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(GraphkitError, match="not a readable .npz"):
        count_samples(array_spec(tmp_path / "junk.npz", "npz"))


def tiny_model(shape, elem=TensorProto.FLOAT, name="x") -> onnx.ModelProto:
    inp = helper.make_tensor_value_info(name, elem, shape)
    out = helper.make_tensor_value_info("y", elem, shape)
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "g", [inp], [out])
    return helper.make_model(graph)


def test_check_against_model_accepts_matching_and_dynamic_dims(coco):
    spec = topdown(coco)
    check_against_model(spec, tiny_model([1, 32, 32, 3]))
    check_against_model(spec, tiny_model(["N", 32, "W", 3]))


@pytest.mark.parametrize(
    "model, message",
    [
        (tiny_model([1, 32, 32, 3], name="image"), "input.name 'x' is not an input of the model"),
        (
            tiny_model([1, 32, 32, 3], TensorProto.INT32),
            "takes int32 but the spec's input.dtype is float32",
        ),
        (tiny_model([1, 3, 32, 32]), "is NCHW .* but the spec's input.layout is NHWC"),
        (tiny_model([1, 64, 64, 3]), "has shape 1x64x64x3 but the spec makes 1x32x32x3"),
        (tiny_model([32, 32, 3]), "has shape 32x32x3"),
    ],
)
def test_check_against_model_mismatches(coco, model, message):
    with pytest.raises(GraphkitError, match=message):
        check_against_model(topdown(coco), model)


def test_check_against_model_reads_array_shapes(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 7, 3), np.float32))
    spec = load_input_spec(
        {"input": {"name": "x"}, "source": {"type": "npy", "path": str(tmp_path)}}
    )
    check_against_model(spec, tiny_model([1, 7, 3]))
    with pytest.raises(GraphkitError, match="has shape 1x8x3 but the spec makes 1x7x3"):
        check_against_model(spec, tiny_model([1, 8, 3]))


def test_malformed_entries_are_one_sentence(coco):
    ann = json.loads((coco / "ann.json").read_text())
    ann["annotations"][1]["bbox"] = "oops"
    (coco / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(GraphkitError, match="annotation 101 in .* has a bbox that is not"):
        count_samples(topdown(coco))
    (coco / "dets.json").write_text(json.dumps([{"image_id": 1, "bbox": [1, 2], "score": 0.9}]))
    with pytest.raises(GraphkitError, match="detection 0 in .* lacks"):
        count_samples(topdown(coco, dets="dets.json"))
    np.savez(coco / "a.npz", x=np.zeros(3))
    with pytest.raises(GraphkitError, match="use type: npz"):
        count_samples(array_spec(coco / "a.npz", "npy"))
    np.save(coco / "a.npy", np.zeros(3))
    with pytest.raises(GraphkitError, match="use type: npy"):
        count_samples(array_spec(coco / "a.npy", "npz"))


def test_bench_counts_and_times_the_pipeline(tmp_path):
    from graphkit.data.bench import time_pipeline

    write_img(tmp_path / "a.png", 20, 30)
    write_img(tmp_path / "b.png", 30, 20)
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"input: {{name: x, size: [8, 8]}}\nsource: {{type: images, images: {tmp_path}}}\n"
    )
    r = time_pipeline(str(spec), repeat=1)
    assert r["samples"] == 2 and r["data_s"] > 0


def test_short_side_resize_gives_each_image_its_own_divisible_size_and_maps_back(tmp_path):
    wide = write_img(tmp_path / "a_wide.png", 48, 100, bgr=(0, 0, 0))
    wide[20:24, 70:74] = 255
    cv2.imwrite(str(tmp_path / "a_wide.png"), wide)
    write_img(tmp_path / "b_tall.png", 90, 30)
    cfg = {"name": "x", "size": [64, 64], "dtype": "uint8", "layout": "NCHW"}
    src = {"type": "images", "images": str(tmp_path), "resize": "short-side", "size_divisor": 32}
    a, b = iter_samples(load_input_spec({"input": cfg, "source": src}))
    # short side 48 -> 64 (x4/3), long side 100 -> 133.3 -> rounded up to 160
    assert a.feeds["x"].shape == (1, 3, 64, 160) and tuple(a.meta["input_size"]) == (64, 160)
    # portrait: short side 30 -> 64, long side 90 -> 192
    assert b.feeds["x"].shape == (1, 3, 192, 64) and tuple(b.meta["input_size"]) == (192, 64)
    x = a.feeds["x"][0, 0]
    ys, xs = np.nonzero(x > 200)
    back = apply_affine([[xs.mean(), ys.mean()]], a.meta["crop_to_image"])[0]
    assert np.allclose(back, [71.5, 21.5], atol=0.5)  # the bright square, in image pixels


@pytest.mark.parametrize(
    "source, size, message",
    [
        (
            {"type": "coco-topdown", "ann": "a.json", "images": "i"},
            [64, 64],
            "resizes whole images",
        ),
        ({"type": "images", "images": "i", "size_divisor": 48}, [64, 64], "multiple of"),
        (
            {"type": "images", "images": "i", "size_divisor": 0},
            [64, 64],
            "size_divisor: input should be greater than 0",
        ),
    ],
)
def test_short_side_resize_settings_that_cannot_work_are_refused(tmp_path, source, size, message):
    cfg = {"name": "x", "size": size}
    with pytest.raises(GraphkitError, match=message):
        load_input_spec({"input": cfg, "source": {**source, "resize": "short-side"}})


def test_short_side_resize_needs_a_model_with_free_height_and_width(tmp_path):
    write_img(tmp_path / "a.png", 48, 100)
    cfg = {"name": "x", "size": [64, 64], "layout": "NCHW"}
    src = {"type": "images", "images": str(tmp_path), "resize": "short-side"}
    spec = load_input_spec({"input": cfg, "source": src})
    check_against_model(spec, tiny_model(["N", 3, "H", "W"]))
    with pytest.raises(GraphkitError, match="fixed size .* short-side resizing"):
        check_against_model(spec, tiny_model([1, 3, 64, 64]))


def test_prefetched_keeps_order_raises_where_the_producer_failed_and_stops_early():
    import threading

    from graphkit.data import prefetched

    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        yield 2
        raise GraphkitError("image 3 is truncated")

    got = []
    with pytest.raises(GraphkitError, match="image 3 is truncated"):
        got.extend(prefetched(broken()))  # the items before the failure arrive
    assert got == [1, 2]
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetched(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer leaves: the producer thread ends, bounded by the queue
    assert len(produced) <= 5
    assert not any(t.name == "graphkit-prefetch" and t.is_alive() for t in threading.enumerate())


def _photo(path, ext: str) -> bytes:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path.with_suffix(ext)), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return path.with_suffix(ext).read_bytes()


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_truncated_image_is_refused_not_filled_with_grey(tmp_path, ext):
    from graphkit.data.preprocess import read_image

    whole = _photo(tmp_path / "a", ext)
    assert read_image(str(tmp_path / f"a{ext}")).shape == (48, 64, 3)
    (tmp_path / f"cut{ext}").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(GraphkitError, match="is truncated"):
        read_image(str(tmp_path / f"cut{ext}"))


def test_a_jpeg_with_a_camera_trailer_after_its_end_is_read(tmp_path):
    from graphkit.data.preprocess import read_image

    whole = _photo(tmp_path / "a", ".jpg")
    (tmp_path / "t.jpg").write_bytes(whole + b"SAMSUNG-TRAILER" * 10)
    np.testing.assert_array_equal(
        read_image(str(tmp_path / "t.jpg")), read_image(str(tmp_path / "a.jpg"))
    )
