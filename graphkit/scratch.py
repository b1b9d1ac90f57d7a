"""Scratch files and folders that a killed run does not leave behind for good.

Every temporary name graphkit makes is `.graphkit-<pid>-<what>...`: the id of the process
writing it. SIGKILL (or a power cut) gives a run no chance to clean up, so the next run
that writes into the same folder removes the leftovers of processes that no longer exist
(`sweep`), and never touches those of a live one, whoever runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_NAME = re.compile(r"^\.graphkit-(\d+)-")


def prefix(what: str = "") -> str:
    """The scratch-name prefix of this process: `.graphkit-<pid>-<what>`."""
    return f".graphkit-{os.getpid()}-{what}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def sweep(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove `.graphkit-<pid>-*` entries of dead processes from `folder` (default: the
    system temp folder); returns what was removed. Errors are ignored: sweeping is a
    courtesy, never a reason to fail the run."""
    where = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(where.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _NAME.match(entry.name)
        if not m or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            continue
    return removed


__all__ = ["prefix", "sweep"]
