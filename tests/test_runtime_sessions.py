"""Sessions of one process allocate from one shared memory arena."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

LIVE_SESSIONS = textwrap.dedent(
    """
    import os
    import numpy as np
    from onnx import TensorProto, helper
    from graphkit.runtime import ort as gk_ort

    # x (1, 4M floats = 16 MB) -> Relu -> Neg: one 16 MB intermediate per run
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4 << 20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4 << 20])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
        "g", [x], [y],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    feed = {"x": np.ones((1, 4 << 20), np.float32)}

    def resident_mb():  # now, not the peak: a child's peak starts at its parent's on Linux
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    before = resident_mb()
    sessions = []
    for _ in range(24):  # all alive at once, as bias correction keeps its parts
        s = gk_ort.make_session(model, optimize=False, spin=False)
        assert float(s.run(None, feed)[0][0, 0]) == -1.0
        sessions.append(s)
    print(resident_mb() - before)
    """
)


def _held_mb(mode: str) -> float:
    env = dict(os.environ, GRAPHKIT_SHARED_ARENA="0" if mode == "own" else "1")
    out = subprocess.run(
        [sys.executable, "-c", LIVE_SESSIONS], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.split()[-1])


def test_live_sessions_share_one_arena_instead_of_holding_one_each():
    from graphkit.runtime.ort import shared_arena

    if not shared_arena():
        pytest.skip("this onnxruntime cannot register a shared arena")
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("resident memory is read from /proc (Linux)")
    own, shared = _held_mb("own"), _held_mb("shared")
    # GRAPHKIT_SHARED_ARENA=0: 24 own arenas hold 24 intermediates (384 MB); one shared
    # arena holds about one
    assert own > 200
    assert shared < own / 4
