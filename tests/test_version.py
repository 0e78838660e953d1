"""The kdistill console script."""

from __future__ import annotations

import subprocess
import sys

from kdistill import __version__
from kdistill.app.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert __version__ in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "kdistill.app.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "usage: kdistill" in result.stdout
