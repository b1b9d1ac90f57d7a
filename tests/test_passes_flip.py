"""strip-flip-test on mmpose-like networks exported from PyTorch with a flip-test ensemble.

The reference for "exactly the plain branch" is the same network exported without flip
test (and with only its last stage), run in onnxruntime, plus the PyTorch network itself.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import mmpose_like as mm

from graphkit.errors import GraphkitError
from graphkit.passes.flip import match_transform, strip_flip_test
from graphkit.pipeline import parse_pipeline, run_pipeline
from graphkit.runtime import ort as ort_rt

STRIP_AND_LAST = parse_pipeline(["strip-flip-test", {"select-outputs": {"last": True}}])
VARIANTS = {
    "no-shift": {"shift": None, "flip": "flip", "perm": "gather"},
    "shift-cat": {"shift": "cat", "flip": "gather", "perm": "concat"},
    "shift-setitem": {"shift": "setitem", "flip": "flip", "perm": "gather"},
}


def _image(seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(mm.INPUT_SHAPE).astype(np.float32)


def _assert_close(got: np.ndarray, want: np.ndarray, rel: float) -> None:
    """Equal within `rel` of the largest magnitude (activations here reach ~1e2)."""
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * scale)


def _ops(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", ["hourglass", "hrnet"])
def test_strip_and_last_stage_equal_plain_export(kind: str, variant: str) -> None:
    flipped = mm.cached_export(kind, "flip", **VARIANTS[variant])
    reference = mm.cached_export(kind, "last")
    result, reports = run_pipeline(flipped, STRIP_AND_LAST)  # verified path

    strip = reports[0]
    assert strip.changed and strip.max_abs_diff is not None
    text = " ".join(strip.notes)
    assert str(mm.COCO_FLIP_PAIRS) in text
    assert ("shift found" in text) == (VARIANTS[variant]["shift"] is not None)
    assert "removed" in text

    # Independent check: same graph as the plain export, same numbers in onnxruntime.
    assert _ops(result) == _ops(reference)
    x = {"input": _image()}
    got = ort_rt.run(result, x)
    want = ort_rt.run(reference, x)["output_0"]
    (name,) = got
    assert name == "output_1"  # the last stage keeps its exported name
    _assert_close(got[name], want, 1e-6)
    _assert_close(got[name], mm.torch_outputs(kind, "last", x["input"])[0], 1e-5)
    # and it really differs from the flip-test output it replaced
    assert np.max(np.abs(ort_rt.run(flipped, x)["output_1"] - want)) > 1e-3


@pytest.mark.parametrize("kind", ["hourglass", "hrnet"])
def test_strip_keeps_every_stage_output(kind: str) -> None:
    flipped = mm.cached_export(kind, "flip", shift="cat")
    plain = mm.cached_export(kind, "none")
    result = strip_flip_test(flipped).model
    x = {"input": _image(6)}
    got, want = ort_rt.run(result, x), ort_rt.run(plain, x)
    assert list(got) == ["output_0", "output_1"]
    for name in got:
        _assert_close(got[name], want[name], 1e-6)


def test_model_without_flip_passes_through_unchanged() -> None:
    plain = mm.cached_export("hrnet", "none")
    before = plain.SerializeToString()
    result = strip_flip_test(plain)
    assert not result.changed
    assert "no flip-test ensemble found" in " ".join(result.notes)
    assert plain.SerializeToString() == before
    assert result.model.SerializeToString() == before


def test_other_network_on_flipped_input_is_not_stripped() -> None:
    """An average that looks like flip test but whose second branch is another net stays."""
    model = mm.cached_export("hrnet", "flip-other")
    before = model.SerializeToString()
    result = strip_flip_test(model)
    assert not result.changed
    assert "not the plain branch flipped back" in " ".join(result.notes)
    assert model.SerializeToString() == before
    assert result.model.SerializeToString() == before


@pytest.mark.parametrize(
    "wrap, options",
    [
        ("flip-last", {"average": "div"}),
        ("flip-last", {"average": "halves", "shift": "cat"}),
        ("flip-copy", {}),  # second pass through a copy of the weights (equal values)
        ("flip-batched", {}),  # plain and flipped input run as one batch of two
        ("preprocess-flip", {"shift": "cat"}),  # flip of an in-graph normalized image
    ],
)
def test_other_export_forms_of_the_ensemble(wrap: str, options: dict) -> None:
    model = mm.cached_export("hrnet", wrap, **options)
    reference = mm.cached_export("hrnet", "preprocess" if "preprocess" in wrap else "last")
    result, reports = run_pipeline(model, parse_pipeline(["strip-flip-test"]))
    assert reports[0].changed, reports[0].notes
    x = {"input": _image(9)}
    _assert_close(ort_rt.run(result, x)["output_0"], ort_rt.run(reference, x)["output_0"], 1e-6)
    compute = lambda m: {k: v for k, v in _ops(m).items() if k not in ("Constant", "Slice")}
    assert compute(result) == compute(reference)  # batched keeps its (now identity) Slice


@pytest.mark.slow
def test_dynamo_export_is_stripped_too() -> None:
    """torch's default (torch.export-based) exporter writes the flip and shift differently."""
    model = mm.export(mm.build("hrnet", "flip", shift="setitem"), dynamo=True)
    result, reports = run_pipeline(model, STRIP_AND_LAST)
    assert "shift found" in " ".join(reports[0].notes)
    x = {model.graph.input[0].name: _image(10)}
    (got,) = ort_rt.run(result, x).values()
    _assert_close(got, mm.torch_outputs("hrnet", "last", _image(10))[0], 1e-5)


def test_custom_flip_pairs_are_reported() -> None:
    pairs = [[0, 3], [5, 6]]
    model = mm.export(mm.FlipTest(mm.LastOutput(mm.hrnet_like()), flip_pairs=pairs))
    result = strip_flip_test(model)
    assert result.changed
    assert "flip pairs [[0, 3], [5, 6]]" in " ".join(result.notes)


def test_output_after_the_average_comes_from_plain_branch() -> None:
    """In-graph decoding after the ensemble: the decode now reads the plain heatmaps."""
    model = mm.cached_export("hrnet", "flip-decode", shift="cat")
    reference = mm.cached_export("hrnet", "decode")
    result, reports = run_pipeline(model, parse_pipeline(["strip-flip-test"]))
    assert reports[0].changed
    assert "cannot be compared" in " ".join(reports[0].notes)
    # the decoded output has no old equal; the verifier checked the kept plain heatmaps
    assert "output_0" not in reports[0].max_abs_diff
    assert len(reports[0].max_abs_diff) == 1
    x = {"input": _image(7)}
    _assert_close(ort_rt.run(result, x)["output_0"], ort_rt.run(reference, x)["output_0"], 1e-6)


def test_transform_matcher_finds_permutation_and_shift() -> None:
    rng = np.random.default_rng(0)
    plain = rng.standard_normal((1, 17, 8, 6))
    perm = mm.flip_permutation(17, mm.COCO_FLIP_PAIRS)
    back = np.flip(plain, 3)[:, perm]
    shifted = np.concatenate([back[..., :1], back[..., :-1]], axis=3)
    t = match_transform(plain, shifted)
    assert t is not None and t.shift and t.axis == 3 and t.pairs == mm.COCO_FLIP_PAIRS
    t = match_transform(plain, back)
    assert t is not None and not t.shift
    assert match_transform(plain, rng.standard_normal(plain.shape)) is None


def test_example_pipeline_applies_to_flip_export(tmp_path) -> None:
    """examples/passes/mmpose.yaml end to end through the CLI on a flip-test export."""
    from pathlib import Path

    from graphkit.cli import main
    from graphkit.model import load_model, save_model

    example = Path(__file__).resolve().parents[1] / "examples" / "passes" / "mmpose.yaml"
    src = save_model(mm.cached_export("hourglass", "flip", shift="cat"), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    assert main(["apply", str(example), str(src), "-o", str(out)]) == 0
    result = load_model(out)
    x = {"input": _image(8)}
    want = ort_rt.run(mm.cached_export("hourglass", "last"), x)["output_0"]
    (got,) = ort_rt.run(result, x).values()
    _assert_close(got, want, 1e-5)
    assert len(result.graph.node) <= len(mm.cached_export("hourglass", "last").graph.node)


def test_strip_flip_test_takes_no_options() -> None:
    with pytest.raises(GraphkitError, match="has no option 'pairs'"):
        parse_pipeline([{"strip-flip-test": {"pairs": [[1, 2]]}}])
