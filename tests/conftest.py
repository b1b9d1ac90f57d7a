"""Shared fixtures: where the real assets are, small models built in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def assets_dir() -> Path:
    return Path(os.environ.get("GRAPHKIT_ASSETS", "../shared/assets")).resolve()


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared real assets (COCO-MINI, pose models); skip where they are absent."""
    path = assets_dir()
    if not (path / "MANIFEST.md").exists():
        pytest.skip(f"real assets not found at {path} (set GRAPHKIT_ASSETS)")
    return path


@pytest.fixture(scope="session")
def pnnx_installed() -> str:
    """The pnnx binary (ncnn conversion). Where it is missing the test skips, saying how
    to install it; in CI (CI=true) it fails: CI installs it and must run these tests."""
    from graphkit.backends.ncnn.convert import pnnx_binary
    from graphkit.errors import GraphkitError

    try:
        return pnnx_binary()
    except GraphkitError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the ncnn tests: {exc}")
        pytest.skip(str(exc))


def pytest_report_header(config) -> str:
    seed = config.getoption("hypothesis_seed", None)
    if seed is not None:
        return f"hypothesis: seed {seed}"
    if os.environ.get("CI"):
        return "hypothesis: new random examples this run (a failure prints its seed)"
    return "hypothesis: property tests derandomized (CI=1 draws new examples)"
