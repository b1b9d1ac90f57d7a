"""End to end on a real pose model with a few real crops (slow: runs in CI too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphkit.data import iter_samples, load_input_spec
from graphkit.model import load_model
from graphkit.quant.calibrate import calibrate
from graphkit.quant.qdq import insert_qdq
from graphkit.runtime.ort import make_session

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_movenet_calibrated_on_train_crops_runs_int8_close_to_fp32(assets, monkeypatch):
    monkeypatch.setenv("GRAPHKIT_ASSETS", str(assets))
    model = load_model(assets / "models" / "movenet-lightning.onnx")
    spec = load_input_spec(ROOT / "examples" / "models" / "movenet-lightning.yaml")
    table = calibrate(model, spec, method="entropy", limit=4)
    assert table.num_samples == 4 and len(table.activations) > 50
    assert all(e.amax > 0 for e in table.activations.values())
    qdq = insert_qdq(model, table)
    ref, got = make_session(model), make_session(qdq)
    val = spec.with_source(
        ann=str(assets / "coco-mini/annotations/person_keypoints_val2017.json"),
        images=str(assets / "coco-mini/val2017"),
        limit=3,
    )
    signal = noise = 0.0
    for sample in iter_samples(val):
        (a,), (b,) = ref.run(None, sample.feeds), got.run(None, sample.feeds)
        signal += float(np.sum(a.astype(float) ** 2))
        noise += float(np.sum((a - b).astype(float) ** 2))
    assert noise > 0  # really quantized
    print("movenet int8 SQNR dB", 10 * np.log10(signal / noise))
    assert 10 * np.log10(signal / noise) > 15.0
