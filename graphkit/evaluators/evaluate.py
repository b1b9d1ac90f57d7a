"""COCO keypoint AP of a pose model on any backend (onnxruntime or ncnn), top-down.

Each person box (from the ground truth, or from a detection results file) is cropped as
the model config's input spec says, run, decoded by its `decode:` section, mapped back to
the image through the crop's affine and scored the mmpose way. pycocotools gives AP on the
ground truth with the joints the model does not predict marked unlabeled. `workers`
splits the samples over processes; results are re-assembled in sample order, so the
outcome is identical to a single process.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from graphkit.data import (
    InputSpec,
    apply_affine,
    count_samples,
    iter_samples,
    load_input_spec,
    prefetched,
    shard,
)
from graphkit.errors import GraphkitError
from graphkit.evaluators.coco import (
    keypoint_ap,
    load_annotations,
    make_result,
    mask_unpredicted,
    oks_nms,
)
from graphkit.evaluators.executors import open_executor
from graphkit.pose.decoders import Decoder, build_decoder


def prepare_spec(
    config: str | os.PathLike | InputSpec,
    ann: str | None = None,
    images: str | None = None,
    dets: str | None = None,
    limit: int | None = None,
) -> InputSpec:
    """The model config with the evaluation data swapped in: --ann/--images/--dets where
    given, else the config's `eval:` section, else (flagged `scores_source` in
    `evaluation_split`) its `source:`, which is usually the calibration data."""
    spec = config if isinstance(config, InputSpec) else load_input_spec(config)
    overrides: dict[str, Any] = {}
    if ann is None and images is None and spec.evaluation:
        overrides.update(spec.evaluation)
    if ann is not None:
        overrides["ann"] = ann
    if images is not None:
        overrides["images"] = images
    if dets is not None:
        overrides["dets"] = dets
    if limit is not None:
        overrides["limit"] = limit
    if overrides:
        spec = spec.with_source(**overrides)
    if spec.source.type not in ("coco-topdown", "images"):
        raise GraphkitError(
            f"evaluation needs a coco-topdown (or images) source, the config has {spec.source.type}"
        )
    if spec.source.ann is None:
        raise GraphkitError("evaluation needs COCO keypoint annotations (--ann)")
    return spec


def evaluation_split(config: str | os.PathLike | InputSpec, spec: InputSpec) -> str | None:
    """A warning when `spec` scores the config's own `source:` (its calibration data), else
    None: an AP on the images a model was calibrated on looks better than it is."""
    base = config if isinstance(config, InputSpec) else load_input_spec(config)
    if spec.source.ann and spec.source.ann == base.source.ann:
        return (
            f"scoring {spec.source.ann}, the config's source: (the calibration data); add an "
            "eval: section to the config or pass --ann/--images for a held-out split"
        )
    return None


def check_model_matches(executor, spec: InputSpec, decoder: Decoder) -> None:
    """One sentence when the model config does not describe this model."""
    if executor.kind == "onnx":
        from graphkit.data import check_against_model

        check_against_model(spec, executor.model)
    outputs = executor.outputs()
    missing = [n for n in decoder.outputs if n not in outputs]
    if missing and executor.kind == "onnx":
        raise GraphkitError(
            f"the model config decodes output '{missing[0]}' but the model's outputs are "
            f"{', '.join(outputs)}"
        )


def output_blobs(executor, decoder: Decoder) -> dict[str, str]:
    """Decoder output name -> the executor's tensor name (ncnn renames outputs out0, ...).

    ncnn models use the decode section's `ncnn_outputs: {ONNX name: ncnn blob}`, else the
    model.outputs.json graphkit's export wrote beside them, or the only output when the
    decoder reads one.
    """
    if executor.kind == "onnx":
        return {n: n for n in decoder.outputs}
    outs = executor.outputs()
    mapping = decoder.options.get("ncnn_outputs") or getattr(executor, "onnx_outputs", {})
    result = {}
    for n in decoder.outputs:
        if n in mapping:
            result[n] = str(mapping[n])
        elif n in outs:
            result[n] = n
        elif len(decoder.outputs) == 1 and len(outs) == 1:
            result[n] = outs[0]
        else:
            raise GraphkitError(
                f"the ncnn model has no output '{n}' (its outputs: {', '.join(outs)}); add "
                "decode.ncnn_outputs {ONNX output name: ncnn blob} to the model config"
            )
    known = {t for t in executor.tensor_info()} | set(outs)
    bad = [b for b in result.values() if b not in known]
    if bad:
        raise GraphkitError(f"decode.ncnn_outputs names blob '{bad[0]}' that the ncnn model lacks")
    return result


def predict_shard(
    model_path: str,
    backend: str | None,
    spec: InputSpec,
    index: int = 0,
    count: int = 1,
    threads: int | None = None,
    on_sample: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Predictions for part `index` of `count` of the samples (one process' share)."""
    decoder = build_decoder(spec.decode, config_name(spec))
    executor = open_executor(model_path, backend, threads)
    check_model_matches(executor, spec, decoder)
    part = shard(spec, index, count) if count > 1 else spec
    blobs = output_blobs(executor, decoder)
    out = []
    # the next images are read and warped while this one runs
    for sample in prefetched(iter_samples(part)):
        meta = sample.meta
        got = executor.run(sample.feeds, [blobs[n] for n in decoder.outputs])
        raw = {n: got[blobs[n]] for n in decoder.outputs}
        if decoder.flip is not None:  # test-time flip: the mirrored input too, combined
            w_axis = 3 if spec.input.layout == "NCHW" else 2
            mirrored = dict(sample.feeds)
            x = mirrored[spec.input.name]
            mirrored[spec.input.name] = np.ascontiguousarray(np.flip(x, axis=w_axis))
            got = executor.run(mirrored, [blobs[n] for n in decoder.outputs])
            raw = decoder.flip(raw, {n: got[blobs[n]] for n in decoder.outputs})
        for k, inst in enumerate(decoder(raw, tuple(meta["input_size"]))):
            kp = inst.keypoints.copy()
            kp[:, :2] = apply_affine(kp[:, :2], meta["crop_to_image"])
            kp[~decoder.predicted] = 0.0
            out.append(
                {
                    "index": int(meta["index"]),
                    "instance": k,
                    "image_id": int(meta["image_id"]),
                    "ann_id": meta.get("ann_id"),
                    "box_score": float(meta.get("det_score") or 1.0),
                    "keypoint_score": inst.score,
                    "area": float(meta["area"]),
                    "keypoints": kp.tolist(),
                }
            )
        if on_sample is not None:
            on_sample()
    return out


def _model_files(model_path: str) -> dict[str, bytes]:
    """The model's file(s) by suffix, to send to Ray tasks (ONNX external data inlined)."""
    p = Path(model_path)
    if p.suffix == ".param":
        return {".param": p.read_bytes(), ".bin": p.with_suffix(".bin").read_bytes()}
    from graphkit.model import load_model

    return {".onnx": load_model(p).SerializeToString()}


def _predict_task(backend, spec, index, count, files):
    """One Ray task: the model's files written to a scratch folder, then one shard."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="graphkit-ray-") as tmp:
        for suffix, data in files.items():
            (Path(tmp) / f"model{suffix}").write_bytes(data)
        main = Path(tmp) / ("model.param" if ".param" in files else "model.onnx")
        return predict_shard(str(main), backend, spec, index, count, threads=1)


def _predict_ray(model_path, backend, spec, workers, total, on_sample, address):
    from graphkit.runtime.ray_tasks import connect, run_tasks

    open_executor(model_path, backend)  # a bad model or backend fails here, in one sentence
    count = max(1, min(total, workers if workers > 1 else connect(address)))

    def done(_i: int, part) -> None:
        if on_sample is not None:
            for _ in {p["index"] for p in part}:
                on_sample()

    parts = run_tasks(
        _predict_task,
        [(backend, spec, i, count) for i in range(count)],
        shared={"files": _model_files(model_path)},
        on_done=done,
        address=address,
    )
    return [p for part in parts for p in part], count


def config_name(spec: InputSpec) -> str:
    """How errors name the model config: its file, when it came from one."""
    return f"model config {spec.origin}" if spec.origin else "the model config"


def evaluate(
    model_path: str | os.PathLike,
    config: str | os.PathLike | InputSpec,
    ann: str | None = None,
    images: str | None = None,
    dets: str | None = None,
    backend: str | None = None,
    workers: int = 1,
    limit: int | None = None,
    results_path: str | os.PathLike | None = None,
    nms: bool | None = None,
    on_sample: Callable[[], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """COCO keypoint AP of MODEL on the annotated person boxes (or detections).

    executor="ray" runs the shards (`workers`, default one per CPU of the cluster) as Ray
    tasks, the model's files travelling through the object store (`runtime.ray_tasks`).
    Returns {"stats": {AP, AP50, AP75, APm, APl, AR, AR50, ...}, "predictions": [...],
    ...}; `results_path` also writes the COCO-format results. `nms` (OKS NMS per image,
    threshold 0.9) defaults to on with detections and off with ground-truth boxes.
    """
    start = time.time()
    spec = prepare_spec(config, ann, images, dets, limit)
    gt = load_annotations(spec.source.ann or "")  # prepare_spec requires ann
    decoder = build_decoder(spec.decode, config_name(spec))
    total = count_samples(spec)
    workers = max(1, min(int(workers), total))
    model_path = str(model_path)
    if executor not in ("local", "ray"):
        raise GraphkitError(f"unknown executor '{executor}' (local or ray)")
    if executor == "ray":
        preds, workers = _predict_ray(
            model_path, backend, spec, workers, total, on_sample, ray_address
        )
    elif workers == 1:
        preds = predict_shard(model_path, backend, spec, on_sample=on_sample)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")  # never fork a process holding runtime sessions
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futs = [
                pool.submit(predict_shard, model_path, backend, spec, i, workers, threads)
                for i in range(workers)
            ]
            preds = []
            for f in cf.as_completed(futs):
                part = f.result()
                preds.extend(part)
                if on_sample is not None:
                    for _ in {p["index"] for p in part}:
                        on_sample()
    preds.sort(key=lambda p: (p["index"], p["instance"]))
    use_nms = (spec.source.dets is not None or spec.source.type == "images") if nms is None else nms
    known = {int(im["id"]) for im in gt["images"]}
    stray = sorted({p["image_id"] for p in preds} - known)
    if stray:
        raise GraphkitError(
            f"image id {stray[0]} is not in {spec.source.ann} (name images by COCO id, "
            "e.g. 000000000785.jpg)"
        )
    results = coco_results(preds, decoder, use_nms)
    evaluated = sorted({p["image_id"] for p in preds}) if spec.source.limit else None
    stats = keypoint_ap(mask_unpredicted(gt, decoder.predicted), results, evaluated)
    if results_path is not None:
        import json

        from graphkit.model import atomic_write_text

        atomic_write_text(results_path, json.dumps(results))
    return {
        "model": model_path,
        "config": spec.origin,
        "ann": spec.source.ann,
        "images": spec.source.images,
        "dets": spec.source.dets,
        "backend": backend or ("ncnn" if model_path.endswith(".param") else "ort"),
        "decode": decoder.type,
        "predicted_joints": decoder.predicted.tolist(),
        "samples": total,
        "image_count": len({p["image_id"] for p in preds}),
        "workers": workers,
        "executor": executor,
        "oks_nms": use_nms,
        "stats": stats,
        "seconds": round(time.time() - start, 2),
        "predictions": preds,
    }


def coco_results(preds: list[dict[str, Any]], decoder: Decoder, nms: bool) -> list[dict[str, Any]]:
    """COCO results from predictions: score = mean keypoint score above the decoder's
    threshold times the box score; optional OKS NMS per image."""
    for p in preds:
        p["score"] = p["keypoint_score"] * p["box_score"]
    if nms:
        by_image: dict[int, list[dict[str, Any]]] = {}
        for p in preds:
            by_image.setdefault(p["image_id"], []).append(p)
        kept: list[dict[str, Any]] = []
        for group in by_image.values():
            inst = [{**p, "keypoints": np.asarray(p["keypoints"])} for p in group]
            kept.extend(group[i] for i in oks_nms(inst))
        preds = sorted(kept, key=lambda p: (p["index"], p["instance"]))
    return [make_result(p["image_id"], np.asarray(p["keypoints"]), p["score"]) for p in preds]


def agreement_of(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Mean OKS between two evaluate() results of the same data (FP32 vs int8)."""
    return agreement_details(a, b)["agreement"]


def agreement_details(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Mean OKS of the persons of `a` (the reference) and `b` matched sample by sample,
    and how many of each found no partner.

    Top-down (one person per crop in both): the crop's person with the crop's person, at
    the crop's ground-truth area. Bottom-up (any number per image): persons are matched by
    OKS, greedily from the most similar pair (as COCO matches detections), each at the
    area of the reference person's keypoint box; persons left over on either side are
    counted as unmatched, not averaged in.

    Also the 95 % interval of the mean over persons (`interval95`, normal approximation:
    mean +- 1.96 standard errors): on a few dozen persons the agreement of an int8 model
    is known to about +-0.01, and differences inside that are not evidence."""
    from graphkit.pose.oks import half_width95, oks

    def by_sample(result: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        for p in result["predictions"]:
            out.setdefault(p["index"], []).append(p)
        return out

    sa, sb = by_sample(a), by_sample(b)
    if not sa or set(sa) != set(sb):
        raise GraphkitError("the two evaluations did not run on the same samples")
    joints = np.asarray(a["predicted_joints"], bool) & np.asarray(b["predicted_joints"], bool)
    one_each = all(len(v) == 1 for v in sa.values()) and all(len(v) == 1 for v in sb.values())
    scores: list[float] = []
    unmatched_a = unmatched_b = 0
    for index in sorted(sa):
        pa, pb = sa[index], sb[index]
        if one_each:
            scores.append(oks(pa[0]["keypoints"], pb[0]["keypoints"], pa[0]["area"], joints))
            continue
        sim = np.array(
            [
                [oks(x["keypoints"], y["keypoints"], _keypoint_area(x), joints) for y in pb]
                for x in pa
            ]
        ).reshape(len(pa), len(pb))
        used_a, used_b = set(), set()
        for flat in np.argsort(-sim, axis=None, kind="stable"):
            i, j = divmod(int(flat), len(pb))
            if i not in used_a and j not in used_b:
                used_a.add(i)
                used_b.add(j)
                scores.append(float(sim[i, j]))
        unmatched_a += len(pa) - len(used_a)
        unmatched_b += len(pb) - len(used_b)
    if not scores:
        raise GraphkitError("no person of one evaluation could be paired with the other's")
    half = half_width95(scores)
    mean = float(np.mean(scores))
    return {
        "agreement": mean,
        "standard_error": half / 1.96,
        "interval95": [max(0.0, mean - half), min(1.0, mean + half)],
        # per pair, in sample order: two models compared with one reference on the same
        # crops differ person by person (`paired_difference`)
        "scores": scores,
        "pairs": len(scores),
        "unmatched_reference": unmatched_a,
        "unmatched": unmatched_b,
        "matching": "by sample" if one_each else "greedy by OKS within each image",
    }


def paired_difference(first: dict[str, Any], second: dict[str, Any]) -> tuple[float, float]:
    """(mean, 95 % half-width) of second's agreement minus first's, person by person: two
    `agreement_details` of one reference, top-down (each crop's person paired once). The
    paired difference is far less noisy than the two intervals suggest."""
    from graphkit.pose.oks import half_width95

    if first["matching"] != "by sample" or second["matching"] != "by sample":
        raise GraphkitError("a paired difference needs one person per crop in every model")
    if len(first["scores"]) != len(second["scores"]):
        raise GraphkitError("the two agreements were not measured on the same crops")
    diff = [b - a for a, b in zip(first["scores"], second["scores"])]
    return float(np.mean(diff)), half_width95(diff)


def _keypoint_area(person: dict[str, Any]) -> float:
    """The area of the box around a person's scored keypoints (its OKS scale)."""
    kp = np.asarray(person["keypoints"], np.float64)
    seen = kp[kp[:, 2] > 0] if kp.shape[1] > 2 else kp
    if len(seen) < 2:
        return float(person.get("area") or 1.0)
    w, h = np.ptp(seen[:, 0]), np.ptp(seen[:, 1])
    return float(w * h) if w * h > 0 else float(person.get("area") or 1.0)


def default_results_path(json_path: str | os.PathLike) -> Path:
    p = Path(json_path)
    return p.with_name(p.stem + ".results.json")
