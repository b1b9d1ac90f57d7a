"""Declared dependencies are the imported ones: nothing declared and unused, nothing
imported and undeclared (optional extras only where an import error is handled)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# distribution name -> the module it is imported as
IMPORT_NAME = {
    "pyyaml": "yaml",
    "pillow": "PIL",
    "opencv-python-headless": "cv2",
}


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(specs: list[str]) -> set[str]:
        out = set()
        for spec in specs:
            dist = spec.split(">")[0].split("=")[0].split("[")[0].strip().lower()
            out.add(IMPORT_NAME.get(dist, dist.replace("-", "_")))
        return out

    extras = project.get("optional-dependencies", {})
    optional = names(extras.get("ncnn", []) + extras.get("ray", []))
    return names(project["dependencies"]), optional


def imported() -> set[str]:
    found = set()
    for path in (ROOT / "graphkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "graphkit"}


def test_declared_dependencies_are_the_imported_ones():
    required, optional = declared()
    used = imported()
    assert required - used == set(), "declared but never imported"
    assert used - required - optional == set(), "imported but not declared"
