"""The README.md of an export directory: each file, what it is, the command that uses it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from graphkit.backends._common import ExportedFile
from graphkit.quant.table import CalibrationTable


def readme_text(
    table: CalibrationTable,
    files: list[ExportedFile],
    out_dir: Path,
    model_name: str,
    notes: Sequence[str] = (),
) -> str:
    calibration = " ".join(
        [
            f"Calibration: method `{table.method}`, {table.num_samples} samples"
            + (f" from {table.data_source}" if table.data_source else "")
            + (f"; layers kept in float: {', '.join(table.keep_float)}" if table.keep_float else "")
            + ". Written by graphkit from one quantization plan: every backend below carries "
            "the same int8 weights. Paths are relative to this directory.",
            *notes,
        ]
    )
    return files_readme(model_name, calibration, files, out_dir)


def files_readme(model_name: str, about: str, files: list[ExportedFile], out_dir: Path) -> str:
    """The README of any graphkit output directory: `about`, then each file and command."""
    lines = [
        f"# int8 export of {model_name}",  # exporters.README_HEADER: how graphkit knows it
        "",
        about,
        "",
        "| file | what it is |",
        "|---|---|",
    ]
    for f in files:
        lines.append(f"| `{_rel(f.path, out_dir)}` | {f.what} |")
    cmds = [f for f in files if f.command]
    if cmds:
        lines += ["", "## Backend commands (run from this directory)", ""]
        for f in cmds:
            lines += [f"`{_rel(f.path, out_dir)}`:", "", "```sh", f.command, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _rel(path: Path | str, out_dir: Path) -> Path:
    """`path` relative to the export directory (the commands run from there too)."""
    try:
        return Path(path).resolve().relative_to(Path(out_dir).resolve())
    except ValueError:
        return Path(path)
