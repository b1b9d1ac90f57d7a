"""A killed `graphkit calibrate --workers 2` leaves no worker process and no output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from quant_synthetic import write_data


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_calibration(tmp_path: Path) -> tuple[subprocess.Popen, list[int], Path]:
    model, spec = write_data(tmp_path, n=3000)
    out = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "graphkit.cli", "calibrate", str(model), "--data", str(spec)]
    cmd += ["-o", str(out), "--recipe", "plain", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = [
            c
            for c in children(proc.pid)
            if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")
        ]
        if proc.poll() is not None:
            break
    if len(workers) < 2:
        proc.kill()
        pytest.skip("calibration finished before its workers could be observed")
    time.sleep(0.5)
    return proc, workers, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_killed_parallel_calibration_leaves_no_worker_and_no_output(tmp_path, how):
    proc, workers, out = start_calibration(tmp_path)
    os.kill(proc.pid, how)
    proc.wait(timeout=30)
    deadline = time.time() + 15
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(alive(w) for w in workers)
    assert not out.exists()
    if how == signal.SIGTERM:
        assert proc.returncode == 143 and "terminated" in proc.stderr.read()
