"""strip-flip-test leaves real models without a flip-test ensemble untouched (no torch)."""

from __future__ import annotations

import pytest

from graphkit.model import load_model
from graphkit.passes.flip import strip_flip_test


@pytest.mark.parametrize("name", ["efficientpose", "posenet", "movenet-lightning"])
def test_real_models_without_flip_test_are_unchanged(assets, name: str) -> None:
    model = load_model(assets / "models" / f"{name}.onnx")
    before = model.SerializeToString()
    result = strip_flip_test(model)
    assert not result.changed
    assert result.notes[-1] == "no flip-test ensemble found; model unchanged"
    assert result.model.SerializeToString() == before
