import subprocess
import sys

from graphkit.cli import main


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for cmd in ("apply", "passes", "inspect"):
        assert cmd in out


def test_console_script_is_installed():
    r = subprocess.run(
        [sys.executable, "-m", "graphkit.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and "graphkit" in r.stdout
